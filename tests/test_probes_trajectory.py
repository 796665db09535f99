"""Probes along training: logging at step 0 and every N, summary, peak checkpoint, early stop, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelens.config import load_config
from tunelens.errors import ConfigError
from tunelens.probes.trajectory import TrajectoryCallback, TrajectoryOptions, trajectory_from_config
from tunelens.train import SFTConfig, read_metrics, train_sft

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA = SHARED / "instructions" / "alpaca_en_demo_llamafactory.json"
pytestmark = pytest.mark.skipif(not ALPACA.is_file(), reason="../shared/data not present")

CURVE = {0: 0.30, 2: 0.60, 4: 0.80, 6: 0.55, 8: 0.40, 10: 0.35, 12: 0.30}


def cfg(**over) -> SFTConfig:
    base = ["model.spec=tiny-llama", f"data.paths=[{ALPACA}]", "data.max_length=64", "data.limit=24",
            "batch_size=2", "max_steps=12", "save_every=0", "precision=fp32", "tensorboard=false"]
    return load_config(SFTConfig, None, base + [f"{k}={v}" for k, v in over.items()])


class FakeProbe:
    """A reliance curve that rises then falls: the shape of context-parametric inversion."""

    def __init__(self):
        self.steps: list[int] = []

    def __call__(self, model, tokenizer):
        step = len(self.steps) * 2
        self.steps.append(step)
        return {"ctx": CURVE[step], "other": 1.0 - CURVE[step]}


def test_summary_peak_final_inversion_and_peak_checkpoint(tmp_path):
    probe = FakeProbe()
    cb = TrajectoryCallback(probe, TrajectoryOptions(every=2, track=["ctx"], threshold=0.2, keep_peak=True))
    train_sft(cfg(), tmp_path / "run", callbacks=[cb])
    assert probe.steps == [0, 2, 4, 6, 8, 10, 12]
    logged = read_metrics(tmp_path / "run", "probe")
    assert [r["step"] for r in logged] == [0, 2, 4, 6, 8, 10, 12]
    summary = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    s = summary["metrics"]["ctx"]
    assert s["peak"] == pytest.approx(0.8) and s["step_of_peak"] == 4
    assert s["final"] == pytest.approx(0.3) and s["inversion"] == pytest.approx(0.5) and s["inverted"]
    assert json.loads((tmp_path / "run" / "peak" / "peak.json").read_text())["step"] == 4
    # the probes' own wall time is recorded per evaluation and summed (the training-overhead figure)
    assert all(r["probe_seconds"] >= 0 for r in logged)
    assert summary["probe_seconds"] == pytest.approx(sum(p["seconds"] for p in summary["points"]))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "peak")


def test_early_stop_after_reliance_falls(tmp_path):
    probe = FakeProbe()
    opts = TrajectoryOptions(every=2, track=["ctx"], early_stop_drop=0.2, early_stop_patience=2)
    res = train_sft(cfg(), tmp_path / "run", callbacks=[TrajectoryCallback(probe, opts)])
    # peak 0.8 at step 4; 0.55 (step 6) and 0.40 (step 8) are both >= 0.2 below: stop after step 8
    assert res.steps == 8 and res.stopped_early
    assert probe.steps == [0, 2, 4, 6, 8]
    assert read_metrics(tmp_path / "run", "trajectory")[0]["early_stop"] == 1


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="suites is empty"):
        trajectory_from_config({"every": 5})
    with pytest.raises(ConfigError, match="Unknown probes key"):
        trajectory_from_config({"suites": ["conflicts:world_facts"], "evrey": 5})
    with pytest.raises(ConfigError, match="Unknown probe suite"):
        trajectory_from_config({"suites": ["conflict:world_facts"]})


def test_cli_sft_with_real_probes_writes_trajectory_and_plot(tmp_path):
    recipe = {"model": {"spec": "tiny-llama"}, "data": {"paths": [str(ALPACA)], "max_length": 64, "limit": 16},
              "batch_size": 2, "max_steps": 4, "save_every": 0, "precision": "fp32",
              "probes": {"suites": ["conflicts:world_facts"], "variants": ["chat"], "mode": "loglik", "limit": 4,
                         "every": 2, "track": ["conflicts:world_facts/chat/ctx_pref_rate"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "tunelens.cli.main", "sft", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probes = read_metrics(tmp_path / "run", "probe")
    assert [r["step"] for r in probes] == [0, 2, 4]
    key = "conflicts:world_facts/chat/ctx_pref_rate"
    assert all(0.0 <= r[key] <= 1.0 for r in probes)
    summary = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    assert set(summary["metrics"]) == {key}
    assert (tmp_path / "run" / "trajectory.png").stat().st_size > 1000
    assert "inversion" in proc.stdout
