"""The SFT loop: token-level accumulation, exact resume after a kill, divergence, callbacks, DDP, modes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from launch import accelerate_cli
from safetensors.torch import load_file

from tunelens.config import load_config
from tunelens.data import collate_packed, collate_padded, pack_examples
from tunelens.data.tokenize import TokenizedExample
from tunelens.errors import TrainingError
from tunelens.models import apply_finetune_mode, load_model
from tunelens.train import Callback, SFTConfig, read_metrics, train_sft
from tunelens.train import sft as sft_module
from tunelens.train.batches import BatchPlan
from tunelens.train.config import OptimConfig
from tunelens.train.optim import lr_factor

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instructions" / "alpaca_en_demo_llamafactory.json"
needs_data = pytest.mark.skipif(not ALPACA.is_file(), reason="../shared/data not present")


def tiny_cfg(**over) -> SFTConfig:
    base = ["model.spec=tiny-llama", f"data.paths=[{ALPACA}]", "data.max_length=96", "data.limit=48",
            "batch_size=2", "max_steps=6", "save_every=2", "precision=fp32", "tensorboard=false",
            "optim.warmup_steps=1"]
    return load_config(SFTConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def random_examples(n: int, seed: int = 0) -> list[TokenizedExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(6, 30, (1,), generator=g))
        ids = torch.randint(5, 8000, (length,), generator=g).tolist()
        cut = length // 2
        out.append(TokenizedExample(ids, [0] * cut + [1] * (length - cut), f"ex{i}"))
    return out


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True])
def test_four_micro_batches_of_one_equal_one_batch_of_four(packed):
    model, tok = load_model("tiny-llama", seed=1)
    examples = random_examples(4)
    collate = (lambda xs: collate_packed(pack_examples(xs, 64, "greedy"), tok.pad_token_id)) if packed \
        else (lambda xs: collate_padded(xs, tok.pad_token_id))
    whole, parts = [collate(examples)], [collate([e]) for e in examples]
    n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in parts)
    loss_a = sft_module.forward_backward(model, whole, n, 1)
    ga = grads_of(model)
    model.zero_grad(set_to_none=True)
    loss_b = sft_module.forward_backward(model, parts, n, 1)
    gb = grads_of(model)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-7)
    # the per-micro-batch mean (what a naive loop does) gives a different gradient: the test has teeth
    model.zero_grad(set_to_none=True)
    for b in parts:
        labels = b.pop("labels")
        logits = model(**b, use_cache=False).logits
        (sft_module.token_loss_sum(logits, labels) / int((labels[:, 1:] != -100).sum()) / 4).backward()
    gn = grads_of(model)
    assert any(not torch.allclose(ga[k], gn[k], rtol=1e-3) for k in ga)


def test_batch_plan_rows_do_not_depend_on_the_split():
    one = BatchPlan(n_rows=37, batch_size=2, grad_accum=4, world_size=1, seed=3)
    two = BatchPlan(n_rows=37, batch_size=2, grad_accum=2, world_size=2, seed=3)
    for step in range(12):  # crosses several epoch boundaries
        a = sorted(i for mb in one.micro_batches(step, 0) for i in mb)
        b = sorted(i for r in range(2) for mb in two.micro_batches(step, r) for i in mb)
        assert a == b and len(a) == 8
    epoch0 = [i for s in range(5) for i in one.global_rows(s)][:37]
    assert sorted(epoch0) == list(range(37))  # an epoch visits every row once


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = OptimConfig(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 10, cfg) == pytest.approx(0.5)
    assert lr_factor(1, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(2, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 10, cfg) == pytest.approx(0.1)
    lin = OptimConfig(schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(5, 10, lin) == pytest.approx(0.5)


@needs_data
def test_run_dir_contents_and_callbacks(tmp_path):
    class Recorder(Callback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, state):
            self.calls.append(("begin", state.step))
            state.log({"probe_metric": 0.5})

        def on_step_end(self, state):
            self.calls.append(("step", state.step))
            assert not state.model.training  # hooks see the model in eval mode
            if state.step == 4:
                state.should_stop = True

        def on_save(self, state, checkpoint):
            self.calls.append(("save", checkpoint.name))

        def on_train_end(self, state):
            self.calls.append(("end", state.step))

    rec = Recorder()
    res = train_sft(tiny_cfg(), tmp_path / "run", callbacks=[rec])
    assert res.steps == 4 and res.stopped_early
    assert rec.calls[0] == ("begin", 0) and rec.calls[-1] == ("end", 4)
    assert ("save", "step-2") in rec.calls and ("save", "step-4") in rec.calls
    run = tmp_path / "run"
    for f in ("config.yaml", "environment.json", "data_report.json", "metrics.jsonl", "summary.json"):
        assert (run / f).is_file(), f
    train = read_metrics(run, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert read_metrics(run, "probe")[0] == {"step": 0, "event": "probe", "probe_metric": 0.5}
    report = json.loads((run / "data_report.json").read_text())
    assert report["tokenize"]["n_kept"] == 48 and report["load"]["n_rejected"] == 0
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(run / "final")
    assert reloaded.config.num_hidden_layers == 4


@needs_data
def test_keep_last_prunes_old_checkpoints(tmp_path):
    train_sft(tiny_cfg(keep_last=1), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-6"]


def _run_cli(cfg_path: Path, out: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tunelens.cli.main", "sft", str(cfg_path), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)


@needs_data
@pytest.mark.parametrize("variant", [
    {"finetune": "full", "precision": "bf16"},
    {"finetune": "lora", "precision": "fp32", "lora": {"r": 4, "alpha": 8, "dropout": 0.2}},  # dropout uses RNG
])
def test_killed_run_resumes_to_identical_result(tmp_path, variant):
    cfg = {"model": {"spec": "tiny-llama"}, "data": {"paths": [str(ALPACA)], "max_length": 96, "limit": 40},
           "batch_size": 2, "grad_accum": 2, "max_steps": 8, "save_every": 2, "keep_last": 2,
           "optim": {"warmup_steps": 2, "lr": 1e-3}, **variant}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    straight = _run_cli(path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    killed = _run_cli(path, tmp_path / "killed", {sft_module.FAULT_ENV: "5"})
    assert killed.returncode == -signal.SIGKILL  # really killed mid-run, after step 5, checkpoint at 4
    assert not (tmp_path / "killed" / "final").exists()
    resumed = _run_cli(path, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 4" in resumed.stdout
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "straight", "train")]
    lb = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "killed", "train")]
    assert la == lb and [s for s, _ in la] == list(range(1, 9))


@needs_data
def test_nan_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    real = sft_module.token_loss_sum
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        out = real(logits, labels)
        return out * float("nan") if calls["n"] == 3 else out  # third micro-batch = step 3

    monkeypatch.setattr(sft_module, "token_loss_sum", poisoned)
    with pytest.raises(TrainingError, match="diverged at step 3") as err:
        train_sft(tiny_cfg(save_every=0), tmp_path / "run")
    assert "step-2" in str(err.value)
    monkeypatch.setattr(sft_module, "token_loss_sum", real)
    good = load_file(str(tmp_path / "run" / "checkpoints" / "step-2" / "trainable.safetensors"))
    train_sft(tiny_cfg(max_steps=2, save_every=0), tmp_path / "ref")
    ref = load_file(str(tmp_path / "ref" / "checkpoints" / "step-2" / "trainable.safetensors"))
    assert all(torch.equal(good[k], ref[k]) for k in ref)


@needs_data
def test_changed_config_is_refused_unless_forced(tmp_path):
    from tunelens.errors import ConfigError

    train_sft(tiny_cfg(max_steps=2), tmp_path / "run")
    with pytest.raises(ConfigError, match="different config"):
        train_sft(tiny_cfg(max_steps=2, **{"optim.lr": 1e-2}), tmp_path / "run")
    res = train_sft(tiny_cfg(max_steps=4), tmp_path / "run")  # more steps is a resumable change
    assert res.resumed_from == 2 and res.steps == 4


def test_finetune_modes_train_only_what_they_should():
    model, _ = load_model("tiny-llama")
    qk = apply_finetune_mode(model, "qk")
    trainable = {n for n, p in qk.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("q_proj.weight", "k_proj.weight")) for n in trainable)
    lora = apply_finetune_mode(load_model("tiny-llama")[0], "lora")
    names = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)


@needs_data
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    cfg = {"model": {"spec": "tiny-llama"}, "data": {"paths": [str(ALPACA)], "max_length": 96, "limit": 32},
           "batch_size": 2, "max_steps": 4, "save_every": 0, "precision": "fp32", "tensorboard": False}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "CI": "true"}
    one = subprocess.run([sys.executable, "-m", "tunelens.cli.main", "sft", str(path), "--out", str(tmp_path / "one"),
                          "grad_accum=2"], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    launcher = accelerate_cli(2, "sft", str(path), "--out", str(tmp_path / "two"))
    two = subprocess.run(launcher, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "data_report.json").read_text())
    assert report["world_size"] == 2
    la = [r["loss"] for r in read_metrics(tmp_path / "one", "train")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "two", "train")]
    assert len(la) == len(lb) == 4
    for a, b in zip(la, lb):
        assert a == pytest.approx(b, rel=1e-5)
