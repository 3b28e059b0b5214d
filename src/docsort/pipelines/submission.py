"""Submission: candidate specs -> predict with TTA + ensemble (one task per candidate) -> hard-case
comparison -> error report -> the winner's submission.

Run nightly (``docsort schedule``), it costs GPU time only when something changed:
the prediction steps are keyed on the data version and on the candidate specs'
content and member checkpoints (``spec_version_op``), so an unchanged night
reuses them from KFP's cache; only the submission step always runs.

``candidates`` are saved candidate specs (``candidate.yaml`` written by
``docsort ensemble``, paths or s3:// URIs); their members' checkpoints must be
reachable from the tasks. The data is prepared with the image settings the
members were trained with.

Locally, on the outputs of ``docsort demo``::

    docsort run pipelines/submission.py --local --param data_root=DATA \\
        --param 'candidates=["RUN/.../soft/candidate.yaml", "RUN/.../hard/candidate.yaml"]'
"""

from kfp import dsl

from docsort.components.data import data_version_op
from docsort.components.ensemble import candidate_run_op, prepare_candidates_op, spec_version_op
from docsort.components.k8s import apply
from docsort.components.review import compare_candidates_op, report_op, submission_op


@dsl.pipeline(
    name="docsort-submission",
    description="docsort: re-run candidate specs, compare them on hard cases, report, write the winner's submission.",
)
def submission_pipeline(
    data_root: str,
    candidates: list,
    output_root: str = "",
    prepare_overrides: str = "",
    predict_overrides: str = "",
    report_on: str = "auto",
) -> dsl.Dataset:
    """``data_root``: dataset root (folder or s3://). ``candidates``: candidate spec paths/URIs.
    ``output_root``: where the versioned submission also goes (folder or s3://; empty: only the
    run's artifact). ``report_on``: auto | oof | test | hardcases."""
    # Both stamps run every night; the steps after them are served from KFP's cache unless the
    # data, a candidate spec or a member checkpoint changed (docs/cluster.md, "What is reused").
    data_version = apply(data_version_op(data_root=data_root).set_display_name("data-version"))
    spec_version = apply(spec_version_op(specs=candidates).set_display_name("spec-version"))
    prep = prepare_candidates_op(
        data_root=data_root, specs=candidates, overrides=prepare_overrides,
        data_version=data_version.output, spec_version=spec_version.output,
    )  # fmt: skip
    apply(prep.set_display_name("prepare"))
    with dsl.ParallelFor(candidates, parallelism=2) as spec:
        cand = candidate_run_op(
            prepared=prep.outputs["prepared"], spec=spec, overrides=predict_overrides,
            spec_version=spec_version.output,
        )  # fmt: skip
        apply(cand.set_display_name("predict-and-ensemble"))
    cmp = compare_candidates_op(
        prepared=prep.outputs["prepared"], candidates=dsl.Collected(cand.outputs["candidate"])
    )
    apply(cmp.set_display_name("compare-candidates"))
    rep = report_op(
        prepared=prep.outputs["prepared"], comparison=cmp.outputs["comparison"], on=report_on
    )
    apply(rep.set_display_name("report"))
    sub = submission_op(
        prepared=prep.outputs["prepared"],
        comparison=cmp.outputs["comparison"],
        output_root=output_root,
    )
    apply(sub.set_display_name("submission").after(rep))
    return sub.outputs["submission"]
