"""The demo pipeline: sample data -> prepare -> 2 members (ParallelFor) -> TTA predict -> ensemble -> hard cases -> submission.

Run it locally with ``docsort run pipelines/demo.py --local`` (or ``docsort demo``);
compile it with ``docsort compile pipelines/demo.py --out demo.yaml``.
"""

from kfp import dsl

from docsort.components.data import prepare_op, sample_data_op
from docsort.components.ensemble import ensemble_op
from docsort.components.k8s import apply
from docsort.components.predict import predict_op
from docsort.components.review import compare_candidate_folder_op, submission_op
from docsort.components.train import train_op

DEFAULT_MEMBERS = [
    "experiment=demo model=resnet18 fold=0 seed=1",
    "experiment=demo model=resnet18 fold=1 seed=2",
]


@dsl.pipeline(name="docsort-demo", description="docsort end to end on generated sample data.")
def demo_pipeline(
    per_class: int = 40,
    seed: int = 0,
    members: list = DEFAULT_MEMBERS,
    prepare_overrides: str = "experiment=demo",
    predict_overrides: str = "experiment=demo",
    output_root: str = "",
) -> dsl.Dataset:
    data = apply(sample_data_op(per_class=per_class, seed=seed).set_display_name("sample-data"))
    prep = apply(
        prepare_op(data=data.outputs["data"], overrides=prepare_overrides).set_display_name(
            "prepare"
        )
    )
    with dsl.ParallelFor(members, parallelism=2) as member:
        trained = apply(
            train_op(prepared=prep.outputs["prepared"], overrides=member).set_display_name("train")
        )
        pred = predict_op(
            prepared=prep.outputs["prepared"],
            model=trained.outputs["model"],
            overrides=predict_overrides,
        )
        apply(pred.set_display_name("predict"))
    cands = ensemble_op(
        predictions=dsl.Collected(pred.outputs["predictions"]),
        models=dsl.Collected(trained.outputs["model"]),
        methods="soft,hard",
    ).set_display_name("ensemble")
    apply(cands)
    cmp = compare_candidate_folder_op(
        prepared=prep.outputs["prepared"], candidates=cands.outputs["candidates"]
    )
    apply(cmp.set_display_name("compare-candidates"))
    sub = submission_op(
        prepared=prep.outputs["prepared"],
        comparison=cmp.outputs["comparison"],
        output_root=output_root,
    )
    apply(sub.set_display_name("submission"))
    return sub.outputs["submission"]
