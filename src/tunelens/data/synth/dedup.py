"""Exact and near-duplicate removal. Near duplicates: MinHash over word shingles with LSH (``datasketch``).

Passages are processed in order; a passage is a duplicate if its normalised text hashes like an earlier kept
one (exact), or if LSH finds an earlier kept passage whose estimated Jaccard similarity is at least
``threshold`` (near). The first occurrence is kept, so the result is deterministic for a given input order.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

from tunelens.data.synth.chunk import Passage
from tunelens.errors import ConfigError

__all__ = ["DedupConfig", "Duplicate", "deduplicate", "shingles"]

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of word shingles
    num_perm: int = 128
    shingle_words: int = 5
    seed: int = 1

    def validate(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError("dedup.threshold must be in (0, 1]")
        if self.shingle_words < 1 or self.num_perm < 16:
            raise ConfigError("dedup: shingle_words must be >= 1 and num_perm >= 16")


@dataclass(frozen=True)
class Duplicate:
    passage_id: str
    duplicate_of: str
    kind: str  # "exact" | "near"
    similarity: float


def shingles(text: str, n: int) -> set[bytes]:
    """Lower-cased word n-grams (the whole text as one shingle when it has fewer than n words)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def _exact_key(text: str) -> str:
    return hashlib.sha256(" ".join(_WORD.findall(text.lower())).encode()).hexdigest()


def deduplicate(passages: Sequence[Passage], cfg: DedupConfig) -> tuple[list[Passage], list[Duplicate]]:
    """(kept passages in order, the removed ones with what they duplicate)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm) if cfg.near else None
    sketches: dict[str, MinHash] = {}
    seen: dict[str, str] = {}
    kept: list[Passage] = []
    removed: list[Duplicate] = []
    for p in passages:
        pid = p.passage_id
        if cfg.exact:
            key = _exact_key(p.text)
            if key in seen:
                removed.append(Duplicate(pid, seen[key], "exact", 1.0))
                continue
        if lsh is not None:
            mh = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            mh.update_batch(list(shingles(p.text, cfg.shingle_words)))
            best = max(((sketches[c].jaccard(mh), c) for c in lsh.query(mh)), default=None)
            if best is not None and best[0] >= cfg.threshold:
                removed.append(Duplicate(pid, best[1], "near", round(best[0], 4)))
                continue
            lsh.insert(pid, mh)
            sketches[pid] = mh
        if cfg.exact:
            seen[key] = pid
        kept.append(p)
    return kept, removed
