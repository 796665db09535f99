"""Head selection for steering: PASTA-style profiling vs one-pass attribution, on the same dev set and objective.

Runs, side by side on one model: (a) profiling (``--granularity head``: every head alone; ``layer``: every layer,
then the heads of the best ``--top-layers`` layers) and (b) one-pass attributions (gradient, attention-to-context,
AP). Prints/writes wall time, the Spearman correlation of each attribution with the profiled gains (over the heads
profiling evaluated), the top-k overlap (Jaccard) and each method's head set, plus the dev margin when steering
each selected set at ``--alpha`` (so selections are compared by what they do, not only by rank agreement).

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/steer_selection.py --model smollm2-135m-instruct \\
        --dev capitals --dev-n 32 --k 16 --alpha 0.01 --granularity layer --out runs/steer_selection
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tunelens.models import load_model
from tunelens.steer import steer
from tunelens.steer.devset import build_devset, load_dev_items
from tunelens.steer.select import attribute_heads, profile_heads


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3:
        return float("nan")
    ra, rb = (np.argsort(np.argsort(x[keep])) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def jaccard(a, b) -> float:
    sa, sb = set(a.pairs()), set(b.pairs())
    return len(sa & sb) / max(1, len(sa | sb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dev", default="capitals")
    ap.add_argument("--dev-n", type=int, default=32)
    ap.add_argument("--eval", default="capitals", help="held-out set to score each selection on")
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--variant", default="chat")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--granularity", default="layer", choices=["head", "layer"])
    ap.add_argument("--top-layers", type=int, default=4)
    ap.add_argument("--methods", default="gradient,attention,ap")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for every dev forward")
    ap.add_argument("--out", type=Path, default=Path("runs/steer_selection"))
    args = ap.parse_args()

    torch.manual_seed(0)
    model, tok = load_model(args.model)
    model.eval()
    items = load_dev_items(args.dev, args.dev_n)
    dev = build_devset(tok, items, args.variant, bf16=args.bf16)
    skip = args.dev_n if args.eval == args.dev else 0
    held = build_devset(tok, load_dev_items(args.eval, args.eval_n, skip=skip), args.variant, bf16=args.bf16)
    out: dict = {"model": args.model, "dev": args.dev, "dev_n": args.dev_n, "eval": args.eval,
                 "eval_n": args.eval_n, "eval_skip": skip, "k": args.k, "alpha": args.alpha,
                 "torch_threads": torch.get_num_threads(), "bf16": args.bf16, "methods": {}}
    sels = {}
    t = time.perf_counter()
    sels["profile"] = profile_heads(model, dev, alpha=args.alpha, k=args.k, granularity=args.granularity,
                                    top_layers=args.top_layers)
    prof_s = time.perf_counter() - t
    for m in [m for m in args.methods.split(",") if m]:
        sels[m] = attribute_heads(model, dev, method=m, k=args.k, tokenizer=tok, items=items)
    with torch.no_grad():
        base = float(held.margin(model))
        for name, sel in sels.items():
            steered = float(held.margin(model, lambda b, h=sel.heads: steer(model, b.highlight, heads=h,
                                                                             alpha=args.alpha)))
            rec = {"seconds": sel.settings["seconds"], "heads": sel.heads.to_json(),
                   "heldout_margin_gain": steered - base}
            if name != "profile":
                rec.update(spearman_vs_profile=spearman(sel.scores, sels["profile"].scores),
                           jaccard_topk_vs_profile=jaccard(sel.heads, sels["profile"].heads),
                           speedup_vs_profile=prof_s / max(sel.settings["seconds"], 1e-9))
            else:
                rec.update(runs=sel.settings["runs"], base_dev_margin=sel.settings["base_margin"])
            out["methods"][name] = rec
            sel.save(args.out / name)
        out["heldout_base_margin"] = base
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
