"""Counterfactual augmentation (Goyal et al., ICLR 2025, §6; Longpre et al. 2021's answer substitution).

Mix counterfactual-context examples, whose context contradicts what the model knows and whose target is the
context's answer, into a training set. Two sources:

* a **conflicts file** (``context``/``question``/``answer``/``memory_answer``; anything
  :func:`tunelens.probes.items.load_conflicts` reads, built-ins included): each item becomes a user turn
  ``context_template.format(context=..., question=...)`` and the assistant turn ``answer``;
* **answer substitution** on the training set itself: for an example whose answer (``meta['answer']``) appears
  in its context (``meta['context']``, see :mod:`tunelens.data.context`) and in its last assistant turn, every
  whole-word occurrence of the answer in the context and in that assistant turn is replaced by another answer of
  the **same type** drawn from the dataset; the new target is the substituted answer and ``memory_answer`` the
  original one. The type is ``meta[type_key]`` when the record has it (a relation name, an entity type), else
  :func:`answer_type`'s heuristic (year / number / proper name / other). Substitutes that already occur in the
  context are never drawn.

Amounts (``n = round_half_up(fraction * n_original)``): ``mode="add"`` appends ``n`` counterfactual examples
(the paper's "Alpaca + 10%"); ``mode="replace"`` swaps ``n`` originals (for substitution: the very examples that
were rewritten) for counterfactual ones, keeping the set's size, so ``fraction`` is the counterfactual share.
Counterfactual examples are placed at seeded random positions among the originals (whose order is kept).
Every random choice comes from ``random.Random(seed)``.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelens.data.context import ContextSpec, example_id, target_turn
from tunelens.data.schemas import DEFAULT_CONTEXT_TEMPLATE, Example
from tunelens.errors import DataError

__all__ = [
    "MODES",
    "AugmentReport",
    "answer_type",
    "augment_counterfactual",
    "counterfactuals_by_substitution",
    "counterfactuals_from_conflicts",
    "n_to_add",
    "substitute_answer",
]

MODES = ("add", "replace")
TYPE_KEY = "answer_type"


@dataclass
class AugmentReport:
    """The mixed examples and what was added/replaced."""

    examples: list[Example]
    added: list[Example]
    replaced: list[Example]
    n_original: int
    fraction: float
    mode: str
    source: str  # "substitution" or the conflicts file/spec
    seed: int
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": "augment", "mode": self.mode, "source": self.source, "fraction": self.fraction,
            "seed": self.seed, "n_original": self.n_original, "n_added": len(self.added),
            "n_replaced": len(self.replaced), "n_total": len(self.examples),
            "counterfactual_share": len(self.added) / len(self.examples) if self.examples else 0.0,
            **self.stats,
            "added": [{"id": example_id(e), "source": e.source, "answer": e.meta.get("answer"),
                       "memory_answer": e.meta.get("memory_answer"), "answer_type": e.meta.get(TYPE_KEY)}
                      for e in self.added],
            "replaced": [{"id": example_id(e), "source": e.source} for e in self.replaced],
        }

    def summary(self) -> str:
        return (f"augmented {self.n_original} examples ({self.mode}, {self.source}): {len(self.added)} "
                f"counterfactual added, {len(self.replaced)} replaced, {len(self.examples)} in total")


def n_to_add(n_original: int, fraction: float) -> int:
    """``round_half_up(fraction * n_original)``; ``fraction`` must lie in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"fraction must be in [0, 1], got {fraction}")
    return math.floor(fraction * n_original + 0.5 + 1e-9)


_YEAR = re.compile(r"[12]\d{3}")
_NUMBER = re.compile(r"[-+]?(\d[\d,]*(\.\d+)?|\.\d+)%?")


def answer_type(answer: str) -> str:
    """Heuristic type of an answer string: ``year`` | ``number`` | ``proper`` (every word capitalised) | ``other``."""
    s = answer.strip()
    if _YEAR.fullmatch(s):
        return "year"
    if _NUMBER.fullmatch(s):
        return "number"
    words = [w for w in s.split() if w[:1].isalpha()]
    if words and all(w[:1].isupper() for w in words):
        return "proper"
    return "other"


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _word_re(answer: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(answer) + r"(?!\w)")


def substitute_answer(text: str, answer: str, substitute: str) -> tuple[str, int]:
    """``text`` with every whole-word occurrence of ``answer`` replaced by ``substitute``, and the count."""
    return _word_re(answer).subn(lambda _: substitute, text)


def counterfactuals_from_conflicts(items: Sequence[Any], n: int, *, seed: int = 0,
                                   context_template: str = DEFAULT_CONTEXT_TEMPLATE,
                                   system: str | None = None) -> list[Example]:
    """``n`` examples from distinct conflict items (``ConflictItem``s), drawn with ``random.Random(seed)``."""
    if n > len(items):
        raise DataError(f"asked for {n} counterfactual examples but the conflicts source has only {len(items)} items")
    picks = sorted(random.Random(seed).sample(range(len(items)), n))
    out = []
    for i in picks:
        it = items[i]
        user = context_template.format(context=it.context, question=it.question)
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": it.answer}]
        meta = {"id": it.id, "context": it.context, "question": it.question, "answer": it.answer,
                "memory_answer": it.memory_answer, "counterfactual": True}
        out.append(Example(msgs, f"{it.source}#{it.id}", meta))
    return out


