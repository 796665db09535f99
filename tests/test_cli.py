"""End-to-end: the real ``tunelens`` CLI in a subprocess (CI=true, offline) on real data and tiny presets.

Covers ``tunelens models``, ``tunelens data show --format json`` and ``tunelens sft`` (run directory, resume,
refusing a changed config, --force) and how user errors are reported (exit 2, one paragraph, no traceback
unless --debug).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

PRESETS = ("tiny-llama", "small-llama", "tiny-gpt2", "tiny-gemma3", "smollm2-135m-instruct")


def tiny_sft_yaml(path: Path, data: Path, **top: object) -> Path:
    """A 6-step SFT recipe of tiny-llama on the first 64 Alpaca records, checkpoints every 3 steps."""
    cfg = {
        "model": {"spec": "tiny-llama", "seed": 0},
        "data": {"paths": [str(data)], "max_length": 128, "limit": 64},
        "batch_size": 2,
        "max_steps": 6,
        "save_every": 3,
        "precision": "bf16",
        "optim": {"lr": 1.0e-3, "warmup_steps": 1},
    }
    cfg.update(top)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def train_records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "train"]


def assert_user_error(proc, *needles: str) -> None:
    """Exit status 2, an 'error:' paragraph on stderr naming ``needles``, and no traceback anywhere."""
    assert proc.returncode == 2, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    err = proc.stderr.strip()
    assert err.startswith("error:"), err
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert "\n\n" not in err, f"expected one paragraph, got:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"


# --------------------------------------------------------------------------- tunelens models / data show
def test_models_lists_presets(run_cli):
    proc = run_cli("models", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    for name in PRESETS:
        assert name in proc.stdout, f"{name} missing from:\n{proc.stdout}"
    assert "random" in proc.stdout and "wheel" in proc.stdout


def test_data_show_json_marks_only_the_answer_and_end_of_turn(run_cli, alpaca_path):
    proc = run_cli("data", "show", alpaca_path, "--format", "json", "-n", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    records = json.loads(alpaca_path.read_text(encoding="utf-8"))[:2]
    for line, rec in zip(lines, records):
        obj = json.loads(line)
        assert set(obj) == {"text", "tokens", "trained", "trained_text"}
        assert len(obj["tokens"]) == len(obj["trained"]) > 0
        assert set(obj["trained"]) <= {0, 1} and 0 < sum(obj["trained"]) < len(obj["trained"])
        assert rec["instruction"] in obj["text"] and rec["output"] in obj["text"]
        runs = obj["trained_text"]
        assert len(runs) == 1, runs  # one assistant turn -> one contiguous trained run
        assert runs[0].endswith("<|im_end|>"), runs[0][-40:]
        assert rec["output"].strip() in runs[0]
        assert rec["instruction"] not in runs[0] and "<|im_start|>" not in runs[0]  # the prompt is never trained


# --------------------------------------------------------------------------- tunelens sft
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, alpaca_path, run_cli):
    """One 6-step CLI run shared by the sft tests (each test works on its own copy)."""
    root = tmp_path_factory.mktemp("sft")
    cfg = tiny_sft_yaml(root / "tiny.yaml", alpaca_path)
    out = root / "run"
    proc = run_cli("sft", cfg, "--out", out)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return cfg, out, proc


def copy_run(finished_run, tmp_path: Path) -> tuple[Path, Path]:
    cfg, out, _ = finished_run
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return cfg, dst


def test_sft_writes_a_complete_run_dir(finished_run):
    cfg, out, proc = finished_run
    assert '"steps": 6' in proc.stdout  # the printed result (summary.json holds the same)
    result = json.loads((out / "summary.json").read_text())
    assert result["steps"] == 6 and result["resumed_from"] is None and result["tokens_trained"] > 0
    assert Path(result["final_model"]).resolve() == (out / "final").resolve()
    for name in ("config.yaml", "environment.json", "data_report.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 6 and saved["data"]["max_length"] == 128 and saved["optim"]["lr"] == 1e-3

    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["tokens"] > 0 for r in records)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3", "step-6"]
    assert (out / "checkpoints" / "step-6" / "trainer_state.json").is_file()
    report = json.loads((out / "data_report.json").read_text())
    assert report["load"]["n_examples"] == 64 and report["total_steps"] == 6

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a fruit."}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 5


def test_rerunning_the_same_command_resumes(finished_run, tmp_path, run_cli):
    cfg, out = copy_run(finished_run, tmp_path)
    proc = run_cli("sft", cfg, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from step 6" in proc.stdout
    assert [r["step"] for r in train_records(out)] == [1, 2, 3, 4, 5, 6]  # nothing re-run, nothing duplicated
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 6


def test_changed_config_is_refused_then_accepted_with_force(finished_run, tmp_path, run_cli):
    cfg, out = copy_run(finished_run, tmp_path)
    refused = run_cli("sft", cfg, "--out", out, "optim.lr=0.01")
    assert_user_error(refused, "different config", "optim.lr", "--force")
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3  # untouched

    forced = run_cli("sft", cfg, "--out", out, "optim.lr=0.01", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "resumed from step 6" in forced.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.01


# --------------------------------------------------------------------------- user errors
def _missing_data(tmp: Path, alpaca: Path):
    return [tiny_sft_yaml(tmp / "c.yaml", tmp / "no-such-file.jsonl")], ["no-such-file.jsonl"]


def _unknown_preset(tmp: Path, alpaca: Path):
    return [tiny_sft_yaml(tmp / "c.yaml", alpaca), "model.spec=tiny-lama"], ["tiny-lama", "tiny-llama"]


def _bogus_key(tmp: Path, alpaca: Path):
    return [tiny_sft_yaml(tmp / "c.yaml", alpaca), "bogus=1"], ["bogus"]


def _bad_yaml(tmp: Path, alpaca: Path):
    bad = tmp / "bad.yaml"
    bad.write_text("model:\n  spec: [tiny-llama\ndata: {paths: [x]\n", encoding="utf-8")
    return [bad], ["bad.yaml", "YAML"]


def _bogus_key_debug(tmp: Path, alpaca: Path):
    return [tiny_sft_yaml(tmp / "c.yaml", alpaca), "bogus=1", "--debug"], ["bogus"]


ERROR_CASES = {"missing-data-file": _missing_data, "unknown-preset": _unknown_preset, "bogus-key": _bogus_key,
               "bad-yaml": _bad_yaml, "debug": _bogus_key_debug}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory, alpaca_path, start_cli):
    """Every error case's CLI process, started together (each mostly waits on imports) and collected."""
    procs = {}
    for name, case in ERROR_CASES.items():
        tmp = tmp_path_factory.mktemp(name)
        args, needles = case(tmp, alpaca_path)
        procs[name] = (start_cli("sft", *args, "--out", tmp / "run"), needles)
    done = {}
    for name, (proc, needles) in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), needles)
    return done


@pytest.mark.parametrize("case", ["missing-data-file", "unknown-preset", "bogus-key", "bad-yaml"])
def test_user_errors_exit_2_without_traceback(case, error_runs):
    proc, needles = error_runs[case]
    assert_user_error(proc, *needles)


def test_debug_shows_the_traceback(error_runs):
    proc, needles = error_runs["debug"]
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr and "bogus" in proc.stderr
