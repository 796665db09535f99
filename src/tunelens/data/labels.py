"""The labels convention shared by packing and collation.

The trainer computes next-token loss as ``CE(logits[:, t-1], labels[:, t])``. ``labels[t]``
is ``input_ids[t]`` where ``trained_mask[t] == 1`` and ``t`` is not the first token of its
example, else ``IGNORE_INDEX``. Never targeting an example's first token is what makes a
packed row's loss equal the sum of its examples' unpacked losses.
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IGNORE_INDEX", "make_labels", "n_targets"]

IGNORE_INDEX = -100


def make_labels(input_ids: Sequence[int], trained_mask: Sequence[int]) -> list[int]:
    """Labels of one example (see the module docstring)."""
    if len(input_ids) != len(trained_mask):
        raise ValueError(f"input_ids ({len(input_ids)}) and trained_mask ({len(trained_mask)}) differ in length")
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(input_ids, trained_mask)]
    if labels:
        labels[0] = IGNORE_INDEX
    return labels


def n_targets(trained_mask: Sequence[int]) -> int:
    """Number of loss targets of one example: trained tokens except the first token."""
    return int(sum(1 for m in trained_mask[1:] if m))
