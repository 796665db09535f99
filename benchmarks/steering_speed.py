"""Steered generation speed: tunelens.steer (SDPA + per-head mask bias) vs unsteered SDPA vs pastalib.

Same prompts, same highlighted spans, same heads, same greedy ``model.generate`` (fixed length via
``min_new_tokens``), measured side by side in one process, interleaved round by round (A B C A B C ...) so machine
load hits all alike; reports the median tokens/s of each and the ratios (targets: steered/unsteered >= 0.9,
steered/pastalib >= 2).

The pastalib baseline is the real ``pastalib`` (PyPI 0.1.3, ``PASTA.apply_steering``: forward pre-hooks on each
steered layer's attention module that add log α to an expanded per-head 4-D mask; it needs eager attention). It is
imported from ``--pastalib-path`` (install with ``pip install --no-deps --target DIR pastalib``: the wheel also
ships top-level ``evaluation``/``scripts`` packages, so keep it out of the project's site-packages) or from the
environment. Without it, ``--allow-fallback`` runs :func:`pasta_hooks` below — the same method reimplemented
(eager attention, pre-hook mask edit) — and labels it so in the output.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/steering_speed.py --model smollm2-135m-instruct \\
        --prompts 8 --new-tokens 32 --rounds 3 --pastalib-path /tmp/pastalib_site --out runs/steering_speed.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunelens.models import load_model
from tunelens.probes.items import load_conflicts
from tunelens.steer import Highlight, steer


def chat_texts(tok: Any, n: int) -> tuple[list[str], list[str]]:
    """n chat prompts (world_facts: context + question) and, per prompt, the user-turn text to highlight."""
    texts, subs = [], []
    for it in load_conflicts("world_facts", limit=n):
        user = f"Context: {it.context}\nQuestion: {it.question}"
        texts.append(tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True))
        subs.append(user)
    return texts, subs


@contextlib.contextmanager
def pasta_hooks(model: Any, heads: dict[int, list[int]], ranges: torch.Tensor, input_len: int, alpha: float):
    """pastalib's method, reimplemented (fallback only): eager attention; a forward pre-hook on each steered
    layer's attention module expands the 4-D additive mask per head and adds log α outside the highlighted range
    ``[ti, tj)`` of each row, over prompt positions only."""
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj")]
    n_heads = model.config.num_attention_heads
    log_a = math.log(alpha)

    def edit(module, args, kwargs, head_idx):
        mask = kwargs["attention_mask"]
        b, _, q, k = mask.shape
        mask = mask.expand(b, n_heads, q, k).clone()
        for bi, (ti, tj) in enumerate(ranges.tolist()):
            mask[bi, head_idx, :, :ti] += log_a
            mask[bi, head_idx, :, tj:input_len] += log_a
        kwargs["attention_mask"] = mask
        return args, kwargs

    hooks = [layers[l].register_forward_pre_hook(lambda m, a, k, h=hs: edit(m, a, k, h), with_kwargs=True)
             for l, hs in heads.items()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def timed(fn: Callable[[], torch.Tensor], new_tokens: int) -> tuple[float, float, torch.Tensor]:
    """(tokens per wall second, tokens per CPU second of this process, output). CPU time is the steadier figure
    on a shared machine when torch runs one thread (OMP_NUM_THREADS=1)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    n = out.shape[0] * new_tokens
    return n / dt, n / dc, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--heads", default="all", help="'all', 'first:K' (K heads spread over layers) or a JSON file")
    ap.add_argument("--pastalib-path", default=None)
    ap.add_argument("--allow-fallback", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    if args.pastalib_path:
        sys.path.insert(0, args.pastalib_path)
    try:
        from pastalib.pasta import PASTA
        baseline = "pastalib (PyPI 0.1.3)"
    except ImportError:
        if not args.allow_fallback:
            raise SystemExit("pastalib is not importable; pass --pastalib-path DIR or --allow-fallback.")
        PASTA, baseline = None, "pastalib-equivalent reimplementation (pasta_hooks; pastalib not importable)"

    model, tok = load_model(args.model)
    model.eval()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    if args.heads == "all":
        heads = {l: list(range(n_heads)) for l in range(n_layers)}
    elif args.heads.startswith("first:"):
        k = int(args.heads.split(":")[1])
        pairs = [(i % n_layers, (i * 5) % n_heads) for i in range(k)]
        heads = {}
        for l, h in pairs:
            heads.setdefault(l, []).append(h)
    else:
        heads = {int(l): hs for l, hs in json.loads(Path(args.heads).read_text()).items()}

    texts, subs = chat_texts(tok, args.prompts)
    with_offsets = tok(texts, return_tensors="pt", padding="longest", padding_side="left", return_offsets_mapping=True)
    offsets = with_offsets.pop("offset_mapping")
    inputs = {"input_ids": with_offsets["input_ids"], "attention_mask": with_offsets["attention_mask"]}
    width = inputs["input_ids"].shape[1]
    pasta = PASTA(eager, tok, head_config=heads, alpha=args.alpha) if PASTA else None
    if pasta is not None:
        ranges = pasta.token_ranges_from_batch(texts, subs, offsets)
    else:
        ranges = []
        for text, sub, offs in zip(texts, subs, offsets.tolist()):
            a = text.index(sub)
            hit = [i for i, (s, e) in enumerate(offs) if s < a + len(sub) and e > a and e > s]
            ranges.append((hit[0], hit[-1] + 1))
        ranges = torch.tensor(ranges)
    hl = torch.zeros(len(texts), width, dtype=torch.bool)
    for b, (i, j) in enumerate(ranges.tolist()):
        hl[b, i:j] = True
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
               pad_token_id=tok.pad_token_id)

    def unsteered():
        return model.generate(**inputs, **gen)

    def steered():
        with steer(model, Highlight(hl), heads=heads, alpha=args.alpha):
            return model.generate(**inputs, **gen)

    def pastalib_run():
        ctx = (pasta.apply_steering(eager, texts, subs, inputs, offsets) if pasta is not None
               else pasta_hooks(eager, heads, ranges, width, args.alpha))
        with ctx:
            return eager.generate(**inputs, **gen)

    runs = {"unsteered_sdpa": unsteered, "tunelens_steer_sdpa": steered, "baseline": pastalib_run}
    speeds: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                tps, cps, outs[name] = timed(fn, args.new_tokens)
                speeds[name].append(tps)
                cpu[name].append(cps)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "model": args.model, "prompts": len(texts), "prompt_tokens_padded": width, "new_tokens": args.new_tokens,
        "heads": sum(len(h) for h in heads.values()), "alpha": args.alpha, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "baseline": baseline,
        "tokens_per_s": {k: [round(x, 2) for x in v] for k, v in speeds.items()},
        "median_tokens_per_s": {k: round(v, 2) for k, v in med.items()},
        "steered_vs_unsteered": round(med["tunelens_steer_sdpa"] / med["unsteered_sdpa"], 3),
        "steered_vs_baseline": round(med["tunelens_steer_sdpa"] / med["baseline"], 3),
        "tokens_per_cpu_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
        "median_tokens_per_cpu_s": {k: round(v, 2) for k, v in med_cpu.items()},
        "cpu_steered_vs_unsteered": round(med_cpu["tunelens_steer_sdpa"] / med_cpu["unsteered_sdpa"], 3),
        "cpu_steered_vs_baseline": round(med_cpu["tunelens_steer_sdpa"] / med_cpu["baseline"], 3),
        "same_tokens_as_baseline": bool(torch.equal(outs["tunelens_steer_sdpa"], outs["baseline"])),
        "steering_changed_tokens": not bool(torch.equal(outs["tunelens_steer_sdpa"], outs["unsteered_sdpa"])),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
