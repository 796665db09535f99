"""Pretrain the tiny-llama preset briefly on real prose so that alignment targets have a meaningful base rate.

The random preset samples near-uniform token soup (every word < 1%); after a few hundred steps on Gutenberg
prose its samples are English-like and common words have base rates of 1-20%. Used by docs/align.md and
benchmarks/align_speed.py. Deterministic (seeded); the result is an HF directory.

    PYTHONPATH=src python benchmarks/align_pretrain_tiny.py --out runs/tiny-prose [--steps 600]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tunelens.models import load_model, save_model
from tunelens.train.sft import seed_everything

PROSE = ["gutenberg_1342_pride_and_prejudice.txt", "gutenberg_11_alices_adventures_in_wonderland.txt",
         "gutenberg_84_frankenstein.txt"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "prose"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    seed_everything(args.seed)
    model, tok = load_model("tiny-llama", seed=args.seed)
    text = "\n".join((Path(args.data) / f).read_text(encoding="utf-8", errors="ignore") for f in PROSE)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    print(f"{len(ids)} tokens of prose")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * max(0.1, 1 - s / args.steps))
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - args.seq, (args.batch,), generator=g)
        x = torch.stack([ids[s:s + args.seq] for s in starts])
        x = torch.cat([torch.full((args.batch, 1), tok.bos_token_id), x], dim=1)  # samples start from BOS
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    print("saved", save_model(model, tok, Path(args.out)))


if __name__ == "__main__":
    main()
