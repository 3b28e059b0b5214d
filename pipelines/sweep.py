"""Sweep, then train the winner: data version -> prepare -> sweep -> best config on K folds -> OOF report.

The sweep runs the search space ``space`` (``docsort/conf/hpo/<space>.yaml``) as a
Katib Experiment on a cluster (trials visible in the Katib UI) or as the local
Optuna twin; ``backend=auto`` picks Katib inside Kubernetes and the local twin
under kfp.local. The best trial's overrides then train one member per fold.

Locally: ``docsort run pipelines/sweep.py --local --param data_uri=DATA --param space=cpu_small``.
On a cluster: ``docsort submit pipelines/sweep.py --host URL --param data_uri=s3://...``.
"""

from kfp import dsl

from docsort.components.k8s import apply
from docsort.components.stages import data_version_op, oof_report_op, prepare_op, sweep_op, train_op

#: Folds trained at once on a cluster (kfp.local runs at most two tasks at a time).
FOLD_PARALLELISM = 5


@dsl.pipeline(
    name="docsort-sweep",
    description="docsort: prepare, Katib (or local Optuna) sweep, train the best config on K folds, report.",
)
def sweep_pipeline(
    data_uri: str,
    space: str = "default",
    backend: str = "auto",
    n_trials: int = 0,
    data_overrides: str = "",
    sweep_overrides: str = "",
    train_overrides: str = "",
    namespace: str = "docsort",
    sweep_timeout_s: int = 21600,
) -> dsl.Dataset:
    """``backend``: auto | katib | local. ``n_trials``: 0 = the space's max_trial_count.
    ``data_overrides`` apply to prepare, every trial and the final members;
    ``sweep_overrides`` to every trial (and so to the best config);
    ``train_overrides`` only to the final members (e.g. more epochs)."""
    version = apply(data_version_op(data_uri=data_uri).set_display_name("data-version"))
    prep = apply(
        prepare_op(
            data_uri=data_uri, data_version=version.output, overrides=data_overrides
        ).set_display_name("prepare")
    )
    sweep = sweep_op(
        prepared=prep.outputs["prepared"], space=space, backend=backend, n_trials=n_trials,
        overrides=data_overrides, extra_overrides=sweep_overrides,
        namespace=namespace, timeout_s=sweep_timeout_s,
    )  # fmt: skip
    apply(sweep.set_display_name("sweep"))
    with dsl.ParallelFor(prep.outputs["Output"], parallelism=FOLD_PARALLELISM) as fold:
        trained = train_op(
            prepared=prep.outputs["prepared"],
            sweep=sweep.outputs["result"],
            extra_overrides=train_overrides,
            fold=fold,
        )
        apply(trained.set_display_name("train-fold"))
    report = oof_report_op(
        prepared=prep.outputs["prepared"], models=dsl.Collected(trained.outputs["model"])
    )
    apply(report.set_display_name("oof-report"))
    return report.outputs["report"]
