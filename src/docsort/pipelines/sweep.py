"""Sweep, then train the winner: data version -> prepare -> sweep -> best config on K folds -> OOF report.

The sweep runs the search space ``space`` (``docsort/conf/hpo/<space>.yaml``) as a
Katib Experiment on a cluster (trials visible in the Katib UI) or as the local
Optuna twin; ``backend=auto`` picks Katib inside Kubernetes and the local twin
under kfp.local. The best trial's overrides then train one member per fold.

Locally: ``docsort run pipelines/sweep.py --local --param data_root=DATA --param space=cpu_small``.
On a cluster: ``docsort submit pipelines/sweep.py --host URL --param data_root=s3://...``.
"""

from kfp import dsl

from docsort.components.graph import trained_folds, versioned_prepare
from docsort.components.k8s import apply
from docsort.components.sweep import sweep_op


@dsl.pipeline(
    name="docsort-sweep",
    description="docsort: prepare, Katib (or local Optuna) sweep, train the best config on K folds, report.",
)
def sweep_pipeline(
    data_root: str,
    space: str = "default",
    backend: str = "auto",
    n_trials: int = 0,
    data_overrides: str = "",
    sweep_overrides: str = "",
    train_overrides: str = "",
    namespace: str = "",
    sweep_timeout_s: int = 0,  # 0: the Experiment's worst case (docsort.sweep.katib.worst_case_s)
) -> dsl.Dataset:
    """``backend``: auto | katib | local. ``n_trials``: 0 = the space's max_trial_count.
    ``namespace``: where the Katib Experiment goes; empty = the namespace this pipeline's
    pods run in (right for a profile namespace of multi-user Kubeflow; under KFP standalone
    the pods run in ``kubeflow`` and ``k8s/`` grants the sweep rights in ``docsort``, so
    pass ``namespace=docsort`` there).
    ``data_overrides`` apply to prepare, every trial and the final members;
    ``sweep_overrides`` to every trial (and so to the best config);
    ``train_overrides`` only to the final members (e.g. more epochs)."""
    prep = versioned_prepare(data_root, data_overrides)
    sweep = sweep_op(
        prepared=prep.outputs["prepared"], space=space, backend=backend, n_trials=n_trials,
        overrides=data_overrides, extra_overrides=sweep_overrides,
        namespace=namespace, timeout_s=sweep_timeout_s,
    )  # fmt: skip
    apply(sweep.set_display_name("sweep"))
    report = trained_folds(
        prep, {"sweep": sweep.outputs["result"], "extra_overrides": train_overrides}
    )
    return report.outputs["report"]
