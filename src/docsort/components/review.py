"""KFP components of the review stages: candidates, hard-case comparison, error report, TTA ablation.

Thin shims like ``components.stages``: each body imports docsort and calls one
stage. The report component writes the outputs the KFP UI renders: the HTML
error notebook, a Markdown summary, scalar ``Metrics`` and the confusion
matrix as ``ClassificationMetrics``.
"""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")
GPU_IMAGE = image("gpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def spec_version_op(specs: list) -> str:
    """A version stamp of the candidate specs' content and of the checkpoints they name.

    Never cached, like ``data_version_op``: it runs on every pipeline run, and the
    candidate steps take its output as a parameter, so their cache keys change
    exactly when a spec or a member checkpoint changes behind the same path.
    """
    from docsort.ensemble.spec_version import spec_version

    return spec_version(specs)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_candidates_op(
    prepared: Output[Dataset],
    data_uri: str,
    specs: list,
    overrides: str = "",
    data_version: str = "",
    spec_version: str = "",
):
    """Prepare the dataset with the image settings the candidates' members were trained with.

    ``data_version`` and ``spec_version`` are not used by the stage: they are the
    cache key, so an unchanged night reuses this step and every step after it.
    """
    from docsort.ensemble.candidate import prepare_for_candidates

    prepare_for_candidates(data_uri, specs, prepared.path, overrides.split())
    prepared.metadata.update({"data_version": data_version, "spec_version": spec_version})


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def candidate_run_op(
    prepared: Input[Dataset],
    candidate: Output[Dataset],
    spec: str,
    overrides: str = "",
    spec_version: str = "",
):
    """Re-run one saved candidate spec: predict each member with its TTA views, then combine.

    ``spec_version`` keys the cache on the spec's content and its checkpoints, not its path.
    """
    from docsort.ensemble.candidate import run_candidate

    run_candidate(spec, prepared.path, candidate.path, overrides.split())
    candidate.metadata["spec_version"] = spec_version


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def compare_candidates_op(
    prepared: Input[Dataset],
    candidates: Input[list[Dataset]],
    comparison: Output[Dataset],
    summary: Output[Markdown],
):
    """Score the candidates on hardcases.csv side by side and choose the winner by the stated policy."""
    from docsort.review.compare import compare_hardcases

    compare_hardcases(
        prepared.path, [c.path for c in candidates], comparison.path, summary=summary.path
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report_op(
    prepared: Input[Dataset],
    comparison: Input[Dataset],
    html: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    on: str = "auto",
):
    """The error notebook of the comparison's winner, with its scores and confusion matrix for the KFP UI."""
    from docsort.review.report import error_report

    error_report(
        prepared.path,
        None,
        html.path,
        summary=summary.path,
        comparison=comparison.path,
        on=on,
        metrics=metrics,
        confusion=confusion,
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def tta_ablation_op(
    models: Input[list[Model]],
    ablation: Output[Dataset],
    summary: Output[Markdown],
    merge: str = "mean",
):
    """Score every subset of TTA views on the members' OOF predictions; recommend one."""
    from docsort.ensemble.tta_ablation import ablate_tta

    ablate_tta([m.path for m in models], ablation.path, merge=merge, summary=summary.path)
