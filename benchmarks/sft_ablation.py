#!/usr/bin/env python
"""Where does tunelens' SFT step time go? Interleaved A/B timing of variants of one training step.

Replays the body of a ``tunelens.train.sft.train_sft`` step (collate -> bf16-autocast forward -> fp32
token loss -> backward -> grad clipping -> AdamW step -> zero_grad) on the real packed Alpaca rows, with
one knob changed per variant. The variants run round-robin on the *same* batches (round r: every
variant runs batch r), so a burst of load from other processes hits all of them alike. Reported per
variant: minimum and median wall time per step, and median process CPU seconds per step. With
``--threads 1`` the CPU seconds are close to the step time on an idle core and barely move when other
processes share the machine: on a busy machine they are the figure to compare.

Variants (``--variants``, comma list):
  current      what sft.py does (rows padded to max_length, torch.optim.AdamW defaults, fp32 upcast of
               all logits before the cross-entropy)
  varlen       rows padded only to the longest row of the batch (sft.py before fixed-width batches)
  fused        AdamW(fused=True)
  compile      torch.compile(model) (inductor, dynamic=False); compile time printed separately
  patch        fused + compile: what benchmarks/proposals/sft_speed.patch does with compile=True
  ce_sel       LM head + fp32 cross-entropy only on positions that have a label (hidden states gathered)
  ce_chunk     fp32 cross-entropy in chunks of 1024 positions (all logits still computed)
  frozen_bf16  LoRA: frozen linear weights inside the decoder layers stored in bf16 once (autocast casts them
               to bf16 for every matmul anyway, so matmul numerics are unchanged); embeddings, norms, LM head
               and adapters stay fp32

Usage: python benchmarks/sft_ablation.py --spec small-llama --mode full --threads 1 --rounds 6
       python benchmarks/sft_ablation.py --spec smollm2-135m-instruct --mode lora --threads 1 --rounds 4
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TUNELENS_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DATA = "/work/shared/data/instructions/alpaca_en_demo_llamafactory.json"
FUSED = {"fused", "patch"}
COMPILED = {"compile", "patch"}


def build(spec: str, mode: str, seq_len: int):
    from tunelens.data import load_examples, pack_examples, tokenize_examples
    from tunelens.models import LoraSettings, apply_finetune_mode, load_model

    model, tok = load_model(spec, dtype="float32", attn_implementation="sdpa", seed=0)
    model = apply_finetune_mode(model, mode, LoraSettings())
    loaded = load_examples([DATA], schema="alpaca")
    ex, _ = tokenize_examples(loaded.examples, tok, max_length=seq_len, train_on="assistant", truncation="right")
    return model, tok, pack_examples(ex, seq_len)


def step(variant: str, model, opt, rows_b, pad_id: int, seq_len: int, chunk: int = 1024) -> int:
    from tunelens.data import collate_packed
    from tunelens.train.sft import token_loss_sum

    b = collate_packed(rows_b, pad_id, pad_to=None if variant == "varlen" else seq_len)
    labels = b.pop("labels")
    model.train()
    if variant == "ce_sel":
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = base.model(**b, use_cache=False).last_hidden_state
            tgt = labels[:, 1:]
            keep = tgt != -100
            logits = base.get_output_embeddings()(h[:, :-1][keep])
        ce = F.cross_entropy(logits.float(), tgt[keep], reduction="sum")
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**b, use_cache=False).logits
        if variant == "ce_chunk":
            flat = logits[:, :-1].reshape(-1, logits.size(-1))
            tgt = labels[:, 1:].reshape(-1)
            ce = sum(F.cross_entropy(flat[i:i + chunk].float(), tgt[i:i + chunk], ignore_index=-100, reduction="sum")
                     for i in range(0, flat.size(0), chunk))
        else:
            ce = token_loss_sum(logits, labels)
    n = max(int((labels[:, 1:] != -100).sum()), 1)
    (ce / n).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return sum(len(r) for r in rows_b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="small-llama")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="current,varlen,fused,compile,patch")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    if a.threads:
        torch.set_num_threads(a.threads)
    from tunelens.models import trainable_parameters
    from tunelens.train.batches import BatchPlan

    model, tok, rows = build(a.spec, a.mode, a.seq_len)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    plan = BatchPlan(len(rows), a.batch, 1, 1, 0)
    batch_of = lambda r: [rows[i] for i in plan.micro_batches(r, 0)[0]]  # noqa: E731

    runners = {}
    for v in variants:
        m = model
        if v == "frozen_bf16":
            m = copy.deepcopy(model)
            head, n = m.get_output_embeddings(), 0
            for mod in m.modules():
                if isinstance(mod, torch.nn.Linear) and mod is not head and not mod.weight.requires_grad:
                    mod.weight.data = mod.weight.data.to(torch.bfloat16)
                    n += mod.weight.numel()
            print(f"frozen_bf16: {n / 1e6:.1f}M frozen linear weights stored in bf16", flush=True)
        opt = torch.optim.AdamW(trainable_parameters(m), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                **({"fused": True} if v in FUSED else {}))
        if v in COMPILED:
            m = torch.compile(m, dynamic=False)
            t = time.perf_counter()
            step("current", m, opt, batch_of(0), tok.pad_token_id, a.seq_len)
            print(f"{v}: first step incl. compilation {time.perf_counter() - t:.1f} s", flush=True)
        kind = "current" if v in COMPILED | FUSED | {"frozen_bf16"} else v
        runners[v] = (m, opt, kind)

    times = {v: [] for v in variants}
    cpus = {v: [] for v in variants}
    toks = {v: [] for v in variants}
    for r in range(a.warmup + a.rounds):
        mb = batch_of(r + 1)
        line = []
        for v in variants:
            m, opt, kind = runners[v]
            t, c = time.perf_counter(), time.process_time()
            n = step(kind, m, opt, mb, tok.pad_token_id, a.seq_len)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if r >= a.warmup:
                times[v].append(dt)
                cpus[v].append(dc)
                toks[v].append(n)
            line.append(f"{v}={dt:.2f}")
        print(f"round {r}{' (warm-up)' if r < a.warmup else ''}: " + " ".join(line)
              + f"  load {os.getloadavg()[0]:.1f}", flush=True)

    print(f"\n{a.spec} {a.mode}, seq {a.seq_len}, batch {a.batch}, threads {torch.get_num_threads()}, "
          f"{a.rounds} timed rounds")
    ref = variants[0]
    base_min, base_cpu = min(times[ref]), statistics.median(cpus[ref])
    print(f"  {'variant':12s} {'wall min':>8s} {'wall med':>8s} {'cpu med':>8s} {'tok/cpu-s':>9s} "
          f"{'vs ' + ref + ' (wall min)':>20s} {'(cpu)':>6s}")
    for v in variants:
        ts, cs = times[v], cpus[v]
        mean_tok = sum(toks[v]) / len(toks[v])
        print(f"  {v:12s} {min(ts):8.3f} {statistics.median(ts):8.3f} {statistics.median(cs):8.3f} "
              f"{mean_tok / statistics.median(cs):9.1f} {base_min / min(ts):19.2f}x {base_cpu / statistics.median(cs):5.2f}x")


if __name__ == "__main__":
    main()
