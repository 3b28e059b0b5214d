"""One lightweight KFP component per docsort stage.

Each body imports docsort and calls one stage function: on a cluster it runs in
the docsort image, locally ``kfp.local.SubprocessRunner(use_venv=False)`` runs
the same body with the installed package. Hydra overrides travel as one
space-separated string, e.g. ``"model=resnet18 train.epochs=3"``.
"""


from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from docsort.images import image

CPU_IMAGE = image("cpu")
GPU_IMAGE = image("gpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sample_data_op(data: Output[Dataset], per_class: int = 40, seed: int = 0):
    """Generate the synthetic sample dataset."""
    from docsort.sampledata import generate_sample_data

    generate_sample_data(data.path, per_class=per_class, seed=seed)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_op(prepared: Output[Dataset], data_uri: str = "", data: Input[Dataset] = None, overrides: str = ""):
    """Validate the dataset (``data_uri`` or the ``data`` artifact), make folds and the image cache."""
    from docsort.prepare import prepare

    prepare(data_uri or data.path, prepared.path, overrides.split())


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_op(prepared: Input[Dataset], model: Output[Model], metrics: Output[Metrics], overrides: str = ""):
    """Train one member (``fold=...`` in the overrides picks the fold)."""
    import json
    from pathlib import Path

    from docsort.train import train

    train(prepared.path, model.path, overrides.split())
    result = json.loads((Path(model.path) / "metrics.json").read_text())
    for key in ("val_macro_f1", "val_loss", "oof_tta_macro_f1"):
        if key in result:
            metrics.log_metric(key, float(result[key]))
    model.metadata["overrides"] = overrides


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def predict_op(prepared: Input[Dataset], model: Input[Model], predictions: Output[Dataset], overrides: str = ""):
    """Test-set probabilities of one member with batched TTA."""
    from docsort.predict import predict

    predict(prepared.path, model.path, predictions.path, overrides.split())
    predictions.metadata["model"] = model.path


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ensemble_op(
    predictions: Input[list[Dataset]],
    models: Input[list[Model]],
    candidates: Output[Dataset],
    methods: str = "soft",
    include_members: bool = True,
):
    """Build one candidate per method (soft, weighted, hard, stacked), plus each member alone."""
    from docsort.stages import ensemble_candidates

    ensemble_candidates(
        [p.path for p in predictions], candidates.path, models=[m.path for m in models],
        methods=methods.split(","), include_members=include_members,
    )  # fmt: skip


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def hardcases_op(prepared: Input[Dataset], candidates: Input[Dataset], comparison: Output[Dataset], summary: Output[Markdown]):
    """Score every candidate on hardcases.csv side by side and choose the winner."""
    import shutil
    from pathlib import Path

    from docsort.stages import compare_hardcases, list_candidates

    compare_hardcases(prepared.path, list_candidates(candidates.path), comparison.path)
    shutil.copyfile(Path(comparison.path) / "comparison.md", summary.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def submit_op(prepared: Input[Dataset], comparison: Input[Dataset], submission: Output[Dataset], output_root: str = ""):
    """Write the winner's validated submission (to ``output_root`` too when set, e.g. s3://...)."""
    from docsort.stages import submit_winner

    uri = submit_winner(prepared.path, comparison.path, submission.path, output_root or None)
    submission.metadata["uri"] = uri
