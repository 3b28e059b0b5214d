"""KFP components of the review stages: hard-case comparison, error report, submission.

The report component writes the outputs the KFP UI renders: the HTML error
notebook, a Markdown summary, scalar ``Metrics`` and the confusion matrix as
``ClassificationMetrics``.
"""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def compare_candidates_op(
    prepared: Input[Dataset],
    candidates: Input[list[Dataset]],
    comparison: Output[Dataset],
    summary: Output[Markdown],
):
    """Score the candidates on hardcases.csv side by side and choose the winner by the stated policy."""
    from docsort.review.compare import compare_candidates

    compare_candidates(
        prepared.path, [c.path for c in candidates], comparison.path, summary=summary.path
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def compare_candidate_folder_op(
    prepared: Input[Dataset],
    candidates: Input[Dataset],
    comparison: Output[Dataset],
    summary: Output[Markdown],
):
    """``compare_candidates_op`` for one folder holding several candidates (``ensemble_op``'s output)."""
    from docsort.ensemble.candidate import list_candidates
    from docsort.review.compare import compare_candidates

    compare_candidates(
        prepared.path, list_candidates(candidates.path), comparison.path, summary=summary.path
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
def submission_op(
    prepared: Input[Dataset],
    comparison: Input[Dataset],
    submission: Output[Dataset],
    output_root: str = "",
):
    """Write the winner's validated submission (to ``output_root`` too when set, e.g. s3://...)."""
    from docsort.review.submission import write_winner_submission

    uri = write_winner_submission(
        prepared.path, comparison.path, submission.path, output_root or None
    )
    submission.metadata["uri"] = uri
