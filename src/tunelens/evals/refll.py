"""Reference-answer log-likelihood: how probable a model finds a strong model's answer to a real question.

Items come from MT-Bench / Vicuna-bench question files joined with their GPT-4 reference answers (FastChat
format). Each turn with a reference answer is one item: the conversation so far (earlier questions and their
reference answers) plus the question is the prompt; the reference answer is the continuation. Both are rendered
with the chat template exactly as SFT renders a conversation (:func:`tunelens.chat.render`), so the scored
tokens are the answer's content followed by the template's end-of-turn marker.

Metrics (per item means, then averaged over items): ``mean_logprob`` (per token, content + end-of-turn marker),
``mean_logprob_content`` (content only) and ``end_logprob`` (log-probability of the end-of-turn marker after
the full answer: how ready the model is to stop). Scores come from
:func:`tunelens.probes.engine.score_continuations` (one prompt pass, both continuations on a forked KV cache).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tunelens.chat import render
from tunelens.errors import DataError
from tunelens.evals.io import instructions_file, read_jsonl, require
from tunelens.probes.engine import ScoreRequest, score_continuations

if TYPE_CHECKING:
    from tunelens.evals.generation import GenerationSettings

BENCHMARKS = {
    "mt_bench": ("mt_bench_question.jsonl", "mt_bench_reference_answer_gpt-4.jsonl"),
    "vicuna_bench": ("vicuna_bench_question.jsonl", "vicuna_bench_reference_answer_gpt-4.jsonl"),
}


@dataclass
class RefItem:
    id: str
    category: str
    messages: list[dict[str, str]]  # ends with the user turn to answer
    reference: str


def load_reference_items(benchmarks: Sequence[str] = ("mt_bench", "vicuna_bench"), *, turns: str = "all",
                         limit: int | None = None, shared_dir: str | Path | None = None,
                         files: dict[str, tuple[str | Path, str | Path]] | None = None) -> list[RefItem]:
    """Items of every question that has a reference answer (``turns``: ``all`` or ``first``).

    ``files`` maps a benchmark name to ``(questions.jsonl, reference_answers.jsonl)`` paths, overriding the
    shared data files (see :data:`BENCHMARKS`).
    """
    if turns not in ("all", "first"):
        raise DataError(f"turns must be 'all' or 'first', got {turns!r}")
    items: list[RefItem] = []
    for name in benchmarks:
        if files and name in files:
            qpath, rpath = (Path(p) for p in files[name])
        elif name in BENCHMARKS:
            qpath, rpath = (instructions_file(f, shared_dir) for f in BENCHMARKS[name])
        else:
            raise DataError(f"unknown reference benchmark {name!r}; known: {sorted(BENCHMARKS)} (or pass files=)")
        items += _join(name, qpath, rpath, turns)
    if not items:
        raise DataError(f"no reference-answer items in {list(benchmarks)}")
    return items[:limit] if limit is not None else items


def _join(name: str, qpath: Path, rpath: Path, turns: str) -> list[RefItem]:
    questions = {}
    for lineno, obj in read_jsonl(qpath):
        where = f"{qpath}, line {lineno}"
        questions[require(obj, "question_id", (int, str), where)] = (obj.get("category", ""),
                                                                    _strings(obj, "turns", where))
    items = []
    for lineno, obj in read_jsonl(rpath):
        where = f"{rpath}, line {lineno}"
        qid = require(obj, "question_id", (int, str), where)
        if qid not in questions:
            raise DataError(f"{where}: question_id {qid!r} has no question in {qpath}")
        choices = require(obj, "choices", list, where)
        if not choices or not isinstance(choices[0], dict):
            raise DataError(f"{where}: 'choices' must hold at least one object")
        answers = _strings(choices[0], "turns", f"{where}, choices[0]")
        category, qturns = questions[qid]
        history: list[dict[str, str]] = []
        for t, (q, a) in enumerate(zip(qturns, answers)):
            history = history + [{"role": "user", "content": q}]
            items.append(RefItem(f"{name}:{qid}:t{t + 1}", category, list(history), a))
            history = history + [{"role": "assistant", "content": a}]
            if turns == "first":
                break
    return items


def _strings(obj: dict[str, Any], field: str, where: str) -> list[str]:
    value = require(obj, field, list, where)
    if not value or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {field!r} must be a non-empty list of strings")
    return value


def _request(item: RefItem, tokenizer: Any, chat_template: str | None,
             max_answer_tokens: int | None) -> tuple[ScoreRequest, bool]:
    """Prompt ids, then continuations [content + end marker, content]; and whether the answer was truncated."""
    rendered = render(item.messages + [{"role": "assistant", "content": item.reference}], tokenizer,
                      train_on="last", chat_template=chat_template)
    runs = rendered.trained_runs()
    if not runs:
        raise DataError(f"{item.id}: the chat template left no assistant tokens to score")
    start, end = runs[0][0], runs[-1][1]
    content_end = max(start + 1, min(rendered.spans[-1].token_end, end))
    ids = rendered.input_ids
    full, content = ids[start:end], ids[start:content_end]
    if max_answer_tokens is not None and len(content) > max_answer_tokens:
        content = content[:max_answer_tokens]
        return ScoreRequest(ids[:start], [content, content]), True
    return ScoreRequest(ids[:start], [full, content]), False


def reference_loglik(model: Any, tokenizer: Any, items: Sequence[RefItem], *, batch_size: int = 4,
                     bf16: bool = False, chat_template: str | None = None, max_answer_tokens: int | None = None,
                     progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(metrics, per-item records)`` of the reference answers' log-likelihood (see the module docstring).

    ``max_answer_tokens`` scores only the first N content tokens of longer answers (no end marker then;
    such items are counted in ``n_truncated`` and left out of ``end_logprob``).
    """
    if not items:
        raise DataError("reference_loglik: no items")
    built = [_request(it, tokenizer, chat_template, max_answer_tokens) for it in items]
    scores = score_continuations(model, [r for r, _ in built], batch_size=batch_size, bf16=bf16, progress=progress)
    records = []
    for item, (req, truncated), (full, content) in zip(items, built, scores):
        end = None if truncated else full.logprob - content.logprob
        records.append({**asdict(item), "prompt_tokens": len(req.prompt_ids), "answer_tokens": full.n_tokens,
                        "truncated": truncated, "logprob": full.logprob,
                        "mean_logprob": full.logprob / full.n_tokens,
                        "mean_logprob_content": content.logprob / content.n_tokens, "end_logprob": end})
    ends = [r["end_logprob"] for r in records if r["end_logprob"] is not None]
    metrics = {
        "n": len(records),
        "n_truncated": sum(r["truncated"] for r in records),
        "mean_logprob": _mean(r["mean_logprob"] for r in records),
        "mean_logprob_content": _mean(r["mean_logprob_content"] for r in records),
        "token_weighted_logprob": sum(r["logprob"] for r in records) / sum(r["answer_tokens"] for r in records),
        "end_logprob": _mean(ends) if ends else float("nan"),
        "by_category": {c: _mean(r["mean_logprob"] for r in records if r["category"] == c)
                        for c in sorted({r["category"] for r in records})},
    }
    return metrics, records


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan


def reference_termination(model: Any, tokenizer: Any, items: Sequence[RefItem],
                          settings: "GenerationSettings") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy answers to the items' conversations: termination stats (well-terminated rate = EOS before
    ``settings.max_new_tokens``) and per-item records (answer text, tokens, why it stopped)."""
    from tunelens.evals.generation import answer_conversations, termination_stats

    answers = answer_conversations(model, tokenizer, [it.messages for it in items], settings)
    records = [{"id": it.id, "category": it.category, "answer": a.text, "answer_tokens": a.n_tokens,
                "stopped": a.stopped} for it, a in zip(items, answers)]
    return termination_stats(answers), records
