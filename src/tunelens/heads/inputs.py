"""Turn what a user has (a data file, examples, tokenized examples, ready batches) into loss batches.

Every batch is a dict with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where no loss is taken),
following :mod:`tunelens.data.labels`: the loss of a sample is ``CE(logits[t-1], labels[t])`` over its response
tokens only (the chat rendering's trained mask, ``train_on="assistant"`` by default).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunelens.data import (
    IGNORE_INDEX,
    Example,
    TokenizedExample,
    collate_padded,
    load_examples,
    tokenize_examples,
)
from tunelens.errors import DataError

__all__ = ["Batch", "as_batches", "per_sample_loss"]

Batch = dict[str, torch.Tensor]


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def _check_batch(batch: Mapping[str, Any], index: int) -> Batch:
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
        raise DataError(f"batch {index}: expected a mapping with 'input_ids' and 'labels' (and optionally "
                        f"'attention_mask'), got {type(batch).__name__}.")
    ids = torch.as_tensor(batch["input_ids"])
    labels = torch.as_tensor(batch["labels"])
    if ids.dim() != 2 or labels.shape != ids.shape:
        raise DataError(f"batch {index}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must be "
                        f"the same [batch, seq] shape.")
    mask = torch.as_tensor(batch["attention_mask"]) if batch.get("attention_mask") is not None \
        else torch.ones_like(ids)
    return {"input_ids": ids.long(), "attention_mask": mask.long(), "labels": labels.long()}


def as_batches(data: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int = 512,
               limit: int | None = None, train_on: str = "assistant") -> list[Batch]:
    """Loss batches from ``data``: a data file path (any format :func:`tunelens.data.load_examples` reads),
    a sequence of :class:`~tunelens.data.Example` or :class:`~tunelens.data.TokenizedExample`, or an iterable
    of ready batches (dicts with ``input_ids``/``labels``). ``limit`` keeps the first N samples. Samples whose
    response is empty (nothing to take a loss on) are dropped; none left raises :class:`DataError`."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(data, (str, Path)):
        data = load_examples(data, limit=limit).examples
    if isinstance(data, Mapping):
        data = [data]
    items = list(data) if isinstance(data, Iterable) else None
    if not items:
        raise DataError("No data: give a data file, examples, tokenized examples or batches (got an empty input).")
    if isinstance(items[0], Mapping):
        batches = [_check_batch(b, i) for i, b in enumerate(items)]
        batches = _limit_batches(batches, limit)
    else:
        batches = _from_examples(items, tokenizer, batch_size, max_length, limit, train_on)
    batches = [b for b in batches if bool((b["labels"] != IGNORE_INDEX).any())]
    if not batches:
        raise DataError("No trainable response tokens in the data: every sample's labels are -100. The loss is "
                        "taken on assistant turns only; check that the examples have assistant responses and "
                        "that max_length does not cut them off.")
    return batches


def _limit_batches(batches: list[Batch], limit: int | None) -> list[Batch]:
    if limit is None:
        return batches
    out, left = [], limit
    for b in batches:
        if left <= 0:
            break
        out.append({k: v[:left] for k, v in b.items()})
        left -= out[-1]["input_ids"].shape[0]
    return out


def _from_examples(items: Sequence[Any], tokenizer: Any, batch_size: int, max_length: int, limit: int | None,
                   train_on: str) -> list[Batch]:
    if limit is not None:
        items = items[:limit]
    if all(isinstance(x, TokenizedExample) for x in items):
        toks = [x for x in items if sum(x.trained_mask[1:]) > 0]
    elif all(isinstance(x, Example) for x in items):
        toks, _ = tokenize_examples(items, tokenizer, max_length=max_length, train_on=train_on)  # type: ignore
    else:
        kinds = sorted({type(x).__name__ for x in items})
        raise DataError(f"Cannot use items of type {kinds}: give Examples, TokenizedExamples or batch dicts.")
    toks = [t if len(t) <= max_length else TokenizedExample(t.input_ids[:max_length], t.trained_mask[:max_length],
                                                            t.source) for t in toks]
    pad = _pad_id(tokenizer)
    return [collate_padded(toks[i:i + batch_size], pad) for i in range(0, len(toks), batch_size)]


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Response loss of each sample, ``[batch]``: the mean (``"mean"``) or sum (``"sum"``) of
    ``CE(logits[:, t-1], labels[:, t])`` over the sample's labelled tokens (computed in float32 or better, on the
    labelled positions only, so the vocabulary-sized buffers are as small as the responses)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows = keep.nonzero(as_tuple=True)[0]
    selected = logits[:, :-1][keep]
    if selected.dtype in (torch.float16, torch.bfloat16):
        selected = selected.float()
    ce = torch.nn.functional.cross_entropy(selected, targets[keep], reduction="none")
    total = torch.zeros(labels.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    if reduction == "sum":
        return total
    return total / keep.sum(-1).clamp_min(1).to(ce.dtype)
