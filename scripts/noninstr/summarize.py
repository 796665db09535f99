"""Markdown table of the non-instructional fine-tuning reproduction (docs/noninstructional.md).

Reads runs/noninstr/eval-<condition>[-s<seed>]/{ifeval,refll}/results.json; prints one row per condition with
the mean (and, with several seeds, the sample standard deviation and seed count) of every metric; --per-seed adds
one row per run. "distinct 3-grams" is computed here from the IFEval answers (ifeval/records/ifeval.jsonl): the
share of an answer's word trigrams that are distinct, averaged over answers (1 = no repeated trigram; an answer
that loops one sentence scores low).

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
           ("refll", "mean_logprob", "ref. LL / token"),
           ("refll", "token_weighted_logprob", "ref. LL token-weighted"),
           ("refll", "end_logprob", "end-of-turn LL")]
DISTINCT = "distinct 3-grams"


def distinct_trigrams(records: Path) -> float:
    """Mean over answers of (distinct word trigrams / word trigrams); answers under 3 words count as 1."""
    ratios = []
    for line in records.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        words = json.loads(line)["response"].split()
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        ratios.append(len(set(grams)) / len(grams) if grams else 1.0)
    return statistics.mean(ratios) if ratios else float("nan")


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
        rec = d / "ifeval" / "records" / "ifeval.jsonl"
        if rec.is_file():
            v = distinct_trigrams(rec)
            values[m.group(1)][DISTINCT].append(v)
            runs[m.group(1)][m.group(2) or "–"][DISTINCT] = v
    labels = [label for _, _, label in METRICS] + [DISTINCT]
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
