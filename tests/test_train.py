"""Training: K-fold OOF, the recipe's options, W&B offline tracking, kill-and-resume, pretrained weights.

Everything runs for real on the tiny prepared sample (48 px, 2 folds) on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from docsort.core.config import load_config
from docsort.core.probs import read_probs
from docsort.data.prepared import Prepared
from tests.conftest import TINY

FAST = [*TINY, "model=resnet10t", "train.batch_size=16", "tracking.wandb=disabled"]


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch):
    """W&B never reaches the network from these tests, whatever the host's environment."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_NAME", raising=False)


def quiet_train(prepared: Path, out: Path, overrides: list[str]) -> str:
    from docsort.train.train import train

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        train(prepared, out, overrides)
    return buf.getvalue()


# --- 1. K-fold --------------------------------------------------------------------------------


def test_folds_are_stratified_reproducible_and_keep_groups_together():
    from docsort.data.prepare import make_folds

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), [30, 22, 15, 40, 9])
    groups = [f"g{i // 3}" for i in range(len(y))]  # near-duplicate triples
    a = make_folds(y, 3, seed=7)
    assert np.array_equal(a, make_folds(y, 3, seed=7))  # reproducible
    assert not np.array_equal(a, make_folds(y, 3, seed=8))  # and seeded
    per = pd.crosstab(y, a)
    assert (per.max(axis=1) - per.min(axis=1) <= 1).all()  # stratified: classes split evenly
    shuffled = rng.permutation(len(y))
    g = make_folds(y[shuffled], 3, seed=7, groups=[groups[i] for i in shuffled])
    by_group = pd.Series(g).groupby([groups[i] for i in shuffled]).nunique()
    assert (by_group == 1).all()  # a group never straddles folds
    assert set(g) == {0, 1, 2}


def test_prepare_groups_rows_by_the_configured_column(sample_root, tmp_path):
    from docsort.data.prepare import prepare

    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    train = pd.read_csv(data / "train.csv", dtype=str)
    train["group"] = [f"doc{i // 2}" for i in range(len(train))]  # pairs of "near duplicates"
    train.to_csv(data / "train.csv", index=False)
    out = prepare(str(data), tmp_path / "p", [*TINY, "data.group_column=group"])
    idx = Prepared(out).index.merge(train[["ID", "group"]], on="ID")
    assert (idx.groupby("group")["fold"].nunique() == 1).all()
    assert set(idx["fold"]) == {0, 1}


def test_fold_all_trains_k_members_and_oof_covers_every_image_once(prepared_root, tmp_path):
    out = tmp_path / "kfold"
    stdout = quiet_train(prepared_root, out, [*FAST, "fold=all", "train.epochs=1"])
    assert stdout.count("epoch=1\n") == 2  # one member per fold
    prep = Prepared(prepared_root)
    ids, probs, df = read_probs(out / "oof.csv")
    assert sorted(ids) == sorted(prep.index["ID"]) and len(set(ids)) == len(ids)
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    merged = df.merge(prep.index, on="ID", suffixes=("", "_index"))
    assert (merged["fold"] == merged["fold_index"]).all() and (
        merged["target"] == merged["target_index"]
    ).all()
    for k in (0, 1):
        member = read_probs(out / f"fold{k}" / "oof.csv")[0]
        assert set(member) == set(prep.index.loc[prep.index["fold"] == k, "ID"])
        assert (out / f"fold{k}" / "model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2 and 0 <= metrics["oof_tta_macro_f1"] <= 1


# --- 2. the recipe: config groups and options that must take effect ---------------------------


def _group_files() -> list[tuple[str, str]]:
    conf = resources.files("docsort.conf")
    return [
        (g, p.name[:-5])
        for g in ("model", "train", "aug", "experiment")
        for p in sorted(conf.joinpath(g).iterdir(), key=lambda p: p.name)
        if p.name.endswith(".yaml")
    ]


@pytest.mark.parametrize(("group", "name"), _group_files(), ids=lambda v: str(v))
def test_every_config_group_composes_and_builds(group, name):
    from docsort.models.factory import create_model

    override = f"{group}={name}"
    cfg = load_config([override] + (["data.image_size=64"] if group != "experiment" else []))
    assert cfg.data.image_size >= 16
    if name == "feature_probe":  # built by train from its backbone (tests/test_feature_probe.py)
        from docsort.core.errors import ConfigError

        with pytest.raises(ConfigError, match="built by docsort train"):
            create_model(cfg, 17)
        return
    if group in ("model", "experiment"):
        cfg.data.image_size = 64
        model = create_model(cfg, 17).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, int(cfg.data.channels), 64, 64))
        assert out.shape == (1, 17)
        assert model.pretrained_cfg["architecture"] == cfg.model.name


