"""Data: load and validate records, tokenize with the chat template, pack and collate.

Labels convention (see :mod:`tunelens.data.labels`): ``labels[t] = input_ids[t]`` where the
token is trained and is not the first token of its example, else ``-100``; the trainer's loss
is ``CE(logits[:, t-1], labels[:, t])``.
"""
from __future__ import annotations

from tunelens.data.collate import collate_packed, collate_padded, count_trained_tokens
from tunelens.data.labels import IGNORE_INDEX, make_labels
from tunelens.data.loaders import LoadReport, Rejected, load_examples
from tunelens.data.packing import PackedRow, pack_examples
from tunelens.data.schemas import Example
from tunelens.data.tokenize import TokenizedExample, TokenizeReport, tokenize_examples

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "LoadReport",
    "PackedRow",
    "Rejected",
    "TokenizeReport",
    "TokenizedExample",
    "collate_packed",
    "collate_padded",
    "count_trained_tokens",
    "load_examples",
    "make_labels",
    "pack_examples",
    "tokenize_examples",
]
