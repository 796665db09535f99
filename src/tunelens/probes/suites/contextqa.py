"""Contextual-QA suite ([B] §4.1): answer a question from a passage; scored by containment, EM and F1.

Spec: ``contextqa`` / ``contextqa:xquad`` (XQuAD-en, 1,190 SQuAD v1.1 dev questions), ``contextqa:boolq``
(BoolQ dev, answers yes/no), or ``contextqa:PATH`` (a user file; ``settings.fields`` maps its field names,
see :func:`~tunelens.probes.items.load_contextqa`). ``settings.limit`` keeps the first N items.

Prompt (user turn, any variant), [B]'s template for SQuAD-like sets, as pieces::

    {context}\\nAnswer the question according to the above passage: {question}

The ``raw`` variant opens the answer with ``Answer:`` (as the conflicts suite does). Over-long contexts are
cut by :func:`~tunelens.probes.suites.common.fit_prompt` (``settings.truncation``) and counted.

Decoding: greedy, at most ``max_new_tokens`` tokens, stopped at the first ``". "`` ([B]); the answer is the
output with leading whitespace removed, cut at its first ``". "`` and its first ``"\\n"``. (The newline cut
is applied to the text, not as an engine stop string, so an output that *opens* with a newline is not
scored as empty; such rows may run to ``max_new_tokens``.)

Metrics:

* ``contain_acc``: share of items whose normalised output contains a normalised gold answer (any of them;
  [B]'s containment, substring match), with ``contain_ci_low`` / ``contain_ci_high`` (percentile bootstrap,
  seed 0);
* ``em`` / ``f1``: SQuAD v1.1 exact match and token F1 (max over golds), as fractions.

Yes/no sets (every item's gold normalises to exactly ``yes`` or ``no``, e.g. BoolQ): containment is decided
on whole words (so ``no`` is not found in "not" or "know"), and when an output contains both ``yes`` and
``no`` the **first occurrence wins** (as :func:`~tunelens.probes.metrics.conflict_outcome`, which does the
classification: "Yes, it does not..." counts as yes). ``neither_rate`` is the share of outputs with neither
word. EM/F1 are still the SQuAD ones, so "Yes." has EM 1 but "Yes, because ..." has EM 0: read
``contain_acc`` for yes/no sets.

Records, per item: ``id``, ``question``, ``output`` (the scored answer), ``raw_output``, ``golds``,
``contained``, ``em``, ``f1``, ``prompt_tokens``, ``truncated`` (context tokens cut; 0 if none), and for
yes/no sets ``yesno`` (``"yes"`` | ``"no"`` | ``"neither"``).
"""
from __future__ import annotations

from typing import Any, Sequence

from tunelens.errors import ConfigError
from tunelens.probes.engine import generate_greedy
from tunelens.probes.items import ContextQAItem, load_contextqa
from tunelens.probes.metrics import bootstrap_ci, conflict_outcome, contains_any, normalize_answer, squad_em_f1
from tunelens.probes.settings import ProbeSettings, SuiteResult
from tunelens.probes.suites.common import fit_prompt, model_limit, settings_record

__all__ = ["INSTRUCTION", "STOP", "answer_text", "is_yesno", "run_contextqa", "score_item"]

DEFAULT_SPEC = "xquad"
INSTRUCTION = "\nAnswer the question according to the above passage: "
STOP = [". "]  # engine stop strings ([B]); "\n" is cut from the text afterwards, see answer_text
_CUTS = (". ", "\n")
_YESNO = ("yes", "no")


def _parts(item: ContextQAItem) -> list[tuple[str, str]]:
    return [("context", item.context), ("other", INSTRUCTION), ("question", item.question)]


def _prefix(variant: str) -> str:
    return "Answer:" if variant == "raw" else ""


def answer_text(output: str) -> str:
    """The scored answer: ``output`` without leading whitespace, cut at its first ``". "`` and ``"\\n"``."""
    text = output.lstrip()
    for cut in _CUTS:
        i = text.find(cut)
        if i >= 0:
            text = text[:i]
    return text.rstrip()


def is_yesno(items: Sequence[ContextQAItem]) -> bool:
    """True when every item has one gold answer that normalises to ``yes`` or ``no`` (BoolQ-like)."""
    return bool(items) and all({normalize_answer(a) for a in it.answers} in ({"yes"}, {"no"}) for it in items)


def score_item(output: str, golds: Sequence[str], yesno: bool = False) -> dict[str, Any]:
    """``{"contained", "em", "f1"}`` (plus ``"yesno"`` for yes/no items) of one scored answer."""
    em, f1 = squad_em_f1(output, list(golds))
    if yesno:
        gold = normalize_answer(golds[0])
        other = "no" if gold == "yes" else "yes"
        outcome = conflict_outcome(output, gold, other, whole_words=True)
        said = {"ctx": gold, "param": other}.get(outcome, "neither")
        return {"contained": said == gold, "em": em, "f1": f1, "yesno": said}
    return {"contained": contains_any(output, golds), "em": em, "f1": f1}


def run_contextqa(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    """Run the contextual-QA suite ``arg`` under one prompt ``variant`` (see the module docstring)."""
    spec = arg.strip() or DEFAULT_SPEC
    items = load_contextqa(spec, fields=s.fields or None, limit=s.limit)
    if not items:
        raise ConfigError(f"contextqa:{spec}: no items to probe (the file holds no records).")
    limit = model_limit(model, tok)
    prompts = [fit_prompt(variant, _parts(it), tok, s, limit, s.max_new_tokens, _prefix(variant)) for it in items]
    gens = generate_greedy(model, tok, [p.input_ids for p in prompts], max_new_tokens=s.max_new_tokens,
                           stop_strings=STOP, batch_size=s.batch_size, bf16=s.bf16, progress=s.progress)
    yesno = is_yesno(items)
    records: list[dict[str, Any]] = []
    for it, p, g in zip(items, prompts, gens):
        out = answer_text(g.text)
        records.append({"id": it.id, "question": it.question, "output": out, "raw_output": g.text,
                        "golds": list(it.answers), **score_item(out, it.answers, yesno),
                        "prompt_tokens": len(p), "truncated": p.truncated})
    n = len(records)
    ci = bootstrap_ci([float(r["contained"]) for r in records])
    metrics = {"contain_acc": ci.estimate, "em": sum(r["em"] for r in records) / n,
               "f1": sum(r["f1"] for r in records) / n, "contain_ci_low": ci.low, "contain_ci_high": ci.high}
    if yesno:
        metrics["neither_rate"] = sum(r["yesno"] == "neither" for r in records) / n
    return SuiteResult(suite=f"contextqa:{spec}", variant=variant, mode="generate", n=n, metrics=metrics,
                       settings=settings_record(s, stop_strings=STOP, answer_cuts=list(_CUTS), yesno=yesno),
                       records=records, truncated=sum(1 for p in prompts if p.truncated))
