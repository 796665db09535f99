"""Do curation and the [IND] indicator separate what they should, on a real model? (And how fast are they.)

Builds a mixture from the world-facts conflict set (``../shared/data/conflicts/world_facts.json``): for each item,

* ``C``   (context-critical): the counterfactual context, target = the context's answer (e.g. Herat);
* ``C+S`` (non-context-critical): the same context with the answer substituted back to the real one
  (Kabul), target = the real answer, which the model may know without the context.

Curation should drop mostly ``C+S`` examples (their target is predictable from memory). For the indicator, the
score distributions of both kinds and of Alpaca examples with / without an ``input`` are reported, with the
flagged share at several betas. Timings are wall seconds of the scoring calls on this (shared) machine.

    python benchmarks/data_prep_check.py --model smollm2-135m-instruct --items 80 --json benchmarks/results/data_prep_check.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tunelens.data import Example, load_examples
from tunelens.data.augment import substitute_answer
from tunelens.data.curate import parametric_perplexities, select_lowest
from tunelens.data.indicator import context_dependency_scores, default_layer
from tunelens.models import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mixture(n_items: int) -> list[Example]:
    items = load_examples(SHARED / "conflicts" / "world_facts.json", limit=n_items).examples
    out = []
    for ex in items:
        ans, real = ex.meta["answer"], ex.meta["memory_answer"]
        ctx, n = substitute_answer(ex.meta["context"], ans, real)
        if n == 0:
            continue
        q = ex.meta["question"]
        out.append(Example([{"role": "user", "content": f"{ex.meta['context']}\n\n{q}"},
                            {"role": "assistant", "content": ans}], ex.source + "#C",
                           {"context": ex.meta["context"], "question": q, "answer": ans, "kind": "C"}))
        out.append(Example([{"role": "user", "content": f"{ctx}\n\n{q}"}, {"role": "assistant", "content": real}],
                           ex.source + "#CS", {"context": ctx, "question": q, "answer": real, "kind": "C+S"}))
    return out


def describe(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=80)
    ap.add_argument("--alpaca", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model(args.model)
    exs = mixture(args.items)
    res: dict = {"model": args.model, "n_examples": len(exs), "batch_size": args.batch_size, "bf16": True}

    t0 = time.perf_counter()
    scores = parametric_perplexities(exs, model, tok, batch_size=args.batch_size, bf16=True, progress=False)
    res["curate_seconds"] = time.perf_counter() - t0
    for frac in (0.25, 0.5):  # what curate_by_parametric_perplexity(exs, ..., frac) drops, from the same scores
        kinds = [exs[i].meta["kind"] for i in select_lowest([s.mean_nll for s in scores], frac)]
        res[f"curate_drop_{frac}"] = {"n_dropped": len(kinds), "share_CS_among_dropped": kinds.count("C+S") / len(kinds)}
    by_kind = {k: [s.parametric_ppl for s, e in zip(scores, exs) if e.meta["kind"] == k] for k in ("C", "C+S")}
    res["parametric_ppl"] = {k: describe(v) for k, v in by_kind.items()}

    layer = default_layer(model)
    t0 = time.perf_counter()
    dep = context_dependency_scores(exs, model, tok, layer=layer, batch_size=args.batch_size, bf16=True,
                                    progress=False)
    res["indicate_seconds"] = time.perf_counter() - t0
    alp = load_examples(SHARED / "instructions" / "alpaca_en_demo_llamafactory.json", limit=args.alpaca).examples
    adep = context_dependency_scores(alp, model, tok, layer=layer, batch_size=args.batch_size, bf16=True,
                                     progress=False)
    groups = {
        "world_facts C": [d.turns[0].score for d, e in zip(dep, exs) if e.meta["kind"] == "C"],
        "world_facts C+S": [d.turns[0].score for d, e in zip(dep, exs) if e.meta["kind"] == "C+S"],
        "alpaca with input": [d.turns[0].score for d, e in zip(adep, alp) if "context" in e.meta],
        "alpaca without input": [d.turns[0].score for d, e in zip(adep, alp) if "context" not in e.meta],
    }
    res["indicator_layer"] = layer
    res["indicator_scores"] = {k: describe(v) for k, v in groups.items()}
    res["flagged_share"] = {k: {str(b): sum(x > b for x in v) / len(v) for b in (0.5, 0.6, 0.7, 0.8)}
                            for k, v in groups.items()}
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
