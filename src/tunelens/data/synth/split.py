"""Split a passage into the user turn (its first part) and the real continuation.

The split point is ``round(ratio * n)`` units (tokens, words or sentences) into the passage, clamped to
``[min_prompt, max_prompt]`` units, and always leaves at least ``min_continuation`` units after it. A token
split is moved forward to the next word boundary so no word is cut in two. ``max_continuation`` (units) cuts
the real continuation (what the ``gold`` teacher returns). Passages that cannot satisfy the bounds are "too
short" and are counted, not split.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from tunelens.data.synth.chunk import sentence_ends
from tunelens.errors import ConfigError

__all__ = ["SplitConfig", "Split", "split_passage", "unit_boundaries"]

UNITS = ("tokens", "words", "sentences")
_WORD_END = re.compile(r"\S+")


@dataclass
class SplitConfig:
    unit: str = "words"  # tokens | words | sentences
    ratio: float = 0.5  # share of the passage (in units) that becomes the user turn
    min_prompt: int = 16  # units in the user turn, at least ...
    max_prompt: Optional[int] = None  # ... and at most (None: no cap)
    min_continuation: int = 16  # units left after the split, at least
    max_continuation: Optional[int] = None  # cut the real continuation to this many units (None: keep all)

    def validate(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"split.unit must be one of {UNITS}, got {self.unit!r}")
        if not 0 < self.ratio < 1:
            raise ConfigError(f"split.ratio must be in (0, 1), got {self.ratio}")
        if self.min_prompt < 1 or self.min_continuation < 1:
            raise ConfigError("split.min_prompt and split.min_continuation must be >= 1")
        if self.max_prompt is not None and self.max_prompt < self.min_prompt:
            raise ConfigError("split.max_prompt must be >= split.min_prompt")


@dataclass(frozen=True)
class Split:
    prompt: str
    continuation: str
    char: int  # split offset in the passage
    index: int  # units in the user turn
    total: int  # units in the passage

    def provenance(self, cfg: SplitConfig) -> dict[str, Any]:
        return {"unit": cfg.unit, "ratio": cfg.ratio, "index": self.index, "total": self.total, "char": self.char}


def unit_boundaries(text: str, unit: str, tokenizer: Any = None) -> list[int]:
    """Character offsets just after each unit of ``text`` (the last one is the end of its last unit)."""
    if unit == "words":
        return [m.end() for m in _WORD_END.finditer(text)]
    if unit == "sentences":
        ends = [e for e in sentence_ends(text + " ") if e <= len(text.rstrip())]
        tail = len(text.rstrip())
        return ends + ([tail] if not ends or ends[-1] < tail else [])
    if unit == "tokens":
        if tokenizer is None:
            raise ConfigError("split.unit=tokens needs a tokenizer")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [b for _, b in enc["offset_mapping"]]
    raise ConfigError(f"split.unit must be one of {UNITS}, got {unit!r}")


def split_passage(text: str, cfg: SplitConfig, tokenizer: Any = None) -> Split | None:
    """The split of one passage, or None if it is too short for the configured bounds."""
    bounds = unit_boundaries(text, cfg.unit, tokenizer)
    n = len(bounds)
    k = round(cfg.ratio * n)
    k = max(k, cfg.min_prompt)
    if cfg.max_prompt is not None:
        k = min(k, cfg.max_prompt)
    k = min(k, n - cfg.min_continuation)
    if k < cfg.min_prompt:
        return None
    pos = bounds[k - 1]
    if cfg.unit == "tokens":  # move to the end of the word the k-th token ends inside
        while pos < len(text) and not text[pos].isspace():
            pos += 1
    prompt, rest = text[:pos].rstrip(), text[pos:].strip()
    if not prompt or not rest:
        return None
    if cfg.max_continuation is not None:
        rb = unit_boundaries(rest, cfg.unit, tokenizer)
        if len(rb) > cfg.max_continuation:
            rest = rest[:rb[cfg.max_continuation - 1]].rstrip()
    return Split(prompt, rest, pos, k, n)
