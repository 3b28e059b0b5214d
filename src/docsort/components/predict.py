"""KFP component of the prediction stage: one member's test-set probabilities."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from docsort.core.container_images import image

GPU_IMAGE = image("gpu")


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def predict_op(
    prepared: Input[Dataset], model: Input[Model], predictions: Output[Dataset], overrides: str = ""
):
    """Test-set probabilities of one member with batched TTA."""
    from docsort.predict.predict import predict

    predict(prepared.path, model.path, predictions.path, overrides.split())
    predictions.metadata["model"] = model.path
