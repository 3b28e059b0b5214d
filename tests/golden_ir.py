"""Golden compiled YAML of every shipped pipeline, so each change to the IR shows in review.

``tests/test_kfp_contract.py`` compiles each pipeline in ``pipelines/`` and compares
it with ``tests/golden/<pipeline>.yaml``. After an intended change, regenerate them
with ``make golden`` (``python -m tests.golden_ir``) and review the diff.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
PIPELINES = sorted(
    p for p in (ROOT / "src" / "docsort" / "pipelines").glob("*.py") if p.name != "__init__.py"
)
REGENERATE = "make golden"
_SDK_VERSION = re.compile(r"^sdkVersion: kfp-\S+$", re.MULTILINE)


def render(pipeline: Path) -> str:
    """The compiled YAML of ``pipeline`` with the shipped settings, environment ignored.

    The default k8s profile and the registry and tag of ``conf/images.yaml`` are used
    whatever ``DOCSORT_*`` says; the KFP SDK's patch version is normalised away.
    """
    from docsort.components.k8s import use_profile
    from docsort.core import container_images as images
    from docsort.kfp.runner import compile_pipeline

    spec = images._spec()
    with tempfile.TemporaryDirectory(prefix="docsort-golden-") as tmp, use_profile("default"):
        out = compile_pipeline(
            pipeline,
            Path(tmp) / f"{pipeline.stem}.yaml",
            image_registry=spec["registry"],
            image_tag=str(spec["tag"]),
        )
        text = out.read_text(encoding="utf-8")
    return _SDK_VERSION.sub("sdkVersion: kfp-<version>", text)


def main() -> int:
    GOLDEN.mkdir(exist_ok=True)
    for pipeline in PIPELINES:
        target = GOLDEN / f"{pipeline.stem}.yaml"
        text = render(pipeline)
        changed = not target.is_file() or target.read_text(encoding="utf-8") != text
        target.write_text(text, encoding="utf-8")
        print(f"{'updated' if changed else 'unchanged'}: {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
