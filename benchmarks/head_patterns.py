"""One-pass head activation patterns vs a per-head ablation loop, on the same model and data.

The one-pass AP (``tunelens.heads.compute_patterns``, gate backend) takes one forward + backward per batch. The
peer a user would write instead scores heads by ablation: zero each head in turn and measure the response-loss
change (L×H forwards of the whole data set, plus a baseline). Both run side by side in this process; the script
prints wall and CPU-time ratios and how well the two importance rankings agree:

* ``|Δ|``: the loop's mean over samples of |ΔL_i| when the head is zeroed (the causal counterpart of AP, which
  is mean_i |∂L_i/∂ξ|, the first-order estimate of that change);
* ``signed``: the loop's mean ΔL vs −mean_i ∂L_i/∂ξ (first order: zeroing a head is ξ: 1 → 0).

Usage: ``python benchmarks/head_patterns.py --model smollm2-135m-instruct --n 16 --max-length 128``
(``--json FILE`` writes the figures; ``--eager`` also times the eager reference backend).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info

from tunelens.data import load_examples
from tunelens.heads import (
    ablate_heads,
    as_batches,
    compute_patterns,
    find_head_sites,
    response_loss,
)
from tunelens.heads.stats import pearson, spearman, topk_jaccard
from tunelens.models import load_model

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instructions" / "alpaca_en_demo_llamafactory.json"


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def ablation_loop(model, batches, layers: list[int], n_heads: int, bf16: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean |Δ sample loss|, mean Δ sample loss) per head of ``layers``, and the baseline loss: 1 + len(layers)×H
    loss passes."""
    base = np.array(response_loss(model, batches, bf16=bf16)["sample_losses"])
    start = time.perf_counter()
    abs_d, signed = np.zeros((len(layers), n_heads)), np.zeros((len(layers), n_heads))
    for i, layer in enumerate(layers):
        for head in range(n_heads):
            with ablate_heads(model, [(layer, head)]):
                d = np.array(response_loss(model, batches, bf16=bf16)["sample_losses"]) - base
            abs_d[i, head], signed[i, head] = np.abs(d).mean(), d.mean()
        print(f"  loop: layer {layer} done ({i + 1}/{len(layers)}, {time.perf_counter() - start:.0f} s)", flush=True)
    return abs_d, signed, float(base.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(ALPACA))
    ap.add_argument("--n", type=int, default=16, help="samples")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (AMX CPUs)")
    ap.add_argument("--eager", action="store_true", help="also time the eager reference backend")
    ap.add_argument("--loop-every", type=int, default=1,
                    help="run the ablation loop on every K-th layer only (time is extrapolated to all L×H heads: "
                         "every pass costs the same forward; agreement is on the heads looped)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()  # load average at the start
    model, tok = load_model(args.model)
    examples = load_examples(args.data, limit=args.n).examples
    batches = as_batches(examples, tok, batch_size=args.batch_size, max_length=args.max_length)
    sites = find_head_sites(model)
    n_layers, n_heads = len(sites), sites[0].num_heads
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"{args.model}: {n_layers} layers x {n_heads} heads; {args.n} samples, {n_tokens} tokens, "
          f"{len(batches)} batches; threads {torch.get_num_threads()}", flush=True)

    compute_patterns(model, tok, batches[:1], bf16=args.bf16, progress=False)  # warm-up (allocator, oneDNN)
    with Timer() as t_ap:
        pat = compute_patterns(model, tok, batches, bf16=args.bf16, progress=False)
    print(f"one-pass AP: {t_ap.wall:.1f} s wall, {t_ap.cpu:.1f} s CPU", flush=True)
    eager = None
    if args.eager:
        with Timer() as t_eager:
            ref = compute_patterns(model, tok, batches, backend="eager", bf16=args.bf16, progress=False)
        eager = {"wall_s": t_eager.wall, "cpu_s": t_eager.cpu,
                 "max_abs_diff_vs_gate": float(np.abs(ref.per_sample - pat.per_sample).max()),
                 "max_ap": float(pat.matrix.max())}
        print(f"eager reference AP: {t_eager.wall:.1f} s wall; max |diff| vs gate {eager['max_abs_diff_vs_gate']:.2e}"
              f" (fp32; max AP {eager['max_ap']:.3g})", flush=True)
    layers = list(range(0, n_layers, args.loop_every))
    passes, full_passes = len(layers) * n_heads + 1, n_layers * n_heads + 1
    with Timer() as t_loop:
        loop_abs, loop_signed, base_loss = ablation_loop(model, batches, layers, n_heads, args.bf16)
    print(f"ablation loop ({passes} passes of {full_passes}): {t_loop.wall:.1f} s wall, {t_loop.cpu:.1f} s CPU")
    scale = full_passes / passes  # the loop over every head, from the measured cost per pass
    ap_m, ap_s = pat.matrix[layers], pat.signed[layers]
    n = ap_m.size
    agreement = {"heads_compared": n, "spearman_abs": spearman(ap_m, loop_abs), "pearson_abs": pearson(ap_m, loop_abs),
                 "spearman_signed": spearman(-ap_s, loop_signed), "pearson_signed": pearson(-ap_s, loop_signed)}
    for k in sorted({5, 10, 20, n // 10} - {0, 1}):
        if k < n:
            agreement[f"jaccard@{k}"] = topk_jaccard(ap_m, loop_abs, k)
    result = {"model": args.model, "layers": n_layers, "heads": n_heads, "samples": args.n, "tokens": n_tokens,
              "max_length": args.max_length, "batch_size": args.batch_size, "bf16": args.bf16, "baseline_loss": base_loss,
              "ap": {"wall_s": t_ap.wall, "cpu_s": t_ap.cpu},
              "loop": {"wall_s": t_loop.wall, "cpu_s": t_loop.cpu, "passes": passes, "full_passes": full_passes,
                       "layers": layers, "full_wall_s": t_loop.wall * scale, "full_cpu_s": t_loop.cpu * scale},
              "speedup_wall": t_loop.wall * scale / t_ap.wall, "speedup_cpu": t_loop.cpu * scale / t_ap.cpu,
              "extrapolated": passes != full_passes, "eager": eager,
              "agreement": agreement, "machine": machine, "loadavg_at_end": os.getloadavg()}
    how = f" (loop time extrapolated from {passes} to {full_passes} passes)" if result["extrapolated"] else ""
    print(f"speed-up of one-pass AP over the ablation loop: {result['speedup_wall']:.1f}x wall, "
          f"{result['speedup_cpu']:.1f}x CPU time (target >= 20x){how}")
    print("agreement: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in agreement.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
