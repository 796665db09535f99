"""Where an example's *context* is, and the example without it (the rule curation and augmentation share).

The rule, applied to the **last user turn before the last assistant turn** (the turn the target answers):

1. ``meta[context_key]`` and ``meta[question_key]`` are both strings (``context_qa`` records, where the loader
   stores them, and ``alpaca`` records with a non-empty ``input``, stored as context = input and
   question = instruction): the no-context user turn is **the question alone**. The context must appear
   verbatim in that user turn.
2. Only ``meta[context_key]`` is a string (any schema: a record's own extra field named ``context`` ends up in
   ``meta``): the no-context user turn is the user turn with the context string removed (its first occurrence;
   the whitespace left at the seam is collapsed). The context must appear verbatim in that user turn.
3. Neither: the example has no marked context. ``missing="error"`` raises :class:`DataError` naming the
   example's source; ``missing="as_is"`` treats it as context-free (scored as it stands).

Earlier turns (system prompt, previous exchanges) are kept unchanged. An empty context string counts as no
context (rule 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tunelens.data.schemas import Example
from tunelens.errors import DataError

__all__ = [
    "ANSWER_KEY",
    "CONTEXT_KEY",
    "MISSING_POLICIES",
    "QUESTION_KEY",
    "ContextSpec",
    "ContextSplit",
    "example_id",
    "find_context",
    "target_turn",
    "without_context",
]

CONTEXT_KEY = "context"
QUESTION_KEY = "question"
ANSWER_KEY = "answer"
MISSING_POLICIES = ("error", "as_is")


@dataclass(frozen=True)
class ContextSpec:
    """Which ``Example.meta`` keys hold the context, the question and the answer, and what to do without one."""

    context_key: str = CONTEXT_KEY
    question_key: str = QUESTION_KEY
    answer_key: str = ANSWER_KEY
    missing: Literal["error", "as_is"] = "error"

    def __post_init__(self) -> None:
        if self.missing not in MISSING_POLICIES:
            raise DataError(f"missing-context policy must be one of {MISSING_POLICIES}, got {self.missing!r}")


@dataclass
class ContextSplit:
    """An example's target user turn (index into ``messages``), its context and question (None if unmarked)."""

    user_index: int
    context: str | None
    question: str | None


def target_turn(example: Example) -> tuple[int, int]:
    """(index of the last assistant message, index of the last user message before it)."""
    msgs = example.messages
    a = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i]["role"] == "assistant"), None)
    if a is None:
        raise DataError(f"{example.source}: no assistant turn, so there is no target to score")
    u = next((i for i in range(a - 1, -1, -1) if msgs[i]["role"] == "user"), None)
    if u is None:
        raise DataError(f"{example.source}: no user turn before the last assistant turn")
    return a, u


def _meta_str(example: Example, key: str) -> str | None:
    value = example.meta.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{example.source}, field {key!r}: must be a string to mark the context, "
                        f"got {type(value).__name__}")
    return value if value.strip() else None


def find_context(example: Example, spec: ContextSpec | None = None) -> ContextSplit:
    """Locate the context of ``example`` by the module's rule; errors name the source and field."""
    spec = spec or ContextSpec()
    _, u = target_turn(example)
    context = _meta_str(example, spec.context_key)
    if context is None:
        if spec.missing == "error":
            raise DataError(f"{example.source}, field {spec.context_key!r}: missing or empty, so the example's "
                            f"context is unknown. Load a context_qa file, add a {spec.context_key!r} field "
                            f"holding the context text as it appears in the user turn, or use "
                            f"missing='as_is' (CLI: --missing-context as_is) to score such examples as context-free")
        return ContextSplit(u, None, None)
    if context not in example.messages[u]["content"]:
        raise DataError(f"{example.source}, field {spec.context_key!r}: the context does not appear verbatim "
                        f"in the user turn (messages[{u}].content), so it cannot be removed")
    return ContextSplit(u, context, _meta_str(example, spec.question_key))


def _remove(content: str, context: str) -> str:
    """``content`` without the first occurrence of ``context``; the seam becomes a blank line if the
    whitespace around the context held a newline, else one space."""
    i = content.index(context)
    before, after = content[:i], content[i + len(context):]
    gap = before[len(before.rstrip()):] + after[: len(after) - len(after.lstrip())]
    sep = "\n\n" if "\n" in gap else " "
    parts = [p for p in (before.strip(), after.strip()) if p]
    return sep.join(parts)


def without_context(example: Example, spec: ContextSpec | None = None) -> tuple[list[dict[str, str]], bool]:
    """(messages up to the last assistant turn with the context removed, whether a context was removed)."""
    spec = spec or ContextSpec()
    a, _ = target_turn(example)
    split = find_context(example, spec)
    msgs = [dict(m) for m in example.messages[: a + 1]]
    if split.context is None:
        return msgs, False
    user = msgs[split.user_index]["content"]
    new = split.question if split.question is not None else _remove(user, split.context)
    if not new.strip():
        raise DataError(f"{example.source}: the user turn is empty once the context is removed; nothing "
                        f"is left to condition on (give a {spec.question_key!r} field)")
    msgs[split.user_index]["content"] = new
    return msgs, True


def example_id(example: Example) -> Any:
    """The record's own ``id`` if it has one, else its source (``path:line``)."""
    value = example.meta.get("id")
    return value if isinstance(value, (str, int)) else example.source