def _formula_factor(kind: str, total: int, warm: int, step: int) -> float:
    """The hand-written per-step LR factor that torch's schedulers replaced (the reference)."""
    total, warm = max(1, total), max(0, warm)
    step = min(max(step, 0), total - 1)
    if kind == "onecycle":
        up = min(max(warm, round(0.05 * total)), total - 1)
        if step < up:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * step / up)) / 2
        p = (step - up) / max(1, total - 1 - up)
        return 4e-6 + (1 - 4e-6) * (1 + math.cos(math.pi * p)) / 2
    if step < warm:
        return (step + 1) / warm
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return 1.0


def _lr_trace(kind: str, total: int, warm: int, steps: int, lr: float = 0.002) -> list[float]:
    from docsort.train.train import lr_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = lr_scheduler(opt, kind, total, warm)
    trace = []
    for _ in range(steps):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return trace


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "constant"])
def test_lr_schedule_matches_the_formula_for_any_number_of_steps(kind):
    """LinearLR + CosineAnnealingLR (and the one-cycle LambdaLR) give the recipe's LR at every step."""
    lr = 0.002
    for total in (1, 2, 3, 7, 20, 500):
        for warm in (0, 1, 3, total, 3 * total):
            trace = _lr_trace(kind, total, warm, total + 3, lr)  # steps past the end: no error
            want = [lr * _formula_factor(kind, total, warm, s) for s in range(total)]
            assert trace[:total] == pytest.approx(want, rel=1e-9, abs=1e-12), (total, warm)
            assert all(0 <= v <= lr for v in trace), (total, warm, trace)
    trace = _lr_trace("onecycle", 100, 10, 100, 1.0)
    assert trace[0] == pytest.approx(0.04) and trace[10] == pytest.approx(1.0) and trace[99] < 1e-4


def test_lr_schedule_state_loads_with_weights_only(tmp_path):
    from docsort.train.train import lr_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = lr_scheduler(opt, "cosine", 20, 5)
    for _ in range(7):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    again = lr_scheduler(opt2, "cosine", 20, 5)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        for o, s in ((opt, sched), (opt2, again)):
            o.step()
            s.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_onecycle_with_one_batch_per_epoch_trains(prepared_root, tmp_path):
    """Regression: OneCycleLR divided by zero with 1 batch/epoch and 2 epochs."""
    out = tmp_path / "m"
    stdout = quiet_train(
        prepared_root,
        out,
        [*FAST, "fold=0", "train.epochs=2", "train.batch_size=512", "train.scheduler=onecycle"],
    )
    assert "epoch=2\n" in stdout
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]


