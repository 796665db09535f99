"""Held-out evaluation sets for the head activation-pattern comparison (docs/noninstructional.md, "Beyond the
paper"): one of prose pairs, one of instructions, neither seen in training by any condition.

* prose: pairs from a second gold synth run (another sampling seed) whose passage is not among the training
  passages (conditions (1) and (2) train on the same passages, so one exclusion list serves both);
* instructions: Alpaca records that are not in condition (3)'s training file and fit --max-length under the
  student's template (so no response is cut off), in a seeded random order.

  python scripts/noninstr/heads_probes.py --prose runs/noninstr/heads/prose-s1/pairs.jsonl \
      --train-pairs runs/noninstr/pairs-gold/pairs.jsonl --train-instr runs/noninstr/instr-equal.jsonl \
      --instructions ../shared/data/instructions/alpaca_en_demo_llamafactory.json --model gemma3-270m \
      --n 32 --max-length 192 --seed 0 --out runs/noninstr/heads
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from equal_tokens import alpaca_messages, load_tokenizer

from tunelens.chat import render


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def held_out_prose(prose: str, train_pairs: list[str], n: int) -> tuple[list[dict], int]:
    """The first n pairs of ``prose`` whose passage is in none of ``train_pairs``; also how many were excluded."""
    seen = {r["provenance"]["passage_id"] for p in train_pairs for r in read_jsonl(p)}
    rows = read_jsonl(prose)
    kept = [{"messages": r["messages"], "provenance": r["provenance"]} for r in rows
            if r["provenance"]["passage_id"] not in seen]
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} held-out prose pairs in {prose}; make more (max_pairs=...)")
    return kept[:n], len(rows) - len(kept)


def held_out_instructions(path: str, train: str, tok, n: int, max_length: int, seed: int) -> tuple[list[dict], dict]:
    """n Alpaca records absent from the training file ``train`` and no longer than ``max_length`` tokens."""
    used = {json.dumps(r["messages"], sort_keys=True) for r in read_jsonl(train)}
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    random.Random(seed).shuffle(records)
    chosen, counts = [], {"in_training": 0, "too_long": 0}
    for rec in records:
        if len(chosen) == n:
            break
        msgs = alpaca_messages(rec)
        if json.dumps(msgs, sort_keys=True) in used:
            counts["in_training"] += 1
        elif len(render(msgs, tok).input_ids) > max_length:
            counts["too_long"] += 1
        else:
            chosen.append({"messages": msgs})
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} held-out instruction records fit")
    return chosen, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prose", required=True, help="pairs.jsonl of a gold synth run with another seed")
    ap.add_argument("--train-pairs", required=True, nargs="+", help="training pairs of conditions (1)/(2)")
    ap.add_argument("--train-instr", required=True, help="training file of condition (3)")
    ap.add_argument("--instructions", required=True)
    ap.add_argument("--model", required=True, help="the student (its template decides the length filter)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="directory for probe-prose.jsonl and probe-instr.jsonl")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prose, excluded = held_out_prose(args.prose, args.train_pairs, args.n)
    instr, counts = held_out_instructions(args.instructions, args.train_instr, load_tokenizer(args.model), args.n,
                                          args.max_length, args.seed)
    write_jsonl(prose, out / "probe-prose.jsonl")
    write_jsonl(instr, out / "probe-instr.jsonl")
    summary = {"prose": {"n": len(prose), "excluded_training_passages": excluded, "from": args.prose},
               "instr": {"n": len(instr), "skipped": counts, "from": args.instructions}}
    (out / "probes.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
