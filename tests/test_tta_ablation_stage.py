"""`docsort tta-ablation`: per view and per subset on members' stored OOF logits, and the recommendation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from docsort.cli.main import main
from docsort.core.config import load_config
from docsort.core.errors import ConfigError, DocsortError
from docsort.ensemble.tta_ablation import ablate_tta, load_ablation
from tests.review_fakes import fake_member

Y = [0, 0, 1, 1]
# identity predicts 0,1,1,1 (row 1 wrong); rot90 predicts 0,0,0,0 (rows 2,3 wrong)
IDENTITY = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.45, 0.55]])
ROT90 = np.array([[0.8, 0.2], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
# rot180 is right everywhere; flip (mirrored text) wrong everywhere
ROT180 = np.array([[0.6, 0.4], [0.95, 0.05], [0.45, 0.55], [0.4, 0.6]])
FLIP = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
IDS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def _row(table, views):
    return table[table["views"] == views].iloc[0]


def test_hand_counts_files_and_recommendation(tmp_path, capsys):
    m = fake_member(
        tmp_path / "m",
        IDS,
        Y,
        {"identity": IDENTITY, "rot90": ROT90, "rot180": ROT180, "flip": FLIP},
    )
    out = tmp_path / "abl"
    assert main(["tta-ablation", str(m), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = load_ablation(out).table
    assert len(table) == 15  # every non-empty subset of 4 views
    both = _row(table, "identity+rot90")  # mean predicts 0,0,0,0: fixes row 1, breaks rows 2, 3
    assert (both.fixed, both.broken, both.net) == (1, 2, -1)
    assert _row(table, "flip").broken == 3
    assert (_row(table, "identity+rot180").fixed, _row(table, "identity+rot180").broken) == (1, 0)
    info = json.loads((out / "recommended.json").read_text())
    assert info["best"] == ["rot180"]  # perfect alone, and one view beats two ...
    # ... but on four images that is no evidence: the prior (configured views present) stays
    prior = ["identity", "rot90", "rot180", "flip"]
    assert info["views"] == info["prior"] == prior and info["decided_by"] == "prior"
    assert info["override"] == "tta.views=[identity,rot90,rot180,flip]"
    assert info["identity_macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert info["macro_f1"] == _row(table, "+".join(prior)).macro_f1 and info["rows"] == 4
    assert list(load_config([info["override"]]).tta.views) == prior  # usable as an override as is
    assert yaml.safe_load((out / "recommended.yaml").read_text()) == {
        "tta": {"views": prior, "merge": "mean"}
    }
    assert "Recommended: identity+rot90+rot180+flip" in printed and "identity+rot90" in printed
    assert "does not separate" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abl", "m"]  # no temporary leftovers


def test_members_are_pooled_per_image(tmp_path):
    # Member A holds out rows a-d (identity mostly right); member B rows e-h, where identity is
    # always wrong and rot90 always right. Pooled, rot90 fixes A's row 1 and B's four rows and
    # breaks A's rows 2 and 3.
    a = fake_member(tmp_path / "a", IDS, Y, {"identity": IDENTITY, "rot90": ROT90}, fold=0)
    ids_b = ["e.jpg", "f.jpg", "g.jpg", "h.jpg"]
    b = fake_member(tmp_path / "b", ids_b, Y, {"identity": FLIP, "rot90": ROT180}, fold=1)
    abl = ablate_tta([a, b], tmp_path / "abl")
    t = abl.table
    rot = _row(t, "rot90")
    assert (rot.fixed, rot.broken) == (5, 2)
    assert rot.accuracy == pytest.approx(6 / 8) and _row(t, "identity").accuracy == pytest.approx(
        3 / 8
    )
    assert abl.table.iloc[0]["views"] == "rot90" and abl.recommended == ("identity", "rot90")
    info = json.loads((tmp_path / "abl" / "recommended.json").read_text())
    assert info["rows"] == 8
    assert info["per_member"] == {"resnet18-f0": ["identity", "rot90"], "resnet18-f1": ["identity", "rot90"]}  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "abl" / "members").iterdir()) == [
        "resnet18-f0.csv",
        "resnet18-f1.csv",
    ]

    # The same image held out by two members: their probabilities are averaged, not counted twice.
    c = fake_member(
        tmp_path / "c", IDS, Y, {"identity": ROT180, "rot90": ROT180}, fold=0, arch="resnet10t"
    )
    abl2 = ablate_tta([a, c])
    ident = _row(abl2.table, "identity")
    assert ident.accuracy == 1.0  # mean of IDENTITY and ROT180 is right on all four rows


def test_ids_are_never_unpickled(tmp_path):
    m = fake_member(tmp_path / "m", IDS, Y, {"identity": IDENTITY, "rot90": ROT90}, object_ids=True)
    assert ablate_tta([m]).table.iloc[0]["views"] == "identity"  # IDs came from oof.csv
    (m / "oof.csv").unlink()
    with pytest.raises(DocsortError, match="no readable IDs"):
        ablate_tta([m])


def test_refuses_members_without_oof_views(tmp_path, capsys):
    m = fake_member(tmp_path / "m", IDS, Y, {"identity": IDENTITY})
    (m / "oof_views.npz").unlink()
    assert main(["tta-ablation", str(m)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no per-view OOF predictions" in err[0]


def test_on_a_trained_member(trained_member, tmp_path, capsys):
    out = tmp_path / "abl"
    assert (
        main(["tta-ablation", str(trained_member), "--tta-merge", "geomean", "--out", str(out)])
        == 0
    )
    table = load_ablation(out).table
    assert len(table) == 255  # the trained member stores all 8 views
    assert set(table.loc[table["n_views"] == 1, "views"]) == {
        "identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270",
    }  # fmt: skip
    assert (table.loc[table["views"] == "identity", ["fixed", "broken"]].to_numpy() == 0).all()
    info = json.loads((out / "recommended.json").read_text())
    assert info["merge"] == "geomean" and info["best"] == table.iloc[0]["views"].split("+")
    assert len(info["prior"]) == 8 and info["decided_by"] in ("evidence", "prior")
    assert info["views"] == (info["best"] if info["views"] != info["prior"] else info["prior"])
    assert info["override"] in capsys.readouterr().out


def test_cli_refuses_a_tta_merge_the_stage_refuses(tmp_path, capsys):
    """``--tta-merge`` offers core.choices.MERGES, the list the stage checks against."""
    with pytest.raises(SystemExit):
        main(["tta-ablation", "x", "--tta-merge", "median"])
    assert "invalid choice: 'median'" in capsys.readouterr().err
    m = fake_member(tmp_path / "m", IDS, Y, {"identity": IDENTITY})
    with pytest.raises(ConfigError, match="valid: mean, geomean, logits"):
        ablate_tta([m], merge="median")