@pytest.mark.slow  # `make test-slow`
def test_recipe_options_take_effect(prepared_root, tmp_path):
    """EMA, mixup+cutmix, class-balanced sampler, grad clipping, channels_last, torch.compile, bf16."""
    import lightning as L

    from docsort.train.train import Run

    clip = 1e-3
    cfg = load_config([*FAST, "fold=0", "train.epochs=2", "train.ema_decay=0.9", "train.mixup_alpha=0.4", "train.cutmix_alpha=1.0",
                       "train.balance=sampler", f"train.grad_clip={clip}", "train.channels_last=true", "train.compile=eager",
                       "precision=bf16", "train.early_stop_patience=3"])  # fmt: skip
    run = Run(Prepared(prepared_root), cfg, 0, tmp_path / "m")
    m = run.module
    conv = m.model.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert (
        m.model._compiled_call_impl is not None
    )  # nn.Module.compile: names stay those of the model
    assert run.trainer.precision == "bf16-mixed"
    assert run.trainer.gradient_clip_val == clip
    # class-balanced sampler: each class carries the same total weight, and draws are near uniform
    sampler = run.train_loader.sampler
    ytr = run.targets[run.tr_rows]
    w = sampler.weights.numpy()
    per_class = np.bincount(ytr, weights=w)
    assert np.allclose(per_class[per_class > 0], per_class[per_class > 0][0])
    draws = np.concatenate([ytr[list(iter(sampler))] for _ in range(40)])
    freq = np.bincount(draws, minlength=17)[np.unique(ytr)] / len(draws)
    natural = np.bincount(ytr)[np.unique(ytr)] / len(ytr)
    assert np.abs(freq - freq.mean()).max() < np.abs(natural - natural.mean()).max()

    norms: list[float] = []

    class GradNorm(L.Callback):  # grads are still there after the optimizer step
        def on_train_batch_end(self, trainer, pm, *_):
            g = [p.grad.norm() for p in pm.model.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack(g))))

    run.trainer.callbacks.append(GradNorm())
    before = {k: v.clone() for k, v in m.ema.module.state_dict().items()}
    run.fit()
    assert norms and max(norms) <= clip * 1.01  # gradient clipping applied
    after_ema = m.ema.module.state_dict()
    assert any(not torch.equal(before[k], after_ema[k]) for k in before)  # EMA updated...
    w_model = dict(m.model.named_parameters())["fc.weight"]
    assert not torch.equal(
        w_model.detach(), after_ema["fc.weight"]
    )  # ...and differs from the raw weights
    assert m.eval_model is m.ema.module
    # the checkpoint loads with weights_only=True and keeps the epoch history
    ckpt = torch.load(run.last, map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in ckpt["docsort_history"]] == [1, 2]
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])


def test_mix_makes_soft_targets_of_two_images():
    from timm.data import Mixup

    from docsort.train.train import _mix

    torch.manual_seed(0)
    np.random.seed(0)
    for n in (4, 5, 1):  # timm refuses odd batches: the last image stays unmixed
        for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.4, 1.0)):
            mixer = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=5
            )
            x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(n)])
            y = torch.arange(n)
            xm, soft = _mix(mixer, x.clone(), y)
            assert soft.shape == (n, 5) and torch.allclose(soft.sum(1), torch.ones(n))
            mixed = (soft > 0).sum(1)
            assert (mixed <= 2).all()
            if n % 2:
                assert torch.equal(xm[-1], x[-1]) and torch.equal(
                    soft[-1], F.one_hot(y[-1], 5).float()
                )
            if n > 1:
                assert not torch.equal(xm, x) and (mixed[: n - n % 2] == 2).any()


def test_mix_smooths_labels_like_cross_entropy():
    """Soft targets: torch's weighted soft cross-entropy is the old -sum(w * soft * log p), smoothing as for labels."""
    from timm.data import Mixup

    from docsort.train.train import _mix

    np.random.seed(1)
    mixer = Mixup(mixup_alpha=0.4, label_smoothing=0.1, num_classes=5)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 3, 4])
    _, soft = _mix(mixer, x, y)
    logits, w = torch.randn(1, 5), torch.rand(5) + 0.5
    assert float(F.cross_entropy(logits, soft[-1:], weight=w)) == pytest.approx(
        float(-(soft[-1:] * logits.log_softmax(-1) * w).sum(-1).mean()), rel=1e-6
    )
    assert float(F.cross_entropy(logits, soft[-1:])) == pytest.approx(
        float(F.cross_entropy(logits, y[-1:], label_smoothing=0.1)), rel=1e-6
    )


def test_class_weights_favour_rare_classes():
    from docsort.train.train import _class_weights

    w = _class_weights(np.array([0] * 30 + [1] * 10 + [2] * 5), 3)
    assert w[2] > w[1] > w[0] and float(w.mean()) == pytest.approx(1.0)


