"""ONNX export and the onnxruntime predictor: same TTA, same probabilities as torch (1e-4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from docsort.cli.main import main
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.probs import read_probs
from docsort.models.onnx_export import read_metadata, weights_digest
from docsort.models.onnx_runtime import OrtTTA, ort_providers
from docsort.predict.predict import predict
from tests.conftest import TINY
from tests.test_tta import make_member

FP32 = [*TINY, "precision=fp32", "tta.batch_size=7"]


@pytest.fixture(scope="module")
def member_dir(prepared_root, tmp_path_factory) -> Path:
    return make_member(tmp_path_factory.mktemp("onnx") / "m", prepared_root, seed=2)


@pytest.fixture(scope="module")
def torch_pred(member_dir, prepared_root, tmp_path_factory) -> Path:
    return predict(prepared_root, member_dir, tmp_path_factory.mktemp("tp") / "pred", FP32)


def test_export_cli_writes_a_checked_model_with_a_dynamic_batch_axis(member_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert (
        main(["export", str(member_dir), "--format", "onnx", "--opset", "17", "--out", str(out)])
        == 0
    )
    assert "matches torch within 1e-4" in capsys.readouterr().out
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 48, 48]
    meta = read_metadata(out)
    assert meta["docsort.weights_sha256"] == weights_digest(member_dir)
    assert json.loads(meta["docsort.class_names"])[0] and meta["docsort.precision"] == "fp32"


def test_onnxruntime_tta_matches_torch(member_dir, prepared_root, torch_pred, tmp_path):
    out = predict(prepared_root, member_dir, tmp_path / "pred", [*FP32, "runtime=onnx"])
    info = json.loads((out / "predict.json").read_text())
    assert info["engine"]["runtime"] == "onnx" and info["engine"]["providers"] == [
        "CPUExecutionProvider"
    ]
    assert info["engine"]["threads"] == info["threads"]  # the same thread budget as torch
    ids_t, p_torch, _ = read_probs(torch_pred / "probs.csv")
    ids_o, p_onnx, _ = read_probs(out / "probs.csv")
    assert ids_t == ids_o
    assert np.abs(p_torch - p_onnx).max() < 1e-4
    vt, vo = np.load(torch_pred / "views.npz"), np.load(out / "views.npz")
    for view in ("identity", "rot90", "flip_rot270"):
        a, b = vt[view], vo[view]
        assert np.abs(a - b).max() < 1e-3 and np.abs(a).max() > 1e-3


@pytest.mark.slow  # `make test-slow`
def test_predict_uses_the_exported_model_and_refuses_a_stale_one(
    member_dir, prepared_root, tmp_path, torch_pred
):
    """``MODEL_DIR/model.onnx`` is used; after retraining (new weights) a stale one is refused."""
    model = shutil.copytree(member_dir, tmp_path / "m")
    assert (
        main(["export", str(model), "--opset", "13"]) == 0
    )  # default output: MODEL_DIR/model.onnx
    out = predict(
        prepared_root, model, tmp_path / "a", [*FP32, "runtime=onnx", "tta.views=[identity]"]
    )
    assert json.loads((out / "predict.json").read_text())["engine"]["model"] == str(
        model / "model.onnx"
    )

    make_member(tmp_path / "retrained", prepared_root, seed=5)
    shutil.copyfile(tmp_path / "retrained" / "model.safetensors", model / "model.safetensors")
    with pytest.raises(DocsortError, match="exported from other weights") as err:
        predict(
            prepared_root, model, tmp_path / "b", [*FP32, "runtime=onnx", "tta.views=[identity]"]
        )
    assert len(str(err.value).splitlines()) == 1 and f"docsort export {model}" in str(err.value)
    assert main(["export", str(model)]) == 0  # export again: used, and it is the new weights
    out = predict(
        prepared_root, model, tmp_path / "b", [*FP32, "runtime=onnx", "tta.views=[identity]"]
    )
    assert json.loads((out / "predict.json").read_text())["engine"]["model"] == str(
        model / "model.onnx"
    )
    ref = predict(prepared_root, model, tmp_path / "c", [*FP32, "tta.views=[identity]"])
    assert np.abs(read_probs(out / "probs.csv")[1] - read_probs(ref / "probs.csv")[1]).max() < 1e-4


def test_predict_runs_the_file_export_out_names(member_dir, prepared_root, tmp_path, capsys):
    """``export --out FILE`` then ``predict --onnx FILE``: that file runs; another model's is refused."""
    onnx_file = tmp_path / "elsewhere" / "r18.onnx"
    onnx_file.parent.mkdir()
    assert main(["export", str(member_dir), "--out", str(onnx_file)]) == 0
    args = ["predict", "--prepared", str(prepared_root), "--model", str(member_dir),
            "--onnx", str(onnx_file), *FP32, "tta.views=[identity]"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "p"), "runtime=onnx"]) == 0
    info = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert info["engine"]["model"] == str(onnx_file)
    assert not (member_dir / "model.onnx").exists()
    capsys.readouterr()

    assert main([*args, "--out", str(tmp_path / "q")]) == 2  # no runtime=onnx
    assert "add runtime=onnx" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "q"), "runtime=onnx", "precision=fp16"]) == 2
    assert "is an fp32 export but precision=fp16" in capsys.readouterr().err
    other = make_member(tmp_path / "other", prepared_root, seed=9)
    code = main(["predict", "--prepared", str(prepared_root), "--model", str(other), "--onnx",
                 str(onnx_file), "--out", str(tmp_path / "q"), *FP32, "runtime=onnx"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "exported from other weights" in err
    assert not (tmp_path / "q").exists()


def test_fp16_export_is_for_gpu_providers_only(member_dir, tmp_path, prepared_root):
    out = tmp_path / "fp16.onnx"
    assert main(["export", str(member_dir), "--fp16", "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    kinds = {init.data_type for init in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds
    assert (
        proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )  # I/O stay fp32
    with pytest.raises(
        ConfigError, match="fp16 ONNX model runs on the CUDA or TensorRT provider only"
    ):
        OrtTTA(out, threads=1, device="cpu")
    with pytest.raises(ConfigError, match="precision=bf16 is not available with runtime=onnx"):
        predict(
            prepared_root, member_dir, tmp_path / "p", [*TINY, "runtime=onnx", "precision=bf16"]
        )


def test_providers_prefer_tensorrt_then_cuda_then_cpu(tmp_path):
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = ort_providers("auto", gpu, fp16=True, cache_dir=tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == gpu
    assert chosen[0][1]["trt_fp16_enable"] is True and chosen[0][1]["trt_engine_cache_path"] == str(
        tmp_path
    )
    assert ort_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert ort_providers("cpu", gpu) == ["CPUExecutionProvider"]
    assert ort_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="no CUDA or TensorRT provider"):
        ort_providers("cuda", ["CPUExecutionProvider"])


def test_export_refuses_bad_input_in_one_line(tmp_path, member_dir, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["export", str(member_dir), "--opset", "9", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--opset 9 is not supported" in err[0]
    assert not (tmp_path / "x.onnx").exists()
