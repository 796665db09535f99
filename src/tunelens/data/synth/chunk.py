"""Chunking: cut a document into passages of about ``passage_tokens`` tokens, at natural boundaries.

The document is tokenized once (with character offsets). From each passage start, the cut goes at the last
paragraph end within ``[start + passage_tokens * min_fill, start + passage_tokens]``, else the last sentence end
in that window, else exactly at ``passage_tokens`` tokens. A final piece shorter than ``min_tokens`` is dropped
and counted; a document shorter than ``min_tokens`` gives no passage (a "short document").
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Optional

from tunelens.errors import ConfigError

__all__ = ["ChunkConfig", "Passage", "chunk_document", "load_tokenizer", "sentence_ends"]

_PARA_END = re.compile(r"\S(?=\n\s*\n)")
_SENT_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s)")


@dataclass
class ChunkConfig:
    tokenizer: str = "smollm2-135m-instruct"  # preset, HF dir or cached id; the teacher's by default
    passage_tokens: int = 256  # target passage length
    min_tokens: int = 64  # shorter passages/documents are dropped (and counted)
    min_fill: float = 0.6  # a boundary cut must keep at least this share of passage_tokens
    max_passages_per_document: Optional[int] = None  # first N passages of each document (None: all)

    def validate(self) -> None:
        if not 0 < self.min_tokens <= self.passage_tokens:
            raise ConfigError("chunk: need 0 < min_tokens <= passage_tokens")
        if not 0 < self.min_fill <= 1:
            raise ConfigError("chunk.min_fill must be in (0, 1]")


@dataclass(frozen=True)
class Passage:
    source_id: str
    index: int  # passage number within its document
    text: str
    n_tokens: int
    char_start: int  # offset in the cleaned document

    @property
    def passage_id(self) -> str:
        return f"{self.source_id}#p{self.index}"


def load_tokenizer(spec: str) -> Any:
    """A tokenizer for ``spec`` without loading weights when possible (presets build their model once)."""
    from tunelens.models import PRESETS

    if spec in PRESETS:
        from tunelens.models import load_model

        return load_model(spec)[1]
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"chunk.tokenizer: cannot load a tokenizer for {spec!r} offline ({exc})") from exc


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence end (``.``, ``!``, ``?`` plus closing quotes/brackets)."""
    return [m.end() for m in _SENT_END.finditer(text)]


def _token_after(ends: list[int], char_pos: int) -> int:
    """Number of tokens whose text ends at or before ``char_pos``."""
    return bisect.bisect_right(ends, char_pos)


def chunk_document(source_id: str, text: str, tokenizer: Any, cfg: ChunkConfig) -> tuple[list[Passage], int]:
    """(passages, number of dropped short tail pieces) of one cleaned document."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = [(a, b) for a, b in enc["offset_mapping"]]
    n = len(offsets)
    if n < cfg.min_tokens:
        return [], 0
    ends = [b for _, b in offsets]
    para = sorted({_token_after(ends, m.end()) for m in _PARA_END.finditer(text)})
    sent = sorted({_token_after(ends, e) for e in sentence_ends(text)})
    passages: list[Passage] = []
    start, dropped = 0, 0
    while start < n:
        hi = min(start + cfg.passage_tokens, n)
        lo = start + max(1, int(cfg.passage_tokens * cfg.min_fill))
        cut = hi if hi == n else _last_in(para, lo, hi) or _last_in(sent, lo, hi) or hi
        a, b = offsets[start][0], offsets[cut - 1][1]
        raw = text[a:b]
        piece = raw.strip()
        if cut - start >= cfg.min_tokens and piece:
            lead = len(raw) - len(raw.lstrip())
            passages.append(Passage(source_id, len(passages), piece, cut - start, a + lead))
        else:
            dropped += 1
        start = cut
        if cfg.max_passages_per_document and len(passages) >= cfg.max_passages_per_document:
            break
    return passages, dropped


def _last_in(points: list[int], lo: int, hi: int) -> int | None:
    """The largest point in [lo, hi], or None."""
    i = bisect.bisect_right(points, hi)
    return points[i - 1] if i and points[i - 1] >= lo else None
