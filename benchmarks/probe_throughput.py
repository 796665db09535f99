"""Probe throughput: tunelens' loglik conflicts scoring vs lm-evaluation-harness, and trajectory overhead.

Part 1: the same model, the same conflict items and the same prompt strings are scored (log-probability of
the context answer and of the memory answer after each prompt) by ``tunelens.probes.score_continuations``
(one pass over each prompt, both answers on its KV cache) and by lm-eval's ``HFLM.loglikelihood`` (one
pass per (prompt, answer) pair), in one run; prints items/s, the ratio and the agreement of the scores.

Part 2: a tiny SFT run with the trajectory probe every 50 steps vs the same run without it; prints the
share of training wall time spent in probes.

    python benchmarks/probe_throughput.py [--model smollm2-135m-instruct] [--items 100] [--bf16] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("CI", "true")  # no progress bars
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def part1(model_name: str, n_items: int, bf16: bool, batch_size: int) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tunelens.models import load_model
    from tunelens.probes.engine import ScoreRequest, score_continuations
    from tunelens.probes.items import load_conflicts
    from tunelens.probes.prompts import build_prompt
    from tunelens.probes.suites.common import continuation_ids
    from tunelens.probes.suites.conflicts import _parts, _prefix

    model, tok = load_model(model_name, dtype="bfloat16" if bf16 else "float32")
    items = load_conflicts("world_facts", limit=n_items)
    prompts = [build_prompt("raw", _parts(it), tok, response_prefix=_prefix("raw", it)) for it in items]
    reqs = [ScoreRequest(p.input_ids, [continuation_ids(tok, p, it.answer), continuation_ids(tok, p, it.memory_answer)])
            for p, it in zip(prompts, items)]
    score_continuations(model, reqs[:2], batch_size=batch_size, progress=False)  # warm-up
    t = time.perf_counter()
    ours = score_continuations(model, reqs, batch_size=batch_size, progress=False)
    t_ours = time.perf_counter() - t

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, add_bos_token=False)
    instances = []
    for i, (p, it) in enumerate(zip(prompts, items)):
        for ans in (it.answer, it.memory_answer):
            instances.append(Instance("loglikelihood", {}, (p.text, " " + ans.strip()), idx=i))
    lm.loglikelihood(instances[:4], disable_tqdm=True)  # warm-up
    t = time.perf_counter()
    theirs = lm.loglikelihood(instances, disable_tqdm=True)
    t_theirs = time.perf_counter() - t

    a = torch.tensor([float(x) for pair in ours for x in pair])
    b = torch.tensor([x[0] for x in theirs])
    same_pref = sum((float(o[0]) > float(o[1])) == (theirs[2 * i][0] > theirs[2 * i + 1][0])
                    for i, o in enumerate(ours)) / len(ours)
    return {"items": len(items), "tunelens_items_per_s": len(items) / t_ours,
            "lm_eval_items_per_s": len(items) / t_theirs, "ratio": t_theirs / t_ours,
            "max_abs_logprob_diff": float((a - b).abs().max()), "same_preference": same_pref}


def part2(every: int, steps: int, control: bool = True, probed_only: bool = False) -> dict:
    from tunelens.config import load_config
    from tunelens.probes.trajectory import trajectory_from_config
    from tunelens.train import SFTConfig, train_sft

    data = Path(__file__).resolve().parents[2] / "shared/data/instructions/alpaca_en_demo_llamafactory.json"
    base = ["model.spec=tiny-llama", f"data.paths=[{data}]", "data.max_length=256", f"max_steps={steps}",
            "save_every=0", "save_final_model=false", "tensorboard=false", "batch_size=4"]
    probes = {"suites": ["conflicts:world_facts"], "variants": ["chat"], "mode": "loglik", "limit": 50,
              "every": every, "bf16": True, "no_context_control": control}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("plain", []), ("probed", [trajectory_from_config(probes)])]
        for name, callbacks in runs[1:] if probed_only else runs:
            cfg = load_config(SFTConfig, None, base)
            t = time.perf_counter()
            train_sft(cfg, Path(tmp) / name, callbacks=callbacks)
            out[f"{name}_s"] = time.perf_counter() - t
        summary = json.loads((Path(tmp) / "probed" / "trajectory.json").read_text())
    # two measures: the probed run against the plain run (sensitive to load changing between the runs), and
    # the probes' own wall time inside the probed run against the rest of that run (robust to such drift)
    out["overhead"] = out["probed_s"] / out["plain_s"] - 1 if "plain_s" in out else float("nan")
    out["probe_s"] = summary["probe_seconds"]
    out["overhead_in_run"] = out["probe_s"] / (out["probed_s"] - out["probe_s"])
    out.update(every=every, steps=steps, probe_items=50, evaluations=len(summary["points"]), control=control)
    out.setdefault("plain_s", float("nan"))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bf16", action="store_true", help="bf16 weights for both sides")
    ap.add_argument("--steps", type=int, default=300, help="SFT steps for the trajectory-overhead run")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="tiny-llama, 20 items, 100 steps")
    ap.add_argument("--part", choices=["all", "loglik", "trajectory"], default="all",
                    help="run only the scoring comparison or only the trajectory-overhead run")
    ap.add_argument("--no-control", action="store_true", help="trajectory run without the no-context control")
    ap.add_argument("--probed-only", action="store_true",
                    help="trajectory: skip the plain run (report only the in-run share of probe time)")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.items, args.steps = "tiny-llama", 20, 100
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}")
    if args.part in ("all", "loglik"):
        report_part1(part1(args.model, args.items, args.bf16, args.batch_size))
    if args.part in ("all", "trajectory"):
        report_part2(part2(args.every, args.steps, control=not args.no_control, probed_only=args.probed_only))


def report_part1(r1: dict) -> None:
    print(f"[loglik conflicts] {r1['items']} items: tunelens {r1['tunelens_items_per_s']:.2f} items/s, "
          f"lm-eval HFLM {r1['lm_eval_items_per_s']:.2f} items/s, ratio {r1['ratio']:.2f}x "
          f"(target >= 3x); max |logprob diff| {r1['max_abs_logprob_diff']:.2e}, "
          f"same preference on {100 * r1['same_preference']:.0f}% of items")


def report_part2(r2: dict) -> None:
    print(f"[trajectory] {r2['steps']} SFT steps of tiny-llama: {r2['plain_s']:.1f} s plain, {r2['probed_s']:.1f} s "
          f"with conflicts probes ({r2['probe_items']} items, loglik, control={r2['control']}) every {r2['every']} steps: "
          f"overhead {100 * r2['overhead']:.1f}% run vs run; inside the probed run {r2['evaluations']} evaluations "
          f"took {r2['probe_s']:.1f} s = {100 * r2['overhead_in_run']:.1f}% of its training time (target <= 10%)")


if __name__ == "__main__":
    sys.exit(main())
