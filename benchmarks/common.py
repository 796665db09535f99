"""Shared helpers for tunelens benchmarks: machine facts, matmul peak, FLOP counting, step timing.

Nothing here imports tunelens' training code, so a benchmark can time tunelens and its peer with the
same rulers.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn


# --------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """CPU model name from lscpu (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags_of_interest() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return []
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx_vnni")
    return [f for f in wanted if f in flags]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "tunelens"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags_of_interest(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "versions": versions(),
        "loadavg_at_start": os.getloadavg(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                               "KMP_AFFINITY", "DNNL_MAX_CPU_ISA") if os.environ.get(k)},
    }


# ------------------------------------------------------------------------------------------ matmul peak
def matmul_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 30, warmup: int = 3) -> float:
    """Best-of-``repeats`` rate of an n x n x n ``torch.matmul`` in ``dtype`` (TFLOP/s, 2*n^3 flops)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12


# ------------------------------------------------------------------------------------------ FLOP model
@dataclass
class FlopModel:
    """FLOPs per input token of one training step (forward + backward).

    ``n_matmul``: weights of every linear projection the forward runs through, the LM head included even
    when it is tied to the embedding (its matmul runs; the embedding lookup is free); LoRA adapters are
    excluded. ``n_lora``: LoRA adapter weights (0 for full fine-tuning).

    * full FT: ``6 * n_matmul``  (2N forward, 2N activation grads, 2N weight grads)
    * LoRA:    ``4 * n_matmul + 6 * n_lora``  (frozen base: forward + activation grads only)
    * attention scores (QK^T and AV), reported separately: ``3 * 4 * layers * heads * head_dim * mean_ctx``
      where ``mean_ctx`` is the mean causal context per token within its document (packed documents do
      not attend to each other); the 3x (forward + 2x backward) holds for LoRA too, since both operands are
      activations.
    """

    mode: str
    n_matmul: int
    n_lora: int
    attn_per_token: float

    @property
    def dense_per_token(self) -> float:
        if self.mode == "full":
            return 6.0 * self.n_matmul
        return 4.0 * self.n_matmul + 6.0 * self.n_lora

    @property
    def total_per_token(self) -> float:
        return self.dense_per_token + self.attn_per_token

    def formula(self) -> str:
        if self.mode == "full":
            return f"6*N (N={self.n_matmul / 1e6:.2f}M matmul weights incl. LM head)"
        return (f"4*N_base + 6*N_lora (N_base={self.n_matmul / 1e6:.2f}M frozen matmul weights incl. LM head, "
                f"N_lora={self.n_lora / 1e6:.2f}M)")


def matmul_weight_count(model: nn.Module) -> tuple[int, int]:
    """(base linear weights, LoRA adapter weights) of ``model``; tied heads count (their matmul runs)."""
    base = lora = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if ".lora_" in name or name.startswith("lora_"):
            lora += mod.weight.numel()
        else:
            base += mod.weight.numel()
    return base, lora


def mean_causal_context(lengths: Iterable[int]) -> float:
    """Mean number of keys a query attends to under a causal mask, over all tokens of the documents."""
    num = den = 0
    for n in lengths:
        num += n * (n + 1) // 2
        den += n
    return num / max(den, 1)


def attention_flops_per_token(config: Any, mean_ctx: float) -> float:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 3.0 * 4.0 * cfg.num_hidden_layers * heads * head_dim * mean_ctx


# ------------------------------------------------------------------------------------------ step timing
def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have spent busy (non-idle) since boot, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            parts = fh.readline().split()[1:]
    except OSError:
        return float("nan")
    vals = [int(x) for x in parts[:8]]
    busy = sum(vals) - vals[3] - vals[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def others_cpu_now(interval: float = 1.0) -> float:
    """Cores busy over the next ``interval`` seconds (call it while this process is idle)."""
    b0, c0 = busy_cpu_seconds(), time.process_time()
    time.sleep(interval)
    return max(busy_cpu_seconds() - b0 - (time.process_time() - c0), 0.0) / interval


def wait_for_idle(max_wait: float, threshold: float = 0.15, quiet_for: int = 5) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores for ``quiet_for`` s in a row.

    Returns (seconds waited, cores the others used in the last second)."""
    t0, calm, last = time.perf_counter(), 0, 0.0
    while time.perf_counter() - t0 < max_wait:
        last = others_cpu_now(1.0)
        calm = calm + 1 if last < threshold else 0
        if calm >= quiet_for:
            break
    return time.perf_counter() - t0, last


@dataclass
class StepLog:
    """Wall-clock instants of step ends and tokens per step, plus process CPU time, filled by callbacks."""

    t_begin: float = 0.0
    cpu_begin: float = 0.0
    ends: list[float] = field(default_factory=list)  # perf_counter at each step end
    cpu: list[float] = field(default_factory=list)  # process_time at each step end
    tokens: list[int] = field(default_factory=list)  # input tokens (no padding) of each step
    loss: list[float] = field(default_factory=list)
    machine_busy: list[float] = field(default_factory=list)  # busy_cpu_seconds() at each step end
    machine_busy_begin: float = 0.0

    def begin(self) -> None:
        self.t_begin, self.cpu_begin = time.perf_counter(), time.process_time()
        self.machine_busy_begin = busy_cpu_seconds()

    def end(self, tokens: int | None = None, loss: float | None = None) -> None:
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.machine_busy.append(busy_cpu_seconds())
        if tokens is not None:
            self.tokens.append(int(tokens))
        if loss is not None:
            self.loss.append(float(loss))

    def durations(self) -> list[float]:
        starts = [self.t_begin] + self.ends[:-1]
        return [e - s for s, e in zip(starts, self.ends)]


@dataclass
class Throughput:
    steps_timed: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    median_step_s: float
    median_tokens_per_s: float
    cpu_s: float  # process CPU seconds over the timed steps
    tokens_per_cpu_s: float  # contention-robust with 1 thread (no spinning OpenMP workers)
    cpu_share: float  # process CPU seconds / (wall seconds * threads): < 1 means the CPU was shared
    others_cpu: float  # CPU seconds other processes used per wall second during the timed steps (0 = idle box)
    best_step_tokens_per_s: float  # tokens / duration of the fastest timed step
    step_s: list[float]


def summarise(log: StepLog, discard: int, threads: int) -> Throughput:
    """Throughput over the steps after the first ``discard`` (warm-up) steps."""
    d = log.durations()
    if len(d) <= discard:
        raise RuntimeError(f"only {len(d)} steps ran; need more than the {discard} warm-up steps")
    if len(log.tokens) != len(d):
        raise RuntimeError(f"{len(d)} step times but {len(log.tokens)} token counts")
    keep = d[discard:]
    toks = log.tokens[discard:]
    wall = sum(keep)
    cpu = log.cpu[-1] - (log.cpu[discard - 1] if discard >= 1 else log.cpu_begin)
    busy = log.machine_busy[-1] - (log.machine_busy[discard - 1] if discard >= 1 else log.machine_busy_begin)
    per = sorted(t / s for t, s in zip(toks, keep))
    return Throughput(
        steps_timed=len(keep), tokens=sum(toks), wall_s=wall, tokens_per_s=sum(toks) / wall,
        median_step_s=_median(keep), median_tokens_per_s=_median(per), cpu_s=cpu,
        tokens_per_cpu_s=sum(toks) / cpu if cpu > 0 else float("nan"), cpu_share=cpu / (wall * threads),
        others_cpu=max(busy - cpu, 0.0) / wall, best_step_tokens_per_s=per[-1],
        step_s=[round(x, 4) for x in d],
    )


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
