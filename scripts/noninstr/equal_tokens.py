"""Pick real instruction data with the same token count as a set of non-instructional pairs (condition 3).

Both sides are counted as the SFT loop sees them: each conversation rendered with the student's chat template
(tunelens.chat.render, the fallback template for a base model), all tokens. Instruction records (Alpaca-style
JSON: instruction/input/output) are shuffled with a seed, records longer than --max-length are skipped (they
would be truncated in training), and records are taken until the total reaches the pairs' total.

  python scripts/noninstr/equal_tokens.py --pairs runs/noninstr/pairs-gold/pairs.jsonl \
      --instructions ../shared/data/instructions/alpaca_en_demo_llamafactory.json \
      --model gemma3-270m --max-length 192 --seed 0 --out runs/noninstr/instr-equal.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from transformers import AutoTokenizer

from tunelens.chat import render
from tunelens.models import load_model
from tunelens.models.gguf import cache_root


def load_tokenizer(spec: str):
    """The tokenizer alone when the model is a directory or an already converted GGUF preset (no weights
    loaded: this runs on a busy machine), else through load_model."""
    cached = sorted((cache_root() / "models").glob(f"{spec}-*/tokenizer.json"))
    path = Path(spec) if Path(spec).is_dir() else cached[-1].parent if cached else None
    if path is not None:
        return AutoTokenizer.from_pretrained(path)
    return load_model(spec)[1]


def alpaca_messages(rec: dict) -> list[dict[str, str]]:
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True, nargs="+", help="messages JSONL whose token count to match (max)")
    ap.add_argument("--instructions", required=True)
    ap.add_argument("--model", required=True, help="the student (its tokenizer and chat template count)")
    ap.add_argument("--max-length", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tok = load_tokenizer(args.model)

    def count(messages: list[dict[str, str]]) -> tuple[int, int]:
        r = render(messages, tok)
        return len(r.input_ids), sum(r.trained_mask)

    totals = {}
    for path in args.pairs:
        rows = [json.loads(line)["messages"] for line in open(path, encoding="utf-8") if line.strip()]
        counts = [count(m) for m in rows]
        totals[path] = {"records": len(rows), "tokens": sum(c[0] for c in counts),
                        "trained_tokens": sum(c[1] for c in counts)}
    target = max(t["tokens"] for t in totals.values())
    records = json.loads(Path(args.instructions).read_text(encoding="utf-8"))
    random.Random(args.seed).shuffle(records)
    chosen, total, trained, skipped = [], 0, 0, 0
    for rec in records:
        if total >= target:
            break
        msgs = alpaca_messages(rec)
        n, t = count(msgs)
        if n > args.max_length:
            skipped += 1
            continue
        chosen.append({"messages": msgs})
        total, trained = total + n, trained + t
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for rec in chosen:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    summary = {"pairs": totals, "target_tokens": target, "instructions": {"records": len(chosen), "tokens": total,
               "trained_tokens": trained, "skipped_longer_than_max_length": skipped}, "seed": args.seed}
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
