"""Knowledge-conflict suite: does the model answer from the (counterfactual) context or from memory?

Prompt (user turn, any variant): ``Context: {context}\\nQuestion: {question}`` (MemoTrap items: the
prompt alone). The ``raw`` variant opens the answer with ``Answer:``.

* ``generate``: greedy, ``max_new_tokens`` tokens, stopped at a blank line. Each output is classified
  ctx / param / neither by normalised containment of the context answer and the memory answer (the one
  appearing first wins when both do), so ``ctx_rate + param_rate + neither_rate = 1``.
* ``loglik``: summed log-probability of each answer as a continuation of the prompt (one pass over the
  prompt, both answers on its KV cache); ``ctx_pref_rate`` = share with log p(ctx) > log p(mem),
  ``ctx_prob_mean`` = mean of p_ctx / (p_ctx + p_mem).

No-context control (``no_context_control``): the question alone, same mode; ``closed_book_param_rate``
is the share of items whose memory answer the model gives (generate) or prefers (loglik) without the
context, and ``ctx_rate_known`` / ``ctx_pref_rate_known`` restrict the main metric to those items.
"""
from __future__ import annotations

from typing import Any, Sequence

from tunelens.errors import ConfigError
from tunelens.probes.engine import ScoreRequest, generate_greedy, score_continuations
from tunelens.probes.items import ConflictItem
from tunelens.probes.metrics import conflict_outcome, conflict_rates, contains, context_preference
from tunelens.probes.prompts import Prompt
from tunelens.probes.settings import ProbeSettings, SuiteResult
from tunelens.probes.suites.common import continuation_ids, fit_prompt, model_limit, settings_record

STOP = ["\n\n"]


def _parts(item: ConflictItem) -> list[tuple[str, str]]:
    if not item.question:
        return [("context", item.context)]
    return [("other", "Context: "), ("context", item.context), ("other", "\nQuestion: "),
            ("question", item.question)]


def _prefix(variant: str, item: ConflictItem) -> str:
    return "Answer:" if variant == "raw" and item.question else ""


def _generate(model: Any, tok: Any, prompts: list[Prompt], s: ProbeSettings) -> list[str]:
    gens = generate_greedy(model, tok, [p.input_ids for p in prompts], max_new_tokens=s.max_new_tokens,
                           stop_strings=STOP, batch_size=s.batch_size, bf16=s.bf16, progress=s.progress)
    return [g.text for g in gens]


def _loglik(model: Any, tok: Any, prompts: list[Prompt], items: Sequence[ConflictItem],
            s: ProbeSettings) -> list[tuple[float, float]]:
    reqs = [ScoreRequest(p.input_ids, [continuation_ids(tok, p, it.answer), continuation_ids(tok, p, it.memory_answer)])
            for p, it in zip(prompts, items)]
    scores = score_continuations(model, reqs, batch_size=s.batch_size, bf16=s.bf16, progress=s.progress)
    return [(float(a), float(b)) for a, b in scores]


def run_conflicts(model: Any, tok: Any, items: Sequence[ConflictItem], variant: str, s: ProbeSettings,
                  suite: str) -> SuiteResult:
    """Run the conflict suite on ``items`` under one prompt ``variant``."""
    if not items:
        raise ConfigError(f"{suite}: no items to probe (empty file or limit=0).")
    limit = model_limit(model, tok)
    prompts = [fit_prompt(variant, _parts(it), tok, s, limit, s.max_new_tokens, _prefix(variant, it)) for it in items]
    records: list[dict[str, Any]] = [{"id": it.id, "answer": it.answer, "memory_answer": it.memory_answer,
                                      "prompt_tokens": len(p), "truncated": p.truncated}
                                     for it, p in zip(items, prompts)]
    metrics: dict[str, float] = {}
    if s.mode == "generate":
        outputs = _generate(model, tok, prompts, s)
        outcomes = [conflict_outcome(o, it.answer, it.memory_answer) for o, it in zip(outputs, items)]
        rates = conflict_rates(outcomes)
        metrics.update(ctx_rate=rates["ctx"], param_rate=rates["param"], neither_rate=rates["neither"])
        for rec, o, oc in zip(records, outputs, outcomes):
            rec.update(output=o, outcome=oc)
        main = [oc == "ctx" for oc in outcomes]
    else:
        pairs = _loglik(model, tok, prompts, items, s)
        prefs = [float(context_preference(a, b)) for a, b in pairs]
        main = [a > b for a, b in pairs]
        metrics.update(ctx_pref_rate=sum(main) / len(main), ctx_prob_mean=sum(prefs) / len(prefs))
        for rec, (a, b), p in zip(records, pairs, prefs):
            rec.update(logp_ctx=a, logp_mem=b, p_ctx=p)
    closed = [it for it in items if it.question]
    if s.no_context_control and closed:
        known = _closed_book(model, tok, closed, variant, s, limit)
        by_id = {it.id: k for it, (k, _) in zip(closed, known)}
        for rec, (k, detail) in zip((r for r in records if r["id"] in by_id), known):
            rec.update(knows_memory=k, closed_book=detail)
        flags = [by_id.get(it.id) for it in items]
        metrics["closed_book_param_rate"] = sum(bool(k) for k in flags if k is not None) / len(closed)
        known_main = [m for m, k in zip(main, flags) if k]
        key = "ctx_rate_known" if s.mode == "generate" else "ctx_pref_rate_known"
        metrics[key] = sum(known_main) / len(known_main) if known_main else float("nan")
        metrics["n_known"] = float(len(known_main))
    truncated = sum(1 for p in prompts if p.truncated)
    return SuiteResult(suite=suite, variant=variant, mode=s.mode, n=len(items), metrics=metrics,
                       settings=settings_record(s, stop_strings=STOP), records=records, truncated=truncated)


def _closed_book(model: Any, tok: Any, items: Sequence[ConflictItem], variant: str, s: ProbeSettings,
                 limit: int) -> list[tuple[bool, Any]]:
    """Per item: does the model give/prefer the memory answer from the question alone?"""
    prompts = [fit_prompt(variant, [("question", it.question)], tok, s, limit, s.max_new_tokens,
                          _prefix(variant, it)) for it in items]
    if s.mode == "generate":
        outputs = _generate(model, tok, prompts, s)
        return [(contains(o, it.memory_answer), o) for o, it in zip(outputs, items)]
    pairs = _loglik(model, tok, prompts, items, s)
    return [(b > a, {"logp_ctx": a, "logp_mem": b}) for a, b in pairs]
