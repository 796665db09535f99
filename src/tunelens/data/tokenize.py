"""``tokenize_examples``: render examples with the chat template, truncate, count."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tunelens.data.labels import n_targets
from tunelens.data.schemas import Example
from tunelens.errors import DataError, TunelensError

__all__ = ["TokenizeReport", "TokenizedExample", "tokenize_examples"]


@dataclass
class TokenizedExample:
    """One rendered example: token ids, which of them are trained (1) and where it came from."""

    input_ids: list[int]
    trained_mask: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeReport:
    """Counts from :func:`tokenize_examples`; JSON-serialisable through ``dataclasses.asdict``.

    ``n_trained_tokens`` counts loss targets (trained tokens except each example's first).
    """

    n_examples: int = 0
    n_kept: int = 0
    n_truncated: int = 0
    n_dropped_too_long: int = 0
    n_dropped_no_trained_tokens: int = 0
    n_tokens: int = 0
    n_trained_tokens: int = 0
    max_length: int = 0
    train_on: str = "assistant"
    truncation: str = "right"
    truncated_sources: list[str] = field(default_factory=list)
    dropped_too_long_sources: list[str] = field(default_factory=list)
    dropped_no_trained_sources: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a log."""
        return (f"tokenized {self.n_examples} examples (max_length={self.max_length}, "
                f"train_on={self.train_on}): kept {self.n_kept}, truncated {self.n_truncated}, "
                f"dropped {self.n_dropped_too_long} too long and {self.n_dropped_no_trained_tokens} "
                f"with no trained tokens; {self.n_tokens} tokens, {self.n_trained_tokens} trained")


def _progress(items: Sequence[Example]) -> Any:
    if len(items) < 2000 or os.environ.get("CI"):
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return items
    return tqdm(items, desc="tokenize", unit="ex")


def _render(example: Example, tokenizer: Any, train_on: str) -> tuple[list[int], list[int]]:
    from tunelens.chat import render

    try:
        rendered = render(example.messages, tokenizer, train_on=train_on)
    except TunelensError as e:
        raise type(e)(f"{example.source}: {e}") from e
    ids, mask = list(rendered.input_ids), [int(m) for m in rendered.trained_mask]
    if len(ids) != len(mask):
        raise DataError(f"{example.source}: render returned {len(ids)} ids but {len(mask)} mask values")
    return ids, mask


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int,
    train_on: Literal["assistant", "last", "all"] = "assistant",
    truncation: Literal["right", "drop"] = "right",
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Render every example with ``tunelens.chat.render`` and fit it into ``max_length``.

    ``truncation="right"`` keeps the first ``max_length`` tokens, ``"drop"`` drops over-long
    examples; both are counted in the report with the sources affected. Examples left with no
    loss target are dropped and counted. Raises :class:`DataError` if nothing is trainable.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if truncation not in ("right", "drop"):
        raise ValueError(f"truncation must be 'right' or 'drop', got {truncation!r}")
    if not examples:
        raise DataError("tokenize_examples: no examples to tokenize")
    report = TokenizeReport(n_examples=len(examples), max_length=max_length, train_on=train_on,
                            truncation=truncation)
    out: list[TokenizedExample] = []
    for ex in _progress(examples):
        ids, mask = _render(ex, tokenizer, train_on)
        if len(ids) > max_length:
            if truncation == "drop":
                report.n_dropped_too_long += 1
                report.dropped_too_long_sources.append(ex.source)
                continue
            ids, mask = ids[:max_length], mask[:max_length]
            report.n_truncated += 1
            report.truncated_sources.append(ex.source)
        n_trained = n_targets(mask)
        if n_trained == 0:
            report.n_dropped_no_trained_tokens += 1
            report.dropped_no_trained_sources.append(ex.source)
            continue
        out.append(TokenizedExample(ids, mask, ex.source))
        report.n_tokens += len(ids)
        report.n_trained_tokens += n_trained
    report.n_kept = len(out)
    if report.n_trained_tokens == 0:
        raise DataError(
            f"no trainable tokens in {len(examples)} examples ({report.summary()}). Likely causes: "
            f"train_on={train_on!r} selects no tokens (try 'assistant' or 'all'); the chat template "
            f"renders no assistant turns (check the examples' roles and the tokenizer's template); "
            f"max_length={max_length} is too small, so truncation cuts off every answer "
            f"(raise it, or use truncation='drop' to see how many are too long)")
    return out, report
