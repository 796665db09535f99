"""Probe metrics: answer normalisation, containment, conflict outcomes, haystack keyword recall,
SQuAD EM/F1, context preference from log-probs, rates, bootstrap intervals, trajectory summaries.

Pure functions of strings and numbers (no model). Rates are fractions in [0, 1].

Normalisation (:func:`normalize_answer`) follows the SQuAD v1.1 script -- lower-case, drop
punctuation and the articles a/an/the, collapse whitespace -- with two additions: Unicode
NFKC first, and Unicode punctuation (categories P*, e.g. curly quotes, dashes) dropped like
ASCII punctuation. On ASCII text the result equals the official script's.

Decisions (see the functions):

* containment is a substring test on normalised text, as in [A] and [B]
  (``whole_words=True`` asks for whole-word matches instead);
* an answer that normalises to "" (empty, or only articles/punctuation such as "The" or "A")
  raises :class:`~tunelens.errors.DataError`: it would be "contained" in every output;
* when an output contains both the context and the memory answer, the one that appears
  **first** wins (``both="first"``), so ctx + param + neither rates sum to 1; occurrences of
  the shorter answer inside an occurrence of the longer one do not count (for "Antarctic"
  vs "Antarctic Desert").
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from tunelens.errors import DataError

__all__ = [
    "CI",
    "CONFLICT_LABELS",
    "bootstrap_ci",
    "conflict_outcome",
    "conflict_rates",
    "contains",
    "contains_any",
    "context_preference",
    "keyword_recall",
    "normalize_answer",
    "rate",
    "rates",
    "recall_error",
    "squad_em_f1",
    "squad_scores",
    "summarize_trajectory",
]

CONFLICT_LABELS = ("ctx", "param", "neither")

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation: NFKC, lower-case, drop punctuation and a/an/the, collapse spaces.

    >>> normalize_answer("  The  Eiffel-Tower! ")
    'eiffeltower'
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer expects a string, got {type(s).__name__}")
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(ch for ch in s if not _is_punct(ch))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _norm_answer(answer: str, what: str = "answer") -> str:
    if not isinstance(answer, str):
        raise TypeError(f"{what} must be a string, got {type(answer).__name__}")
    norm = normalize_answer(answer)
    if not norm:
        raise DataError(f"{what} {answer!r} is empty after normalisation (empty, or only articles/"
                        f"punctuation); containment is undefined for it. Score such items by "
                        f"log-probabilities of the options instead")
    return norm


def _find(haystack: str, needle: str, whole_words: bool) -> int:
    """First index of ``needle`` in normalised ``haystack`` (-1 if absent)."""
    if not whole_words:
        return haystack.find(needle)
    m = re.search(rf"(?<!\S){re.escape(needle)}(?!\S)", haystack)
    return m.start() if m else -1


def contains(output: str, answer: str, *, whole_words: bool = False) -> bool:
    """Whether normalised ``answer`` is a substring of normalised ``output`` ([A], [B]).

    ``whole_words=True`` requires the answer to start and end at word boundaries ("rome" is
    then not found in "romeo"). An answer that normalises to "" raises :class:`DataError`.
    """
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, got {type(output).__name__}")
    return _find(normalize_answer(output), _norm_answer(answer), whole_words) >= 0


def contains_any(output: str, answers: Iterable[str], *, whole_words: bool = False) -> bool:
    """Whether any gold answer is contained in ``output`` ([B]'s contextual-QA metric)."""
    golds = list(answers)
    if not golds:
        raise DataError("contains_any: no gold answers given")
    out = normalize_answer(output)
    return any(_find(out, _norm_answer(a), whole_words) >= 0 for a in golds)


def conflict_outcome(output: str, ctx_answer: str, mem_answer: str, *, both: str = "first",
                     whole_words: bool = False) -> str:
    """Classify a generation on a knowledge-conflict item: ``"ctx"``, ``"param"`` or ``"neither"``.

    ``"ctx"`` when only the context answer is contained, ``"param"`` when only the memory
    (parametric) answer is. When **both** are contained, ``both`` decides:

    * ``"first"`` (default): the answer whose first occurrence comes first in the output
      wins ("Herat, not Kabul" -> ctx; "Kabul. The passage says Herat" -> param). Ties
      cannot happen, see below;
    * ``"ctx"`` / ``"param"``: count it as that;
    * ``"keep"``: return ``"both"`` (diagnostics only; :func:`conflict_rates` rejects it).

    When one normalised answer contains the other ("antarctic" in "antarctic desert"),
    occurrences of the shorter one inside an occurrence of the longer one are ignored, so
    "the Antarctic Desert" is ctx only. Answers equal after normalisation raise :class:`DataError`.
    """
    if both not in ("first", "ctx", "param", "keep"):
        raise ValueError(f"both must be 'first', 'ctx', 'param' or 'keep', got {both!r}")
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, got {type(output).__name__}")
    c, m = _norm_answer(ctx_answer, "context answer"), _norm_answer(mem_answer, "memory answer")
    if c == m:
        raise DataError(f"context answer {ctx_answer!r} and memory answer {mem_answer!r} are equal after "
                        f"normalisation; the outcome is undefined")
    out = normalize_answer(output)
    out_c, out_m = out, out
    if len(c) > len(m) and m in c:  # mask the longer answer before looking for the shorter one
        out_m = out.replace(c, "\0" * len(c))
    elif len(m) > len(c) and c in m:
        out_c = out.replace(m, "\0" * len(m))
    pc, pm = _find(out_c, c, whole_words), _find(out_m, m, whole_words)
    if pc < 0 and pm < 0:
        return "neither"
    if pm < 0:
        return "ctx"
    if pc < 0:
        return "param"
    if both == "keep":
        return "both"
    if both in ("ctx", "param"):
        return both
    return "ctx" if pc < pm else "param"


def conflict_rates(outcomes: Iterable[str]) -> dict[str, float]:
    """``{"n", "ctx", "param", "neither"}``: counts as rates that sum to 1 ([A]'s
    counterfactual accuracy = ctx, parametric accuracy = param)."""
    counts = Counter(outcomes)
    bad = sorted(set(counts) - set(CONFLICT_LABELS))
    if bad:
        raise ValueError(f"conflict_rates: unknown outcome label(s) {bad}; expected {list(CONFLICT_LABELS)} "
                         f"(resolve 'both' with conflict_outcome(both='first'))")
    n = sum(counts.values())
    if n == 0:
        raise ValueError("conflict_rates: no outcomes")
    return {"n": n, **{k: counts[k] / n for k in CONFLICT_LABELS}}


def _recall_words(s: str) -> list[str]:
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(" " if (ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")) else ch for ch in s)
    return s.split()


def keyword_recall(output: str, keywords: Sequence[str]) -> float:
    """Fraction of ``keywords`` found in ``output`` ([B]'s needle-in-a-haystack recall).

    As [B]'s ``SubwordMatchEvaluator``: lower-case, every punctuation character becomes a
    space, split on whitespace; a keyword counts when it equals one of the output's words. A
    multi-word keyword ("Dolores Park") counts when its words appear consecutively. The text is
    taken as given: the caller cuts generations at 100 tokens as [B] does.
    """
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, got {type(output).__name__}")
    if isinstance(keywords, str):
        raise TypeError("keywords must be a list of strings, not one string")
    kws = [_recall_words(k) for k in keywords]
    if not kws:
        raise DataError("keyword_recall: no keywords given")
    for k, words in zip(keywords, kws):
        if not words:
            raise DataError(f"keyword_recall: keyword {k!r} is empty after normalisation")
    words = _recall_words(output)
    single = set(words)
    joined = " " + " ".join(words) + " "
    hits = sum((kw[0] in single) if len(kw) == 1 else (" " + " ".join(kw) + " " in joined) for kw in kws)
    return hits / len(kws)


def recall_error(recall: float | Iterable[float]) -> float:
    """``1 - recall``; for several recalls, ``1 - mean(recalls)`` ([B]'s reported NIH number)."""
    if isinstance(recall, (int, float)):
        values = [float(recall)]
    else:
        values = [float(r) for r in recall]
    if not values:
        raise ValueError("recall_error: no recall values")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"recall_error: recall {v} is outside [0, 1]")
    return 1.0 - sum(values) / len(values)


def _f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    if not pred_toks or not gold_toks:  # SQuAD v2 rule: both empty -> 1, one empty -> 0
        return float(pred_toks == gold_toks)
    common = Counter(pred_toks) & Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_toks), same / len(gold_toks)
    return 2 * p * r / (p + r)


def squad_em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """``(exact_match, f1)`` of ``prediction`` against gold answers: the max over golds, each
    in [0, 1], after :func:`normalize_answer` (SQuAD v1.1 script; empty-vs-empty F1 = 1 as in v2)."""
    if isinstance(golds, str):
        golds = [golds]
    golds = list(golds)
    if not golds:
        raise DataError("squad_em_f1: no gold answers given")
    pred = normalize_answer(prediction)
    em = max(float(pred == normalize_answer(g)) for g in golds)
    f1 = max(_f1(pred.split(), normalize_answer(g).split()) for g in golds)
    return em, f1


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 over items: ``{"n", "em", "f1"}`` (fractions, not percentages)."""
    if len(predictions) != len(golds):
        raise ValueError(f"squad_scores: {len(predictions)} predictions but {len(golds)} gold lists")
    if not predictions:
        raise ValueError("squad_scores: no items")
    pairs = [squad_em_f1(p, g) for p, g in zip(predictions, golds)]
    n = len(pairs)
    return {"n": n, "em": sum(e for e, _ in pairs) / n, "f1": sum(f for _, f in pairs) / n}


def context_preference(logp_ctx, logp_mem):
    """Per item ``p_ctx / (p_ctx + p_mem)`` from log-probabilities: ``sigmoid(logp_ctx - logp_mem)``.

    Stable for any magnitude (-1e4 vs -1e4 + 1 gives sigmoid(1), never 0/0). A ``-inf`` side
    gives 0 or 1; both ``-inf`` (or any NaN) gives NaN. Scalars in -> float out; sequences
    or arrays in -> ``numpy.ndarray`` (float64) out.
    """
    a = np.asarray(logp_ctx, dtype=np.float64)
    b = np.asarray(logp_mem, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"context_preference: shapes differ: {a.shape} vs {b.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        d = a - b  # -inf - -inf -> nan: undefined
        e = np.exp(-np.abs(d))  # in (0, 1]; no overflow
        out = np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        out = np.where(np.isnan(d), np.nan, out)
    if out.ndim == 0:
        return float(out)
    return out


def rate(flags: Iterable[bool | int | float]) -> float:
    """Mean of booleans (or 0/1 values): the share of items that pass."""
    values = [float(f) for f in flags]
    if not values:
        raise ValueError("rate: no items")
    return sum(values) / len(values)


def rates(labels: Iterable[str], categories: Sequence[str] | None = None) -> dict[str, float]:
    """Share of each label; ``categories`` fixes the keys (missing ones get 0, others raise)."""
    counts = Counter(labels)
    n = sum(counts.values())
    if n == 0:
        raise ValueError("rates: no items")
    keys = list(categories) if categories is not None else sorted(counts)
    extra = sorted(set(counts) - set(keys))
    if extra:
        raise ValueError(f"rates: label(s) {extra} not in categories {keys}")
    return {k: counts[k] / n for k in keys}


class CI(NamedTuple):
    """A point estimate (the mean) and a percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(values: Iterable[float], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> CI:
    """Percentile bootstrap interval of the mean: ``CI(mean, low, high)``, ``1 - alpha`` coverage.

    Deterministic for a given ``seed``. A single value gives a zero-width interval.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci: need a non-empty 1-D list of numbers")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_ci: values must be finite (no NaN/inf)")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"bootstrap_ci: n must be a positive integer, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n, dtype=np.float64)
    chunk = max(1, 2_000_000 // x.size)  # bounded memory for long lists
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        idx = rng.integers(0, x.size, size=(k, x.size))
        means[start:start + k] = x[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # the bootstrap distribution can miss the sample mean by float rounding; keep low <= mean <= high
    return CI(mean, float(min(low, mean)), float(max(high, mean)))


def summarize_trajectory(points: Iterable[tuple[int, float]], threshold: float = 0.1) -> dict:
    """Summarise a metric over training steps ([A]'s context-parametric inversion).

    Returns ``{"n_points", "n_skipped", "initial", "peak", "step_of_peak", "final",
    "step_final", "inversion", "inverted"}`` where ``peak`` is the highest value (its earliest
    step if repeated), ``final`` the value at the last step, ``inversion = peak - final``
    (>= 0) and ``inverted = inversion > threshold``. Points are sorted by step; steps must be
    distinct. Non-finite values (a probe that returned NaN) are skipped and counted in
    ``n_skipped``; at least one finite point is needed.
    """
    pts = []
    for p in points:
        try:
            step, value = p
        except (TypeError, ValueError):
            raise ValueError(f"summarize_trajectory: each point must be (step, value), got {p!r}") from None
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"summarize_trajectory: step must be an integer, got {step!r}")
        pts.append((int(step), float(value)))
    if not pts:
        raise ValueError("summarize_trajectory: no points")
    pts.sort(key=lambda p: p[0])
    seen: set[int] = set()
    dup = sorted({s for s, _ in pts if s in seen or seen.add(s)})
    if dup:
        raise ValueError(f"summarize_trajectory: repeated step(s) {dup}")
    n_all = len(pts)
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    if not pts:
        raise ValueError(f"summarize_trajectory: none of the {n_all} values is finite")
    peak = max(v for _, v in pts)
    step_of_peak = next(s for s, v in pts if v == peak)
    final = pts[-1][1]
    inversion = peak - final
    return {"n_points": len(pts), "n_skipped": n_all - len(pts), "initial": pts[0][1], "peak": peak, "step_of_peak": step_of_peak,
            "final": final, "step_final": pts[-1][0], "inversion": inversion,
            "inverted": bool(inversion > threshold)}
