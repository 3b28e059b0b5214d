"""KFP component of the sweep stage: a Katib Experiment or the local Optuna twin."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sweep_op(
    prepared: Input[Dataset],
    result: Output[Dataset],
    metrics: Output[Metrics],
    space: str = "default",
    backend: str = "auto",
    n_trials: int = 0,
    overrides: str = "",
    extra_overrides: str = "",
    namespace: str = "",
    timeout_s: int = 0,
):
    """Hyperparameter sweep over ``space``: a Katib Experiment (``katib``) or a local Optuna study (``local``).

    ``auto`` picks Katib inside a Kubernetes pod and the local twin elsewhere
    (kfp.local); every trial gets ``overrides`` then ``extra_overrides``
    (:func:`docsort.sweep.sweep.sweep_step`). ``namespace``: the Experiment's, default
    the one this pod runs in. ``timeout_s``: how long to wait, 0 = the Experiment's
    worst case. Besides ``trials.csv`` and ``best.json`` (naming the best trial's
    member), ``result`` holds ``best_overrides.txt``: the best trial's whole override
    list without ``fold``, which ``train_op(sweep=...)`` trains on K folds.
    """
    from docsort.components.artifacts import log_metrics
    from docsort.sweep.sweep import sweep_step

    step = sweep_step(
        prepared.path, result.path, prepared_uri=prepared.uri, out_uri=result.uri, space=space,
        backend=backend, n_trials=n_trials, fixed_overrides=overrides.split() + extra_overrides.split(),
        namespace=namespace, timeout_s=timeout_s,
    )  # fmt: skip
    result.metadata.update(step.metadata)
    log_metrics(metrics, step.metrics)
