"""ΔAP between two patterns (e.g. checkpoints before and after SFT) and a full comparison report."""
from __future__ import annotations

from typing import Any

import numpy as np

from tunelens.errors import ConfigError
from tunelens.heads.patterns import HeadPatterns
from tunelens.heads.stats import concentration, similarity

__all__ = ["compare_patterns", "delta", "delta_summary"]


def _matrix(p: Any) -> np.ndarray:
    return np.asarray(getattr(p, "matrix", p), dtype=np.float64)


def delta(before: Any, after: Any) -> np.ndarray:
    """ΔAP = after − before (L×H)."""
    a, b = _matrix(before), _matrix(after)
    if a.shape != b.shape:
        raise ConfigError(f"Cannot subtract patterns of shapes {a.shape} and {b.shape}.")
    return b - a


def delta_summary(before: Any, after: Any, threshold: float | None = None, top: int = 5) -> dict[str, Any]:
    """Summary of ΔAP: mean/max |Δ|, relative change, fraction of heads with |Δ| > ``threshold`` (default:
    10% of the before-pattern's mean), and the ``top`` heads with the largest increase and decrease."""
    d = delta(before, after)
    base = _matrix(before)
    tau = float(0.1 * np.abs(base).mean()) if threshold is None else float(threshold)
    flat = d.ravel()
    n_heads = d.shape[1]
    order = np.argsort(flat, kind="stable")
    head = lambda i: [int(i // n_heads), int(i % n_heads), float(flat[i])]
    top = min(top, flat.size)
    norm = float(np.abs(base).sum())
    return {"mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max()), "mean": float(d.mean()),
            "relative_l1": float(np.abs(d).sum() / norm) if norm > 0 else float("nan"),
            "threshold": tau, "frac_changed": float((np.abs(d) > tau).mean()),
            "top_increase": [head(i) for i in order[::-1][:top]], "top_decrease": [head(i) for i in order[:top]]}


def compare_patterns(a: HeadPatterns | np.ndarray, b: HeadPatterns | np.ndarray, ks: tuple[int, ...] = (5, 10, 20),
                     threshold: float | None = None) -> dict[str, Any]:
    """Similarity (correlations, cosine, MSE, top-k Jaccard), each pattern's concentration, and ΔAP = b − a."""
    return {"similarity": similarity(a, b, ks), "a": concentration(a), "b": concentration(b),
            "delta": delta_summary(a, b, threshold), "shape": list(_matrix(a).shape)}
