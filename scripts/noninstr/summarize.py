"""Markdown table of the non-instructional fine-tuning reproduction (docs/noninstructional.md).

Reads runs/noninstr/eval-<condition>[-s<seed>]/{ifeval,refll}/results.json; prints one row per condition with
the mean (and, with several seeds, the sample standard deviation and seed count) of every metric; --per-seed adds
one row per run.

  python scripts/noninstr/summarize.py [--root runs/noninstr] [--per-seed]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

CONDITIONS = [("base", "(0) no fine-tuning"), ("teacher", "(1) non-instructional, teacher"),
              ("gold", "(2) non-instructional, gold"), ("instr", "(3) instructions, equal tokens")]
METRICS = [("ifeval", "prompt_strict", "IFEval prompt strict"), ("ifeval", "prompt_loose", "prompt loose"),
           ("ifeval", "instruction_strict", "instr. strict"), ("ifeval", "instruction_loose", "instr. loose"),
           ("ifeval", "termination.well_terminated_rate", "well-terminated"),
           ("ifeval", "termination.mean_answer_tokens", "answer tokens"),
           ("refll", "mean_logprob", "ref. LL / token"), ("refll", "end_logprob", "end-of-turn LL")]


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/noninstr")
    ap.add_argument("--per-seed", action="store_true", help="also one row per seed")
    args = ap.parse_args()
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    runs: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for d in sorted(Path(args.root).glob("eval-*")):
        m = re.fullmatch(r"eval-(\w+?)(?:-s(\d+))?", d.name)
        if not m:
            continue
        for kind, key, label in METRICS:
            f = d / kind / "results.json"
            if f.is_file():
                v = float(get(json.loads(f.read_text())["metrics"], key))
                values[m.group(1)][label].append(v)
                runs[m.group(1)][m.group(2) or "–"][label] = v
    labels = [label for _, _, label in METRICS]
    print("| condition | seeds | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for cond, name in CONDITIONS:
        if cond not in values:
            continue
        seeds = max(len(v) for v in values[cond].values())
        cells = []
        for label in labels:
            v = values[cond].get(label, [])
            if not v:
                cells.append("–")
            elif len(v) == 1:
                cells.append(f"{v[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}")
        print(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
        if args.per_seed and seeds > 1:
            for seed, row in sorted(runs[cond].items()):
                print(f"| &nbsp;&nbsp;seed {seed} | 1 | " + " | ".join(f"{row[l]:.3f}" if l in row else "–"
                                                                   for l in labels) + " |")


if __name__ == "__main__":
    main()
