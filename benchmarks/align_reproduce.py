"""f-DPG loss comparison (Go et al. 2023's qualitative claim) on a small locally trained model, several seeds.

Runs ``train_align`` for every (loss, seed) with the same recipe and number of samples, then prints and writes a
table of alignment, KL(p‖π), JS(π‖p), KL(π‖a) and Distinct-2 at the end (mean ± sd over seeds).

    PYTHONPATH=src python benchmarks/align_reproduce.py configs/align-prose-pointwise.yaml --out runs/repro \
        --losses fkl rkl js tv --seeds 0 1 2 [--set key=value ...] [--per-loss fkl:optim.lr=3e-4 ...]
    PYTHONPATH=src python benchmarks/align_reproduce.py --merge runs/repro-a runs/repro-b   # one table of both

``--per-loss LOSS:key=value`` applies an override to one loss only (e.g. the learning rate each loss was tuned
to); the number of steps and samples must stay equal across losses for the comparison to mean anything.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tunelens.align import AlignConfig, train_align
from tunelens.config import load_config

KEYS = ["rate/all_constraints", "kl_p_pi_base", "kl_p_pi", "js", "tv", "kl_pi_a", "distinct_2", "self_bleu",
        "entropy_per_token"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--out")
    ap.add_argument("--merge", nargs="+", help="only print the table of these earlier --out directories together")
    ap.add_argument("--losses", nargs="+", default=["fkl", "rkl", "js", "tv"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="config overrides key=value")
    ap.add_argument("--per-loss", nargs="*", default=[], help="LOSS:key=value overrides for one loss")
    args = ap.parse_args()
    if args.merge:
        rows = {}
        for d in args.merge:
            rows.update(json.loads((Path(d) / "results.json").read_text()))
        print(table(rows, list(dict.fromkeys(r["loss"] for r in rows.values()))))
        return
    if not (args.config and args.out):
        ap.error("config and --out are required (unless --merge)")
    per_loss: dict[str, list[str]] = {}
    for item in args.per_loss:
        loss, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            ap.error(f"--per-loss expects LOSS:key=value, got {item!r}")
        per_loss.setdefault(loss, []).append(kv)
    out = Path(args.out)
    rows = {}
    for loss in args.losses:
        for seed in args.seeds:
            run = out / f"{loss}-s{seed}"
            cfg = load_config(AlignConfig, args.config,
                              [*args.overrides, *per_loss.get(loss, []), f"loss={loss}", f"seed={seed}"])
            res = train_align(cfg, run)
            rows[f"{loss}-s{seed}"] = {"loss": loss, "seed": seed, "lr": cfg.optim.lr, "initial": res.initial,
                                       "final": res.final,
                                       "samples": res.samples_seen, "wall_s": res.wall_s}
            (out / "results.json").write_text(json.dumps(rows, indent=2, default=float))
            print(loss, seed, {k: round(res.final.get(k, float("nan")), 4) for k in KEYS}, flush=True)
    print(table(rows, args.losses))


def table(rows: dict, losses: list[str]) -> str:
    """Markdown: the base at step 0 and every loss at the end, mean ± sd over seeds."""
    lines = ["| loss | lr | seeds | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 3) + "|"]
    base = [r["initial"] for r in rows.values()]
    lines.append("| base (step 0) | – | – | " + " | ".join(_fmt([b.get(k, float("nan")) for b in base]) for k in KEYS)
                 + " |")
    for loss in losses:
        mine = [r for r in rows.values() if r["loss"] == loss]
        fin = [r["final"] for r in mine]
        lrs = sorted({r.get("lr") for r in mine}, key=str)
        lines.append(f"| {loss} | {', '.join(f'{x:g}' for x in lrs if x is not None)} | {len(mine)} | "
                     + " | ".join(_fmt([f.get(k, float("nan")) for f in fin]) for k in KEYS) + " |")
    return "\n".join(lines)


def _fmt(v: list[float]) -> str:
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


if __name__ == "__main__":
    main()