def _eligible(ex: Example, spec: ContextSpec, type_key: str) -> tuple[str, str, str] | None:
    """(context, answer, type) if ``ex`` can be rewritten by substitution, else None."""
    ctx, ans = ex.meta.get(spec.context_key), ex.meta.get(spec.answer_key)
    if not (isinstance(ctx, str) and isinstance(ans, str) and ans.strip()):
        return None
    a, u = target_turn(ex)
    if ctx not in ex.messages[u]["content"] or not _word_re(ans).search(ctx) \
            or not _word_re(ans).search(ex.messages[a]["content"]):
        return None
    typ = ex.meta.get(type_key)
    return ctx, ans, str(typ) if typ is not None else answer_type(ans)


def _rewrite(ex: Example, ctx: str, ans: str, sub: str, typ: str, spec: ContextSpec, type_key: str) -> Example:
    a, u = target_turn(ex)
    new_ctx, _ = substitute_answer(ctx, ans, sub)
    msgs = [dict(m) for m in ex.messages]
    msgs[u]["content"] = msgs[u]["content"].replace(ctx, new_ctx, 1)
    msgs[a]["content"], _ = substitute_answer(msgs[a]["content"], ans, sub)
    meta = dict(ex.meta)
    meta.update({spec.context_key: new_ctx, spec.answer_key: sub, "memory_answer": ans, "counterfactual": True,
                 type_key: typ, "id": f"{example_id(ex)}#cf"})
    return Example(msgs, f"{ex.source}#cf", meta)


def counterfactuals_by_substitution(examples: Sequence[Example], n: int, *, seed: int = 0,
                                    spec: ContextSpec | None = None,
                                    type_key: str = TYPE_KEY) -> tuple[list[Example], list[int], dict[str, Any]]:
    """(``n`` counterfactual examples, the indices of the originals they rewrite, stats) by answer substitution."""
    spec = spec or ContextSpec()
    rng = random.Random(seed)
    info = {i: e for i, ex in enumerate(examples) if (e := _eligible(ex, spec, type_key)) is not None}
    pool: dict[str, dict[str, str]] = defaultdict(dict)  # type -> normalised answer -> first spelling
    for ctx, ans, typ in info.values():
        pool[typ].setdefault(_norm(ans), ans)
    candidates = list(info)
    rng.shuffle(candidates)
    out, used, no_sub = [], [], 0
    for i in candidates:
        if len(out) == n:
            break
        ctx, ans, typ = info[i]
        low = ctx.lower()
        options = [a for k, a in sorted(pool[typ].items()) if k != _norm(ans) and a.lower() not in low]
        if not options:
            no_sub += 1
            continue
        out.append(_rewrite(examples[i], ctx, ans, rng.choice(options), typ, spec, type_key))
        used.append(i)
    stats = {"n_eligible": len(info), "n_without_substitute": no_sub,
             "answer_types": dict(Counter(t for _, _, t in info.values()))}
    if len(out) < n:
        raise DataError(f"answer substitution can make only {len(out)} of the {n} counterfactual examples asked "
                        f"for: {len(info)} of {len(examples)} examples have a {spec.answer_key!r} that appears in "
                        f"their {spec.context_key!r} and target, {no_sub} of them have no other answer of the "
                        f"same type to substitute (types: {stats['answer_types']})")
    return out, used, stats


def _interleave(base: list[Example], extra: list[Example], rng: random.Random) -> list[Example]:
    total = len(base) + len(extra)
    slots = set(rng.sample(range(total), len(extra)))
    it_base, it_extra = iter(base), iter(extra)
    return [next(it_extra) if k in slots else next(it_base) for k in range(total)]


def augment_counterfactual(examples: Sequence[Example], fraction: float, *,
                           conflicts: str | Path | Sequence[Any] | None = None, seed: int = 0,
                           mode: Literal["add", "replace"] = "add",
                           context_template: str = DEFAULT_CONTEXT_TEMPLATE, system: str | None = None,
                           spec: ContextSpec | None = None, type_key: str = TYPE_KEY,
                           conflict_fields: Mapping[str, str] | None = None) -> AugmentReport:
    """Mix ``round(fraction * len(examples))`` counterfactual examples into ``examples``.

    ``conflicts``: a conflicts file / built-in name, or already-loaded ``ConflictItem``s; None means answer
    substitution on ``examples``. ``mode``: "add" or "replace" (see the module docstring).
    """
    spec = spec or ContextSpec()
    if not examples:
        raise DataError("no examples to augment")
    if mode not in MODES:
        raise DataError(f"mode must be one of {MODES}, got {mode!r}")
    n = n_to_add(len(examples), fraction)
    rng = random.Random(f"{seed}:mix")
    if conflicts is None:
        added, rewritten, stats = counterfactuals_by_substitution(examples, n, seed=seed, spec=spec,
                                                                  type_key=type_key)
        source = "substitution"
        replace_idx = rewritten
    else:
        items = conflicts
        if isinstance(conflicts, (str, Path)):
            from tunelens.probes.items import load_conflicts

            items = load_conflicts(conflicts, fields=conflict_fields)
        added = counterfactuals_from_conflicts(items, n, seed=seed, context_template=context_template,
                                               system=system)
        source = str(conflicts) if isinstance(conflicts, (str, Path)) else "conflict items"
        stats = {"n_conflict_items": len(items)}
        replace_idx = rng.sample(range(len(examples)), n) if mode == "replace" else []
    drop = set(replace_idx) if mode == "replace" else set()
    base = [ex for i, ex in enumerate(examples) if i not in drop]
    return AugmentReport(examples=_interleave(base, added, rng), added=added,
                         replaced=[examples[i] for i in sorted(drop)], n_original=len(examples),
                         fraction=fraction, mode=mode, source=source, seed=seed, stats=stats)
