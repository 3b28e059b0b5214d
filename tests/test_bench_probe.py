"""bench/pretrained_probe.py: the dihedral views it trains on and the class columns of its probabilities."""

from __future__ import annotations

import numpy as np


def test_the_eight_views_are_distinct_and_the_identity_is_the_page():
    from bench.pretrained_probe import dihedral

    g = np.arange(16, dtype=np.float32).reshape(4, 4)  # no symmetry: every view differs
    views = [dihedral(g, v) for v in range(8)]
    assert np.array_equal(views[0], g)
    assert len({v.tobytes() for v in views}) == 8
    assert all(v.flags["C_CONTIGUOUS"] for v in views)


def test_a_class_missing_from_the_training_rows_gets_a_zero_column():
    from bench.pretrained_probe import fit_predict

    rng = np.random.default_rng(0)
    y = np.repeat([0, 2], 20)  # class 1 absent
    x = rng.normal(size=(40, 3)) + y[:, None] * 2.0
    probs = fit_predict(x, y, x, c=1.0, k=3)
    assert probs.shape == (40, 3)
    assert np.all(probs[:, 1] == 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == y).mean() > 0.9
