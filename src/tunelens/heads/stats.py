"""Statistics of head patterns: concentration of one pattern, and similarity between two.

Concentration (on absolute values): :func:`gini` (0 = all heads equal, → 1 = one head holds everything),
:func:`coefficient_of_variation` (std / mean), :func:`entropy` (of the pattern as a distribution, in nats;
``normalized=True`` divides by log(n) so 1 = uniform). Similarity: :func:`pearson`, :func:`spearman`,
:func:`cosine`, :func:`mse`, :func:`topk_jaccard`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from tunelens.errors import ConfigError

__all__ = ["coefficient_of_variation", "concentration", "cosine", "entropy", "gini", "mse", "pearson",
           "similarity", "spearman", "top_k_indices", "topk_jaccard"]


def _flat(x: Any) -> np.ndarray:
    a = np.asarray(getattr(x, "matrix", x), dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError("Empty pattern: nothing to compute statistics on.")
    if not np.all(np.isfinite(a)):
        raise ConfigError("The pattern holds NaN or infinite values.")
    return a


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _flat(a), _flat(b)
    if x.shape != y.shape:
        raise ConfigError(f"Patterns differ in size ({x.size} vs {y.size} heads); compare patterns of the same "
                          f"model architecture.")
    return x, y


def gini(x: Any) -> float:
    """Gini coefficient of |x| (0 for a uniform pattern, (n-1)/n when one head holds everything)."""
    a = np.sort(np.abs(_flat(x)))
    n, total = a.size, a.sum()
    if total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * a).sum()) / (n * total) - (n + 1) / n)


def coefficient_of_variation(x: Any) -> float:
    """Population std / mean of |x| (0 for a uniform pattern)."""
    a = np.abs(_flat(x))
    mean = a.mean()
    return float(a.std() / mean) if mean > 0 else 0.0


def entropy(x: Any, normalized: bool = False) -> float:
    """Shannon entropy (nats) of |x| / sum |x|; ``normalized`` divides by log(n) (1 = uniform)."""
    a = np.abs(_flat(x))
    total = a.sum()
    if total == 0:
        return 0.0
    p = a[a > 0] / total
    h = float(-(p * np.log(p)).sum())
    return h / np.log(a.size) if normalized and a.size > 1 else h


def concentration(x: Any) -> dict[str, float]:
    """Gini, CV, entropy and normalised entropy of one pattern."""
    return {"gini": gini(x), "cv": coefficient_of_variation(x), "entropy": entropy(x),
            "entropy_norm": entropy(x, normalized=True)}


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation over heads (NaN if either pattern is constant)."""
    x, y = _pair(a, b)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation over heads (NaN if either pattern is constant)."""
    x, y = _pair(a, b)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(sps.spearmanr(x, y).statistic)


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of the flattened patterns (NaN if either is all zero)."""
    x, y = _pair(a, b)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    return float(x @ y / (nx * ny)) if nx > 0 and ny > 0 else float("nan")


def mse(a: Any, b: Any) -> float:
    """Mean squared difference over heads."""
    x, y = _pair(a, b)
    return float(np.mean((x - y) ** 2))


def top_k_indices(x: Any, k: int) -> set[int]:
    """Flat indices of the k largest values (ties: lower index first)."""
    a = _flat(x)
    if not 0 < k <= a.size:
        raise ConfigError(f"k must be in 1..{a.size}, got {k}.")
    return set(np.lexsort((np.arange(a.size), -a))[:k].tolist())


def topk_jaccard(a: Any, b: Any, k: int) -> float:
    """Jaccard overlap |A ∩ B| / |A ∪ B| of the two patterns' top-k head sets."""
    _pair(a, b)
    sa, sb = top_k_indices(a, k), top_k_indices(b, k)
    return len(sa & sb) / len(sa | sb)


def similarity(a: Any, b: Any, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """All similarity figures between two patterns; top-k Jaccard for each k that fits."""
    n = _pair(a, b)[0].size
    out = {"pearson": pearson(a, b), "spearman": spearman(a, b), "cosine": cosine(a, b), "mse": mse(a, b)}
    for k in ks:
        if k < n:
            out[f"jaccard@{k}"] = topk_jaccard(a, b, k)
    return out
