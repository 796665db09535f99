"""IFEval (Zhou et al. 2023): rule-checkable instruction following, scored by our own checkers.

* :func:`load_ifeval` reads IFEval's ``input_data.jsonl`` (``key``, ``prompt``, ``instruction_id_list``,
  ``kwargs``) and validates every instruction id and its arguments up front.
* :func:`score_response` checks one response: **strict** checks the response as is; **loose** passes an
  instruction if any of IFEval's eight variants passes (the response, without its first line, without its last
  line, without both, and each of those with every ``*`` removed).
* :func:`aggregate` gives prompt-level accuracy (all of a prompt's instructions followed) and instruction-level
  accuracy (share of all instructions followed), strict and loose, plus per-instruction-id accuracy.
* :func:`evaluate_ifeval` generates the answers with a model and scores them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunelens.errors import ConfigError, DataError
from tunelens.evals.generation import Answer, GenerationSettings, answer_prompts, termination_stats
from tunelens.evals.ifeval_checkers import check, clean_kwargs
from tunelens.evals.io import instructions_file, read_jsonl, require

DEFAULT_FILE = "ifeval_input_data.jsonl"


@dataclass
class IFEvalItem:
    key: int | str
    prompt: str
    instruction_ids: list[str]
    kwargs: list[dict[str, Any]]


@dataclass
class IFEvalScore:
    """One response's per-instruction results, strict and loose (loose >= strict, item by item)."""

    key: int | str
    instruction_ids: list[str]
    strict: list[bool]
    loose: list[bool]
    response: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "prompt_strict": self.prompt_strict, "prompt_loose": self.prompt_loose}


def load_ifeval(path: str | Path | None = None, limit: int | None = None) -> list[IFEvalItem]:
    """IFEval items from ``path`` (default: the shared ``instructions/ifeval_input_data.jsonl``), first ``limit``."""
    path = Path(path) if path is not None else instructions_file(DEFAULT_FILE)
    items = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}, line {lineno}"
        ids = require(obj, "instruction_id_list", list, where)
        kwargs = obj.get("kwargs") or [{} for _ in ids]
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise DataError(f"{where}: 'kwargs' must be a list with one object per instruction id "
                            f"({len(ids)}), got {kwargs!r:.80}")
        if not ids:
            raise DataError(f"{where}: 'instruction_id_list' is empty")
        try:
            clean = [clean_kwargs(i, k if isinstance(k, dict) else {}) for i, k in zip(ids, kwargs)]
        except (ConfigError, DataError) as exc:  # unknown id / bad arguments: add the place
            raise type(exc)(f"{where}: {exc}") from None
        items.append(IFEvalItem(key=obj.get("key", len(items)), prompt=require(obj, "prompt", str, where),
                                instruction_ids=list(ids), kwargs=clean))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError(f"{path}: no IFEval items")
    return items


def response_variants(response: str) -> list[str]:
    """IFEval's loose variants: as is, minus first line, minus last line, minus both; each also without ``*``."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [c.replace("*", "") for c in cut]


def score_response(item: IFEvalItem, response: str) -> IFEvalScore:
    """Strict and loose results of every instruction of ``item`` on ``response`` (an empty response fails all)."""
    variants = [v for v in response_variants(response) if v.strip()]
    strict, loose = [], []
    for iid, kw in zip(item.instruction_ids, item.kwargs):
        strict.append(bool(response.strip()) and check(iid, response, kw))
        loose.append(any(check(iid, v, kw) for v in variants))
    return IFEvalScore(item.key, list(item.instruction_ids), strict, loose, response)


def aggregate(scores: Sequence[IFEvalScore]) -> dict[str, Any]:
    """Prompt- and instruction-level accuracy, strict and loose, and per-instruction-id (strict, loose, n)."""
    if not scores:
        raise DataError("aggregate: no IFEval scores")
    flat = [(iid, s, l) for sc in scores for iid, s, l in zip(sc.instruction_ids, sc.strict, sc.loose)]
    by_id: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for iid, s, l in flat:
        by_id[iid].append((s, l))
    return {
        "n_prompts": len(scores),
        "n_instructions": len(flat),
        "prompt_strict": sum(sc.prompt_strict for sc in scores) / len(scores),
        "prompt_loose": sum(sc.prompt_loose for sc in scores) / len(scores),
        "instruction_strict": sum(s for _, s, _ in flat) / len(flat),
        "instruction_loose": sum(l for _, _, l in flat) / len(flat),
        "by_instruction": {iid: {"n": len(v), "strict": sum(s for s, _ in v) / len(v),
                                 "loose": sum(l for _, l in v) / len(v)} for iid, v in sorted(by_id.items())},
    }


def score_responses(items: Sequence[IFEvalItem], responses: Sequence[str]) -> tuple[dict[str, Any],
                                                                                     list[IFEvalScore]]:
    """Score ready-made responses (one per item, in order): ``(aggregate metrics, per-item scores)``."""
    if len(items) != len(responses):
        raise DataError(f"IFEval: {len(items)} items but {len(responses)} responses")
    scores = [score_response(it, r) for it, r in zip(items, responses)]
    return aggregate(scores), scores


def evaluate_ifeval(model: Any, tokenizer: Any, items: Sequence[IFEvalItem],
                    settings: GenerationSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate answers to ``items`` and score them: ``(metrics incl. termination stats, per-item records)``."""
    answers: list[Answer] = answer_prompts(model, tokenizer, [it.prompt for it in items], settings)
    metrics, scores = score_responses(items, [a.text for a in answers])
    metrics["termination"] = termination_stats(answers)
    records = []
    for sc, a in zip(scores, answers):
        rec = sc.record()
        rec.update(stopped=a.stopped, answer_tokens=a.n_tokens)
        records.append(rec)
    return metrics, records
