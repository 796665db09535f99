"""Turn packed rows or single examples into batches of tensors."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from tunelens.data.labels import IGNORE_INDEX, make_labels
from tunelens.data.packing import PackedRow

__all__ = ["collate_packed", "collate_padded", "count_trained_tokens"]


class _Tokenized(Protocol):
    input_ids: list[int]
    trained_mask: list[int]


def collate_packed(rows: Sequence[PackedRow], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """``input_ids``, ``labels``, ``position_ids`` of shape (len(rows), L), no ``attention_mask``.

    ``L`` is the longest row, or ``pad_to``. Right padding forms its own segment (positions
    restart at 0, labels ``-100``), so transformers' packed-sequence detection keeps it apart.
    Call the model with ``use_cache=False``: a KV cache turns the packed detection off.
    """
    if not rows:
        raise ValueError("collate_packed: no rows")
    longest = max(len(r) for r in rows)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
    ids, labels, pos = [], [], []
    for r in rows:
        pad = width - len(r)
        ids.append(r.input_ids + [pad_id] * pad)
        labels.append(r.labels + [IGNORE_INDEX] * pad)
        pos.append(r.position_ids + list(range(pad)))
    return {"input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long)}


def collate_padded(
    examples: Sequence[_Tokenized], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Unpacked batch, right-padded: ``input_ids``, ``attention_mask``, ``labels`` (-100 on pads)."""
    if not examples:
        raise ValueError("collate_padded: no examples")
    width = max(len(ex.input_ids) for ex in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids, mask, labels = [], [], []
    for ex in examples:
        n, pad = len(ex.input_ids), width - len(ex.input_ids)
        ids.append(list(ex.input_ids) + [pad_id] * pad)
        mask.append([1] * n + [0] * pad)
        labels.append(make_labels(ex.input_ids, ex.trained_mask) + [IGNORE_INDEX] * pad)
    return {"input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long)}


def count_trained_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Number of loss targets in a batch (``labels != -100``)."""
    return int((batch["labels"] != IGNORE_INDEX).sum().item())
