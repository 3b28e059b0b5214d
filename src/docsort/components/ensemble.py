"""KFP components of the ensemble stages: candidates from members, and saved candidate specs re-run.

``spec_version_op`` stamps the specs, ``prepare_candidates_op`` prepares the data the
way their members were trained, ``candidate_run_op`` re-runs one spec.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")
GPU_IMAGE = image("gpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ensemble_op(
    predictions: Input[list[Dataset]],
    models: Input[list[Model]],
    candidates: Output[Dataset],
    methods: str = "soft",
    include_members: bool = True,
):
    """Build one candidate per method (soft, weighted, hard, stacked), plus each member alone."""
    from docsort.ensemble.ensemble import ensemble_candidates

    ensemble_candidates(
        [p.path for p in predictions], candidates.path, models=[m.path for m in models],
        methods=methods.split(","), include_members=include_members,
    )  # fmt: skip


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def spec_version_op(specs: list) -> str:
    """A version stamp of the candidate specs' content and of the models they name.

    Never cached, like ``data_version_op``: it runs on every pipeline run, and the
    candidate steps take its output as a parameter, so their cache keys change
    exactly when a spec or a member model changes behind the same path.
    """
    from docsort.ensemble.spec_version import spec_version

    return spec_version(specs)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_candidates_op(
    prepared: Output[Dataset],
    data_root: str,
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

    prepare_for_candidates(data_root, specs, prepared.path, overrides.split())
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

    ``spec_version`` keys the cache on the spec's content and its models, not its path.
    """
    from docsort.ensemble.candidate import run_candidate

    run_candidate(spec, prepared.path, candidate.path, overrides.split())
    candidate.metadata["spec_version"] = spec_version