def test_early_stopping_ends_training_before_max_epochs(prepared_root, tmp_path):
    out = tmp_path / "m"
    quiet_train(prepared_root, out, [*FAST, "fold=0", "train.epochs=8", "train.lr=1e-9", "train.scheduler=constant",
                                     "train.warmup_epochs=0", "train.early_stop_patience=1", "train.limit_batches=1"])  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["epochs"] < 8


def test_precision_auto_follows_the_measured_probe():
    from docsort.core.device import cpu_bf16_speedup, resolve_precision

    speedup = cpu_bf16_speedup()
    assert speedup > 0
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if speedup >= 1.3 else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_cluster_layout_from_torchrun_env():
    from docsort.core.errors import ConfigError
    from docsort.train.train import cluster_layout

    assert cluster_layout({}) == (1, 1)
    assert cluster_layout({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == (
        2,
        4,
    )  # 2 pods x 4 GPUs (torchrun)
    assert cluster_layout({"WORLD_SIZE": "3"}) == (
        3,
        1,
    )  # PyTorchJob without torchrun: one process per pod
    with pytest.raises(ConfigError):
        cluster_layout({"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"})


def test_compile_option_is_validated(prepared_root, tmp_path):
    from docsort.core.errors import ConfigError
    from docsort.train.train import compile_backend, train

    assert (
        compile_backend(False) is None
        and compile_backend(True) == "inductor"
        and compile_backend("eager") == "eager"
    )
    with pytest.raises(ConfigError, match="train.compile"):
        train(prepared_root, tmp_path / "m", [*FAST, "train.compile=fastest"])


# --- 4. tracking ------------------------------------------------------------------------------


def wandb_records(path: Path):
    """Records of a ``.wandb`` transaction log (LevelDB log framing of ``Record`` protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


@pytest.mark.slow  # `make test-slow`
def test_wandb_offline_run_holds_config_metrics_confusion_matrix_and_worst_predictions(
    prepared_root, tmp_path
):
    out = tmp_path / "m"
    stdout = quiet_train(
        prepared_root,
        out,
        [
            *TINY,
            "model=resnet10t",
            "train.batch_size=16",
            "fold=0",
            "train.epochs=2",
            "tracking.wandb=auto",
        ],
    )
    # stdout: exactly the metric lines Katib parses, nothing else
    lines = [x for x in stdout.splitlines() if x.strip()]
    assert all(
        re.fullmatch(r"(epoch=\d+|val_macro_f1=\d\.\d{4}|val_loss=\d+\.\d{4})", x) for x in lines
    ), lines
    assert [x for x in lines if x.startswith("epoch=")] == ["epoch=1", "epoch=2"]
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # offline (no API key), inside the output folder
    deadline = time.time() + 60  # the W&B service process may still be flushing the log
    while (
        not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(runs[0]))
        and time.time() < deadline
    ):
        time.sleep(0.2)
    history, config, group = [], {}, None
    for r in wandb_records(runs[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            group = r.run.run_group
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
        elif kind == "config":
            config.update({u.key: u.value_json for u in r.config.update})
    val = [h for h in history if "val_macro_f1" in h]
    assert len(val) == 2 and all(0 <= float(h["val_macro_f1"]) <= 1 for h in val)
    assert json.loads(config["model"])["name"] == "resnet10t"  # the resolved config
    assert any(k.startswith("confusion_matrix") for h in history for k in h)
    tables = {
        p.name.split("_")[0]
        for p in (runs[0].parent / "files" / "media" / "table").glob("*.table.json")
    }
    assert {"confusion", "worst"} <= tables
    worst = json.loads(
        next(
            (runs[0].parent / "files" / "media" / "table").glob("worst_predictions*.json")
        ).read_text()
    )
    assert worst["columns"] == ["ID", "image", "truth", "predicted", "p_truth", "p_pred"]
    # an offline run stores a table's images as the word "Image" (wandb/wandb#4611, open);
    # online runs upload them. The column and a value per row are what can be checked here.
    assert worst["data"] and all(row[1] for row in worst["data"])
    assert group == "m"  # the training run's folder: a fold=all bundle's folds share it
    # the CSV log is always written, and the history file has every epoch
    csv = pd.read_csv(out / "logs" / "run0" / "metrics.csv")
    assert csv["val_macro_f1"].notna().sum() == 2
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]


def test_wandb_mode_resolution():
    from docsort.core.errors import ConfigError
    from docsort.train.train import wandb_mode

    def cfg(mode):
        return load_config([f"tracking.wandb={mode}"])

    assert wandb_mode(cfg("auto"), {}) == "offline"
    assert wandb_mode(cfg("auto"), {"WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode(cfg("auto"), {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode(cfg("online"), {"WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode(cfg("disabled"), {"WANDB_API_KEY": "k"}) == "disabled"
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        wandb_mode(cfg("online"), {})


# --- 5. checkpoints, resume, pretrained weights -----------------------------------------------


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_killed_training_resumes_from_last_checkpoint_and_ends_with_all_epochs(
    prepared_root, tmp_path
):
    out = tmp_path / "m"
    argv = [sys.executable, "-m", "docsort.cli.main", "train", "--prepared", str(prepared_root), "--out", str(out),
            *FAST, "fold=0", "train.epochs=4", "train.batch_size=8"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    first = []
    try:
        for line in proc.stdout:
            first.append(line.strip())
            if line.startswith("epoch="):
                break
        deadline = time.time() + 60
        while (
            not (out / "checkpoints" / "last.ckpt").is_file()
            and time.time() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-epoch 2: no cleanup, no finally blocks
    finally:
        proc.wait(30)
    assert "epoch=1" in first and proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr and "last.ckpt" in again.stderr
    epochs_second = [
        int(x.split("=")[1]) for x in again.stdout.splitlines() if x.startswith("epoch=")
    ]
    assert (
        epochs_second and epochs_second[0] >= 2 and epochs_second[-1] == 4
    )  # continued, not restarted
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 4
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2, 3, 4]


def _rgb_weights(path: Path) -> dict[str, torch.Tensor]:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = {
        k: v.contiguous()
        for k, v in timm.create_model("resnet10t", num_classes=1000, in_chans=3)
        .state_dict()
        .items()
    }
    save_file(state, str(path))
    return state


def _gray_model(src: str):
    from docsort.models.factory import create_model

    cfg = load_config(["model=resnet10t"])
    cfg.model.pretrained = src  # set after composing: a path is not a Hydra override value
    return create_model(cfg, 17)


def test_pretrained_safetensors_load_locally_with_rgb_stem_to_grayscale(tmp_path):
    state = _rgb_weights(tmp_path / "rgb.safetensors")
    model = _gray_model(str(tmp_path / "rgb.safetensors"))
    own = model.state_dict()
    assert own["conv1.0.weight"].shape[1] == 1
    assert torch.allclose(
        own["conv1.0.weight"], state["conv1.0.weight"].sum(1, keepdim=True)
    )  # RGB stem summed
    assert torch.equal(own["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert own["fc.weight"].shape == (17, 512) and not torch.equal(
        own["fc.weight"], state["fc.weight"][:17]
    )  # new head


def test_pretrained_safetensors_load_from_s3(s3_server, tmp_path):
    import boto3

    state = _rgb_weights(tmp_path / "w.safetensors")
    boto3.client("s3", endpoint_url=str(s3_server)).upload_file(
        str(tmp_path / "w.safetensors"), s3_server.bucket, "weights/w.safetensors"
    )
    model = _gray_model(f"s3://{s3_server.bucket}/weights/w.safetensors")
    assert torch.equal(model.state_dict()["layer3.0.conv2.weight"], state["layer3.0.conv2.weight"])


def test_pretrained_refuses_pickles_and_foreign_hub_names(tmp_path):
    from docsort.core.errors import ConfigError, DocsortError

    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(DocsortError, match="safetensors"):
        _gray_model(str(tmp_path / "w.pt"))
    with pytest.raises(ConfigError, match="model.name"):
        _gray_model(
            "convnext_tiny.fb_in22k"
        )  # would build another architecture than load_member rebuilds
