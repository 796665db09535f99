"""Pack whole tokenized examples into rows of at most ``max_length`` tokens.

Position ids restart at 0 for every example. With ``attention_mask=None`` (and no KV cache:
call the model with ``use_cache=False``), transformers' ``find_packed_sequence_indices``
(``masking_utils``) reads the restarts and builds a block-diagonal causal mask for the SDPA
and eager attention paths, so examples in one row do not see each other.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tunelens.data.labels import make_labels
from tunelens.errors import DataError

__all__ = ["PackedRow", "pack_examples"]


class _Tokenized(Protocol):
    input_ids: list[int]
    trained_mask: list[int]
    source: str


@dataclass
class PackedRow:
    """Several whole examples laid end to end (no padding; :func:`collate_packed` pads)."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    seq_lengths: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # positions of the examples in the input list

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, example: _Tokenized, index: int) -> None:
        """Append one example."""
        n = len(example.input_ids)
        self.input_ids.extend(example.input_ids)
        self.labels.extend(make_labels(example.input_ids, example.trained_mask))
        self.position_ids.extend(range(n))
        self.seq_lengths.append(n)
        self.sources.append(example.source)
        self.indices.append(index)


def _first_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """First fit in input order, O(n log n) with a max segment tree over row capacities."""
    n = len(lengths)
    size = 1
    while size < n:
        size *= 2
    tree = [0] * (2 * size)
    for i in range(n):  # rows not opened yet hold the full capacity: opening is "leftmost fit"
        tree[size + i] = max_length
    for i in range(size - 1, 0, -1):
        tree[i] = max(tree[2 * i], tree[2 * i + 1])
    rows: list[list[int]] = []
    for idx, length in enumerate(lengths):
        node = 1
        while node < size:  # descend to the leftmost leaf with capacity >= length
            node = 2 * node if tree[2 * node] >= length else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
        rows[row].append(idx)
        tree[node] -= length
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return rows


def _best_fit_decreasing(lengths: list[int], max_length: int) -> list[list[int]]:
    """Longest first (ties: lower index first), each into the fullest row it fits (ties: older row)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, row index)
    rows: list[list[int]] = []
    for idx in order:
        length = lengths[idx]
        pos = bisect.bisect_left(free, (length, -1))
        if pos == len(free):
            row, remaining = len(rows), max_length
            rows.append([])
        else:
            remaining, row = free.pop(pos)
        rows[row].append(idx)
        remaining -= length
        if remaining > 0:
            bisect.insort(free, (remaining, row))
    return rows


def pack_examples(
    examples: Sequence[_Tokenized], max_length: int, strategy: Literal["bfd", "greedy"] = "bfd"
) -> list[PackedRow]:
    """Pack examples into rows of at most ``max_length`` tokens, deterministically.

    ``"bfd"``: best-fit decreasing (fewest rows in practice). ``"greedy"``: first fit in
    input order (keeps the order within and across rows). An example longer than
    ``max_length`` is a :class:`DataError`: truncate it in ``tokenize_examples`` first.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if strategy not in ("bfd", "greedy"):
        raise ValueError(f"strategy must be 'bfd' or 'greedy', got {strategy!r}")
    lengths = [len(ex.input_ids) for ex in examples]
    for ex, n in zip(examples, lengths):
        if n > max_length:
            raise DataError(f"{ex.source}: example has {n} tokens, more than the packing "
                            f"max_length={max_length}; truncate it in tokenize_examples first")
        if n == 0:
            raise DataError(f"{ex.source}: example has no tokens")
    groups = (_best_fit_decreasing if strategy == "bfd" else _first_fit)(lengths, max_length)
    rows = []
    for group in groups:
        row = PackedRow()
        for idx in group:
            row.add(examples[idx], idx)
        rows.append(row)
    return rows
