"""Composition of head patterns (Zhao et al. 2024): is a complex task's ΔAP a combination of basic tasks' ΔAPs?

:func:`fit_composition` regresses ``ΔAP_complex = Σ_i α_i ΔAP_basic_i (+ c) + ε`` over heads, by least squares or
non-negative least squares (``scipy.optimize.nnls``), and reports R² (centred: 1 − SS_res / Σ(y − ȳ)², so a fit
worse than the mean is negative) and adjusted R². :func:`null_control` is a permutation test: the complex task's
heads are shuffled, breaking the head correspondence, and refitted; a real composition has an R² far above the
null's. :func:`build_mixture` draws a training mixture of the basic tasks' data in proportions α_i / Σα.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
from scipy.optimize import nnls

from tunelens.errors import ConfigError, DataError

__all__ = ["COMPOSITION_METHODS", "CompositionFit", "Mixture", "NullControl", "build_mixture", "fit_composition",
           "mixture_counts", "null_control"]

COMPOSITION_METHODS = ("nnls", "lstsq")
T = TypeVar("T")


@dataclass
class CompositionFit:
    """Coefficients per basic task, R², adjusted R², over ``n`` heads with ``p`` regressors."""

    names: list[str]
    coefficients: dict[str, float]
    intercept: float
    r2: float
    adj_r2: float
    n: int
    p: int
    method: str
    residual_norm: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NullControl:
    """R² of the fit on the real target vs R²s with the target's heads shuffled."""

    observed_r2: float
    null_r2: list[float] = field(default_factory=list)
    p_value: float = 1.0

    @property
    def null_mean(self) -> float:
        return float(np.mean(self.null_r2)) if self.null_r2 else float("nan")

    @property
    def null_q95(self) -> float:
        return float(np.quantile(self.null_r2, 0.95)) if self.null_r2 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"observed_r2": self.observed_r2, "null_mean": self.null_mean, "null_q95": self.null_q95,
                "p_value": self.p_value, "n_permutations": len(self.null_r2)}


def _vec(x: Any, what: str) -> np.ndarray:
    a = np.asarray(getattr(x, "matrix", x), dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ConfigError(f"{what}: empty or non-finite pattern.")
    return a


def _design(target: Any, basics: Mapping[str, Any] | Sequence[Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    named = dict(basics) if isinstance(basics, Mapping) else {f"basic{i}": b for i, b in enumerate(basics)}
    if not named:
        raise ConfigError("fit_composition needs at least one basic task.")
    y = _vec(target, "target")
    cols = []
    for name, b in named.items():
        col = _vec(b, name)
        if col.size != y.size:
            raise ConfigError(f"basic task {name!r} has {col.size} heads, the target {y.size}.")
        cols.append(col)
    return y, np.stack(cols, axis=1), list(named)


def _solve(y: np.ndarray, x: np.ndarray, method: str, intercept: bool) -> tuple[np.ndarray, float]:
    if intercept:  # centring gives the exact unconstrained intercept, also under β >= 0
        ym, xm = y.mean(), x.mean(axis=0)
        beta, _ = _solve(y - ym, x - xm, method, intercept=False)
        return beta, float(ym - xm @ beta)
    if method == "nnls":
        beta, _ = nnls(x, y)
    else:
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
    return beta, 0.0


def _r2(y: np.ndarray, pred: np.ndarray, p: int) -> tuple[float, float]:
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    n = y.size
    adj = 1.0 - (1.0 - r2) * (n - 1) / (n - p - 1) if n - p - 1 > 0 else float("nan")
    return r2, adj


def fit_composition(target: Any, basics: Mapping[str, Any] | Sequence[Any], method: str = "nnls",
                    intercept: bool = False) -> CompositionFit:
    """Regress the target ΔAP (L×H, or a HeadPatterns) on the basic tasks' ΔAPs over heads."""
    if method not in COMPOSITION_METHODS:
        raise ConfigError(f"Unknown method {method!r}; choose from {COMPOSITION_METHODS}.")
    y, x, names = _design(target, basics)
    if y.size <= x.shape[1]:
        raise ConfigError(f"{y.size} heads cannot determine {x.shape[1]} coefficients.")
    beta, c = _solve(y, x, method, intercept)
    pred = x @ beta + c
    r2, adj = _r2(y, pred, x.shape[1] + int(intercept))
    return CompositionFit(names, {n: float(b) for n, b in zip(names, beta)}, c, r2, adj, int(y.size),
                          x.shape[1], method, float(np.linalg.norm(y - pred)))


def null_control(target: Any, basics: Mapping[str, Any] | Sequence[Any], method: str = "nnls",
                 intercept: bool = False, n_permutations: int = 200, seed: int = 0) -> NullControl:
    """Permutation null: refit with the target's heads shuffled ``n_permutations`` times (seeded)."""
    if n_permutations < 1:
        raise ConfigError(f"n_permutations must be >= 1, got {n_permutations}.")
    y, x, names = _design(target, basics)
    observed = fit_composition(y, dict(zip(names, x.T)), method, intercept).r2
    rng = np.random.default_rng(seed)
    null = [fit_composition(rng.permutation(y), dict(zip(names, x.T)), method, intercept).r2
            for _ in range(n_permutations)]
    p = (1 + sum(r >= observed for r in null)) / (1 + n_permutations)
    return NullControl(observed, [float(r) for r in null], float(p))


def mixture_counts(coefficients: Mapping[str, float], total: int) -> dict[str, int]:
    """Examples per task, ``total · α_i / Σα`` rounded by largest remainder (negative α count as 0)."""
    if total < 1:
        raise ConfigError(f"total must be >= 1, got {total}.")
    w = {k: max(float(v), 0.0) for k, v in coefficients.items()}
    s = sum(w.values())
    if s <= 0:
        raise ConfigError(f"No positive coefficient in {dict(coefficients)}: cannot weight a mixture.")
    exact = {k: total * v / s for k, v in w.items()}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    left = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:left]:
        counts[k] += 1
    return counts


@dataclass
class Mixture:
    """The drawn items (shuffled), where each came from, and the count per task."""

    items: list[Any]
    sources: list[str]
    counts: dict[str, int]


def build_mixture(coefficients: Mapping[str, float], datasets: Mapping[str, Sequence[T]], total: int,
                  seed: int = 0, replace: bool = False) -> Mixture:
    """Draw ``mixture_counts(coefficients, total)`` items from each task's dataset (without replacement unless
    ``replace``), then shuffle; deterministic for a given ``seed``."""
    missing = sorted(set(coefficients) - set(datasets))
    if missing:
        raise DataError(f"No dataset given for task(s) {missing}; datasets: {sorted(datasets)}.")
    counts = mixture_counts(coefficients, total)
    rng = np.random.default_rng(seed)
    items, sources = [], []
    for name in sorted(counts):
        data, want = datasets[name], counts[name]
        if want == 0:
            continue
        if not data:
            raise DataError(f"Dataset {name!r} is empty but the mixture needs {want} items from it.")
        if want > len(data) and not replace:
            raise DataError(f"Dataset {name!r} has {len(data)} items but the mixture needs {want}; pass "
                            f"replace=True to sample with replacement or lower the total.")
        idx = rng.choice(len(data), size=want, replace=replace)
        items.extend(data[int(i)] for i in idx)
        sources.extend([name] * want)
    order = rng.permutation(len(items))
    return Mixture([items[i] for i in order], [sources[i] for i in order], counts)
