"""LLM-as-judge scoring (MT-Bench style, single answer, 1-10) through the synthesis teachers' interface.

Any :class:`tunelens.data.synth.teachers.Teacher` can judge: an OpenAI-compatible endpoint serving a strong
model, or a local HF model. The prompts are FastChat's ``single-v1`` (general questions) and
``single-math-v1`` (questions of the categories in :data:`NEEDS_REFERENCE` that have a reference answer),
read from ``instructions/mt_bench_judge_prompts.jsonl``. The verdict is parsed from ``[[r]]`` (FastChat's
format), else ``Rating: r``, else a lone ``[r]``; a rating outside 1-10 or no rating is a parse failure.
Teacher errors (timeouts, server errors, empty text) and parse failures are counted and reported per item,
never raised, and are left out of the mean score.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tunelens.errors import DataError
from tunelens.evals.generation import GenerationSettings, answer_prompts
from tunelens.evals.io import instructions_file, read_jsonl, require
from tunelens.evals.refll import BENCHMARKS

NEEDS_REFERENCE = ("math", "reasoning", "coding")
_PATTERNS = (re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"), re.compile(r"[Rr]ating\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)"),
             re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]"))


@dataclass
class JudgeItem:
    id: str
    category: str
    question: str
    answer: str = ""
    reference: str | None = None


@dataclass
class JudgePrompt:
    name: str
    system: str
    template: str


def load_judge_prompts(path: str | Path | None = None) -> dict[str, JudgePrompt]:
    """FastChat judge prompts by name (default: the shared ``instructions/mt_bench_judge_prompts.jsonl``)."""
    path = Path(path) if path is not None else instructions_file("mt_bench_judge_prompts.jsonl")
    prompts = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}, line {lineno}"
        name = require(obj, "name", str, where)
        prompts[name] = JudgePrompt(name, require(obj, "system_prompt", str, where),
                                    require(obj, "prompt_template", str, where))
    for needed in ("single-v1", "single-math-v1"):
        if needed not in prompts:
            raise DataError(f"{path}: no judge prompt named {needed!r}")
    return prompts


def load_judge_items(benchmark: str = "mt_bench", limit: int | None = None,
                     shared_dir: str | Path | None = None) -> list[JudgeItem]:
    """First-turn questions of ``benchmark`` (see :data:`tunelens.evals.refll.BENCHMARKS`), with the GPT-4
    reference answer where one exists."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS)}")
    qfile, rfile = (instructions_file(f, shared_dir) for f in BENCHMARKS[benchmark])
    refs = {}
    for lineno, obj in read_jsonl(rfile):
        choices = require(obj, "choices", list, f"{rfile}, line {lineno}")
        if choices and isinstance(choices[0], dict) and choices[0].get("turns"):
            refs[obj.get("question_id")] = choices[0]["turns"][0]
    items = []
    for lineno, obj in read_jsonl(qfile):
        where = f"{qfile}, line {lineno}"
        turns = require(obj, "turns", list, where)
        if not turns or not isinstance(turns[0], str):
            raise DataError(f"{where}: 'turns' must start with a string")
        qid = obj.get("question_id")
        items.append(JudgeItem(f"{benchmark}:{qid}", obj.get("category", ""), turns[0], reference=refs.get(qid)))
    return items[:limit] if limit is not None else items


def parse_rating(text: str) -> float | None:
    """The judge's 1-10 rating, or None if the text holds no valid one."""
    for pattern in _PATTERNS:
        found = pattern.findall(text or "")
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def judge_request(item: JudgeItem, prompts: dict[str, JudgePrompt], max_tokens: int | None = None):
    """The teacher request judging ``item`` (reference-guided prompt when its category needs one)."""
    from tunelens.data.synth.teachers import TeacherRequest

    if item.reference is not None and item.category in NEEDS_REFERENCE:
        p = prompts["single-math-v1"]
        user = p.template.format(question=item.question, ref_answer_1=item.reference, answer=item.answer)
    else:
        p = prompts["single-v1"]
        user = p.template.format(question=item.question, answer=item.answer)
    return TeacherRequest(messages=({"role": "system", "content": p.system}, {"role": "user", "content": user}),
                          max_tokens=max_tokens), p.name


def judge_answers(teacher: Any, items: Sequence[JudgeItem], prompts: dict[str, JudgePrompt] | None = None, *,
                  max_tokens: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rate each item's ``answer`` with ``teacher``: ``(metrics, per-item records)``.

    Metrics: ``mean_score`` over parsed ratings, ``n_scored``, ``n_teacher_errors`` (the teacher returned an
    error), ``n_empty`` (no text), ``n_parse_failures`` (text without a valid rating), ``by_category``.
    """
    if not items:
        raise DataError("judge_answers: no items")
    prompts = prompts or load_judge_prompts()
    built = [judge_request(it, prompts, max_tokens) for it in items]
    step = max(1, int(getattr(teacher, "batch_size", 8) or 8))
    results = []
    for i in range(0, len(built), step):
        chunk = [req for req, _ in built[i:i + step]]
        got = teacher.complete(chunk)
        if len(got) != len(chunk):
            raise DataError(f"judge teacher returned {len(got)} results for {len(chunk)} requests")
        results += got
    records = []
    for item, (_, pname), res in zip(items, built, results):
        status, score = _status(res)
        records.append({"id": item.id, "category": item.category, "question": item.question, "answer": item.answer,
                        "judge_prompt": pname, "judgement": res.text, "finish_reason": res.finish_reason,
                        "error": res.error, "status": status, "score": score})
    scored = [r for r in records if r["score"] is not None]
    metrics = {
        "n": len(records), "n_scored": len(scored),
        "n_teacher_errors": sum(r["status"] == "teacher_error" for r in records),
        "n_empty": sum(r["status"] == "empty" for r in records),
        "n_parse_failures": sum(r["status"] == "parse_failure" for r in records),
        "mean_score": sum(r["score"] for r in scored) / len(scored) if scored else math.nan,
        "by_category": {c: _mean([r["score"] for r in scored if r["category"] == c])
                        for c in sorted({r["category"] for r in scored})},
        "judge": teacher.identity(),
    }
    return metrics, records


def _status(res: Any) -> tuple[str, float | None]:
    if not res.ok:
        return "teacher_error", None
    if not (res.text or "").strip():
        return "empty", None
    score = parse_rating(res.text)
    return ("ok", score) if score is not None else ("parse_failure", None)


def _mean(vals: list[float]) -> float:
    return sum(vals) / len(vals) if vals else math.nan


def evaluate_judge(model: Any, tokenizer: Any, teacher: Any, items: Sequence[JudgeItem],
                   settings: GenerationSettings, prompts: dict[str, JudgePrompt] | None = None,
                   max_tokens: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer ``items`` with ``model`` (greedy) and rate the answers with ``teacher``."""
    answers = answer_prompts(model, tokenizer, [it.question for it in items], settings)
    answered = [JudgeItem(it.id, it.category, it.question, a.text, it.reference) for it, a in zip(items, answers)]
    metrics, records = judge_answers(teacher, answered, prompts, max_tokens=max_tokens)
    for rec, a in zip(records, answers):
        rec.update(stopped=a.stopped, answer_tokens=a.n_tokens)
    return metrics, records
