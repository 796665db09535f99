"""Needle-in-a-haystack material ([B] §2.1; gkamradt/LLMTest_NeedleInAHaystack).

* :func:`load_needles` / :func:`load_multi_needles` read ``haystack/needles.json``;
* :func:`haystack_text` is the 49 Paul Graham essays joined in sorted file-name order;
* :func:`build_haystack` cuts the haystack to a token budget, inserts the needle(s) at a
  depth and returns a :class:`HaystackCase`;
* :func:`haystack_grid` / :func:`paper_grid` enumerate (context length, depth) pairs.

Insertion follows gkamradt's ``insert_needle``: the haystack is truncated so that haystack +
needle fit the requested token count, the insertion point is ``depth`` of the way through the
haystack's tokens, and it backs off to the previous sentence end. Two deliberate differences:
the back-off works on characters, not on period *tokens* (so it does not depend on how a
tokenizer merges "." with its neighbours), and a sentence end is a "." followed by whitespace,
a closing quote/bracket, an upper-case letter (the scraped essays lose paragraph breaks:
"predecessors.Most") or the end of the text, and not closing a one-letter word -- so "e.g.",
"U.S." and "3.5" are not split. Depth 1.0
appends the needle after the whole haystack; depth 0.0 puts it first. With several needles
(multi-needle mode) needle ``i`` goes at ``depth + i * (1 - depth) / n``, as upstream.

Everything is deterministic: no randomness, sorted files.
"""
from __future__ import annotations

import bisect
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelens.errors import DataError
from tunelens.probes.items import shared_data_dir

__all__ = [
    "PAPER_B_KEYWORDS",
    "HaystackCase",
    "MultiNeedle",
    "Needle",
    "build_haystack",
    "haystack_grid",
    "haystack_text",
    "load_multi_needles",
    "load_needles",
    "paper_grid",
]

#: [B]'s recall words (``needle_config.py``, ``substr_validation_words``) by needle id; they
#: include "eat" and "sit", which the phrase keywords of needles.json leave out.
PAPER_B_KEYWORDS: dict[str, tuple[str, ...]] = {
    "sf_sandwich": ("eat", "sandwich", "sit", "dolores", "park", "sunny", "day"),
}


def _words(phrases: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for p in phrases:
        for w in re.sub(r"[^\w\s]|_", " ", p.lower()).split():
            if w not in out:
                out.append(w)
    return tuple(out)


@dataclass(frozen=True)
class Needle:
    """One needle sentence, the question that retrieves it, its answer and keywords.

    ``keywords`` are the phrases of needles.json ("Dolores Park"); ``recall_words`` the
    single words :func:`~tunelens.probes.metrics.keyword_recall` scores, [B]'s list when the
    needle is one of [B]'s (:data:`PAPER_B_KEYWORDS`), else the words of ``keywords``.
    """

    id: str
    text: str
    question: str
    answer: str
    keywords: tuple[str, ...]
    source: str

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.text,)

    @property
    def recall_words(self) -> tuple[str, ...]:
        return PAPER_B_KEYWORDS.get(self.id) or _words(self.keywords)


@dataclass(frozen=True)
class MultiNeedle:
    """Several needle sentences answering one question (multi-needle mode)."""

    id: str
    texts: tuple[str, ...]
    question: str
    keywords: tuple[str, ...]
    source: str

    @property
    def recall_words(self) -> tuple[str, ...]:
        return PAPER_B_KEYWORDS.get(self.id) or _words(self.keywords)


@dataclass(frozen=True)
class HaystackCase:
    """One needle-in-a-haystack test.

    ``context`` is the haystack with the needle(s) inside; ``keywords`` the words recall is
    scored on (``needle.recall_words``); ``context_tokens`` the requested and
    ``actual_tokens`` the real token count of ``context`` (no special tokens);
    ``needle_starts`` the character offsets of the needle(s) in ``context`` and
    ``inserted_depths`` where they really landed, as a fraction of the haystack's tokens
    (after the sentence back-off).
    """

    context: str
    needle: Needle | MultiNeedle
    question: str
    keywords: tuple[str, ...]
    depth: float
    context_tokens: int
    actual_tokens: int
    needle_starts: tuple[int, ...]
    inserted_depths: tuple[float, ...]

    def to_dict(self, *, with_context: bool = False) -> dict[str, Any]:
        """JSON-ready summary (the context text only when asked: it is long)."""
        d = asdict(self)
        d["needle_id"] = self.needle.id
        del d["needle"]
        if not with_context:
            del d["context"]
        return d


# --------------------------------------------------------------------------- needles

def _needles_doc(shared_dir: str | Path | None) -> tuple[Path, dict[str, Any]]:
    path = shared_data_dir(shared_dir) / "haystack" / "needles.json"
    if not path.is_file():
        raise DataError(f"{path}: needles file not found")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}, column {e.colno}: malformed JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'single_needle' and 'multi_needle' lists")
    return path, doc


def _field(path: Path, where: str, rec: dict[str, Any], name: str, kind: type) -> Any:
    value = rec.get(name)
    if not isinstance(value, kind) or (kind is str and not value.strip()) or (kind is list and not value):
        raise DataError(f"{path}, {where}, field {name!r}: must be a non-empty "
                        f"{'string' if kind is str else 'list'}, got {value!r:.60}")
    if kind is list:
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{path}, {where}, field '{name}[{i}]': must be a non-empty string, got {v!r:.60}")
        return tuple(value)
    return value


def _records(path: Path, doc: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    recs = doc.get(key)
    if not isinstance(recs, list):
        raise DataError(f"{path}: key {key!r} must hold a list of needle records")
    out = []
    for i, rec in enumerate(recs):
        where = f"{key}[{i}] (0-based record index)"
        if not isinstance(rec, dict):
            raise DataError(f"{path}, {where}: must be an object")
        out.append((where, rec))
    return out


def load_needles(shared_dir: str | Path | None = None) -> list[Needle]:
    """The single needles of ``haystack/needles.json`` in file order (the first is [B]'s SF needle)."""
    path, doc = _needles_doc(shared_dir)
    out = []
    for where, rec in _records(path, doc, "single_needle"):
        out.append(Needle(_field(path, where, rec, "id", str), _field(path, where, rec, "needle", str),
                          _field(path, where, rec, "question", str), _field(path, where, rec, "answer", str),
                          _field(path, where, rec, "keywords", list), str(rec.get("source", ""))))
    return out


def load_multi_needles(shared_dir: str | Path | None = None) -> list[MultiNeedle]:
    """The multi-needle records of ``haystack/needles.json`` in file order."""
    path, doc = _needles_doc(shared_dir)
    out = []
    for where, rec in _records(path, doc, "multi_needle"):
        out.append(MultiNeedle(_field(path, where, rec, "id", str), _field(path, where, rec, "needles", list),
                               _field(path, where, rec, "question", str), _field(path, where, rec, "keywords", list),
                               str(rec.get("source", ""))))
    return out


# --------------------------------------------------------------------------- haystack

@functools.lru_cache(maxsize=4)
def _essays(folder: Path) -> str:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no essay files (*.txt) found")
    parts = []
    for f in files:
        data = f.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise DataError(f"{f}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
        parts.append(text.replace("\r\n", "\n").strip())
    return "\n\n".join(p for p in parts if p)


def haystack_text(shared_dir: str | Path | None = None) -> str:
    """The Paul Graham essays, each stripped, joined with a blank line in sorted file-name order."""
    return _essays(shared_data_dir(shared_dir) / "haystack" / "essays")


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:  # verbose=False: no "sequence length is longer than the maximum" warning for long haystacks
        return list(tokenizer.encode(text, add_special_tokens=False, verbose=False))
    except TypeError:
        return list(tokenizer.encode(text, add_special_tokens=False))


def _prefix_ids(tokenizer: Any, text: str, n: int) -> list[int]:
    """Token ids of a prefix of ``text`` (repeated if it is too short) holding at least ``n`` tokens."""
    chars = max(256, n * 6)
    while True:
        if chars > len(text):
            reps = chars // len(text) + 1
            source = "\n\n".join([text] * reps)  # upstream repeats the essays when they run out
        else:
            source = text
        ids = _encode(tokenizer, source[:chars])
        if len(ids) > n + 1:  # +1: the last token of a cut prefix may be a partial word
            return ids[:n]
        chars *= 2


class _Offsets:
    """Token start offsets of ``text`` (fast tokenizers), else prefix re-encoding."""

    def __init__(self, tokenizer: Any, text: str):
        self.tokenizer, self.text = tokenizer, text
        self.starts: list[int] | None = None
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            self.starts = [s for s, _ in enc["offset_mapping"]]
            self.n = len(self.starts)
        except (NotImplementedError, KeyError, TypeError, ValueError):
            self.n = len(_encode(tokenizer, text))

    def char_of_token(self, k: int) -> int:
        if k >= self.n:
            return len(self.text)
        if self.starts is not None:
            return self.starts[k]
        lo, hi = 0, len(self.text)  # smallest char p with len(encode(text[:p])) >= k
        while lo < hi:
            mid = (lo + hi) // 2
            if len(_encode(self.tokenizer, self.text[:mid])) >= k:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def tokens_before(self, p: int) -> int:
        if p >= len(self.text):
            return self.n
        if self.starts is not None:
            return bisect.bisect_left(self.starts, p)
        return len(_encode(self.tokenizer, self.text[:p]))


_SENTENCE_END = re.compile(r"\.(?=\s|[\"')\]A-Z]|$)")


def _is_sentence_end(text: str, i: int) -> bool:
    """``text[i] == "."`` ends a sentence, unless it closes a one-letter word ("e.g.", "U.S.")."""
    return not (i >= 1 and text[i - 1].isalpha() and (i == 1 or not text[i - 2].isalnum()))


def _sentence_start_before(text: str, p: int) -> int:
    """Character index just after the last sentence-ending '.' before ``p`` (0 if none)."""
    last = 0
    for m in _SENTENCE_END.finditer(text, 0, p):
        if _is_sentence_end(text, m.start()):
            last = m.end()
    return last


def _assemble(hay: str, cuts: list[int], texts: Sequence[str]) -> tuple[str, list[int]]:
    """``hay`` with ``texts[i]`` inserted at char ``cuts[i]`` (ascending), space-separated."""
    out, starts, prev = "", [], 0
    for cut, needle in zip(cuts, texts):
        out += hay[prev:cut]
        if out and not out[-1].isspace():
            out += " "
        starts.append(len(out))
        out += needle
        prev = cut
    rest = hay[prev:]
    if rest and not rest[0].isspace():
        out += " "
    return out + rest, starts


def build_haystack(tokenizer: Any, context_tokens: int, depth: float, needle: Needle | MultiNeedle, *,
                   haystack: str | None = None, shared_dir: str | Path | None = None) -> HaystackCase:
    """A context of about ``context_tokens`` tokens (haystack + needle) with ``needle`` at ``depth``.

    ``depth`` is in [0, 1] (0 = start, 1 = end). ``haystack`` overrides the essays (tests,
    other corpora). The haystack budget is shrunk until the assembled context has at most
    ``context_tokens`` tokens (re-tokenising at the seams can add one or two), so
    ``actual_tokens`` is ``context_tokens`` or a few tokens less.
    """
    if isinstance(context_tokens, bool) or not isinstance(context_tokens, int) or context_tokens < 1:
        raise ValueError(f"context_tokens must be a positive integer, got {context_tokens!r}")
    if not isinstance(depth, (int, float)) or not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be a number in [0, 1], got {depth!r}")
    depth = float(depth)
    texts = needle.texts
    text = haystack if haystack is not None else haystack_text(shared_dir)
    if not text.strip():
        raise ValueError("haystack text is empty")
    needle_tokens = sum(len(_encode(tokenizer, " " + t)) + 1 for t in texts)  # +1: the separating space
    budget = context_tokens - needle_tokens
    if budget < 1:
        raise ValueError(f"context_tokens={context_tokens} is too small: the needle alone takes about "
                         f"{needle_tokens} tokens")
    ids = _prefix_ids(tokenizer, text, budget)
    n = len(texts)
    depths = [depth + i * (1.0 - depth) / n for i in range(n)]
    for _ in range(8):
        hay = tokenizer.decode(ids[:budget], skip_special_tokens=True)
        offs = _Offsets(tokenizer, hay)
        cuts = []
        for d in depths:
            if d >= 1.0:
                cuts.append(len(hay))
            else:
                cuts.append(_sentence_start_before(hay, offs.char_of_token(int(offs.n * d))))
        context, starts = _assemble(hay, cuts, texts)
        actual = len(_encode(tokenizer, context))
        if actual <= context_tokens or budget <= 1:
            break
        budget = max(1, budget - (actual - context_tokens))
    inserted = tuple((offs.tokens_before(c) / offs.n) if offs.n else 0.0 for c in cuts)
    return HaystackCase(context=context, needle=needle, question=needle.question, keywords=needle.recall_words,
                        depth=depth, context_tokens=context_tokens, actual_tokens=actual,
                        needle_starts=tuple(starts), inserted_depths=inserted)


# --------------------------------------------------------------------------- grids

def haystack_grid(lengths: Sequence[int], depths: Sequence[float]) -> list[tuple[int, float]]:
    """All (context length, depth) pairs, lengths outer and depths inner, in the order given.

    Lengths must be positive integers and depths numbers in [0, 1]; duplicates are an error.
    """
    ls, ds = list(lengths), [float(d) for d in depths]
    if not ls or not ds:
        raise ValueError("haystack_grid: need at least one length and one depth")
    for n in ls:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"haystack_grid: context lengths must be positive integers, got {n!r}")
    for d in ds:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"haystack_grid: depths must be in [0, 1], got {d}")
    if len(set(ls)) != len(ls) or len(set(ds)) != len(ds):
        raise ValueError("haystack_grid: repeated length or depth")
    return [(n, d) for n in ls for d in ds]


def paper_grid(max_tokens: int, n_lengths: int = 20, n_depths: int = 20, min_tokens: int = 200) -> list[tuple[int, float]]:
    """[B]'s grid: ``n_lengths`` lengths evenly from ``min_tokens`` to ``max_tokens`` (rounded)
    times ``n_depths`` depths evenly from 0 to 1 (20 x 20 = 400 tests by default)."""
    if n_lengths < 1 or n_depths < 1 or not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"paper_grid: need 1 <= min_tokens <= max_tokens and counts >= 1, got "
                         f"min={min_tokens}, max={max_tokens}, n_lengths={n_lengths}, n_depths={n_depths}")
    if n_lengths == 1:
        lengths = [max_tokens]
    else:
        step = (max_tokens - min_tokens) / (n_lengths - 1)
        lengths = sorted({int(round(min_tokens + i * step)) for i in range(n_lengths)})
    depths = [0.0] if n_depths == 1 else [i / (n_depths - 1) for i in range(n_depths)]
    return haystack_grid(lengths, depths)
