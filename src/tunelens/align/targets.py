"""Energy-based targets p(x|c) ∝ a(x|c)·Π factors(x), scored in log space.

``log P(x) = log a(x) + Σ_k log φ_k(x)`` where each factor is

* :class:`Pointwise` — b(x) ∈ {0, 1}: log-score 0 or ``−inf`` (p = a(·|b=1), Z = Pr_a(b=1));
* :class:`Distributional` — exp(λ·φ(x)) with λ fitted so that E_p[φ] = μ̄ (:func:`fit_lambda`);
* :class:`Reward` — exp(r(x)/β) (KL-regularised RLHF's optimum);

and a :class:`Target` is their product. The base log-probability log a(x) comes from a language model and
is added by the caller (the trainer scores it with the frozen base); :meth:`Target.log_factor` returns the
rest. ``−inf`` is an explicit value (zero target mass), never a NaN: a NaN from any scorer is an error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from tunelens.align.features import Feature, TargetError, build_feature
from tunelens.align.samples import Samples
from tunelens.errors import ConfigError

FACTOR_TYPES = ("pointwise", "distributional", "reward")


@dataclass
class Pointwise:
    """b(x) ∈ {0, 1}; the feature must return exactly 0 or 1."""

    feature: Feature

    @property
    def name(self) -> str:
        return f"pointwise[{self.feature.name}]"

    def values(self, samples: Samples) -> torch.Tensor:
        v = torch.tensor(self.feature(samples), dtype=torch.float64)
        bad = ~((v == 0) | (v == 1))
        if bad.any():
            raise TargetError(f"{self.name}: a pointwise constraint must score 0 or 1, got {float(v[bad][0])} "
                              "(use a distributional or reward factor for graded scores).")
        return v

    def log_score(self, samples: Samples) -> torch.Tensor:
        v = self.values(samples)
        return torch.where(v > 0, torch.zeros_like(v), torch.full_like(v, -math.inf))

    def alignment(self, samples: Samples) -> dict[str, float]:
        return {f"rate/{self.feature.name}": float(self.values(samples).mean())}


@dataclass
class Distributional:
    """exp(λ·φ(x)) with moments μ̄ = ``moments``; ``lambdas`` is set by :func:`fit_lambda` (or given)."""

    features: list[Feature]
    moments: list[float]
    lambdas: list[float] | None = None

    @property
    def name(self) -> str:
        return "distributional[" + ",".join(f.name for f in self.features) + "]"

    def values(self, samples: Samples) -> torch.Tensor:
        return torch.tensor([f(samples) for f in self.features], dtype=torch.float64).T.reshape(len(samples), -1)

    def log_score(self, samples: Samples) -> torch.Tensor:
        if self.lambdas is None:
            raise TargetError(f"{self.name}: λ has not been fitted yet (call fit_lambda or Target.fit).")
        return self.values(samples) @ torch.tensor(self.lambdas, dtype=torch.float64)

    def alignment(self, samples: Samples) -> dict[str, float]:
        m = self.values(samples).mean(0)
        return {f"moment/{f.name}": float(v) for f, v in zip(self.features, m)}


@dataclass
class Reward:
    """exp(r(x)/β)."""

    feature: Feature
    beta: float = 1.0

    @property
    def name(self) -> str:
        return f"reward[{self.feature.name}]"

    def values(self, samples: Samples) -> torch.Tensor:
        r = torch.tensor(self.feature(samples), dtype=torch.float64)
        if not torch.isfinite(r).all():
            raise TargetError(f"{self.name}: the reward is not finite for sample {int((~torch.isfinite(r)).nonzero()[0])}.")
        return r

    def log_score(self, samples: Samples) -> torch.Tensor:
        return self.values(samples) / self.beta

    def alignment(self, samples: Samples) -> dict[str, float]:
        return {f"reward/{self.feature.name}": float(self.values(samples).mean())}


Factor = Pointwise | Distributional | Reward


@dataclass
class FitReport:
    """Outcome of fitting λ: the values, the achieved moments, the residual and the sample's ESS."""

    lambdas: list[float]
    moments: list[float]
    targets: list[float]
    residual: float
    iterations: int
    ess: float


def fit_lambda(phi: torch.Tensor, log_w: torch.Tensor, moments: Sequence[float], *, tol: float = 1e-4,
               max_iter: int = 200, name: str = "distributional") -> FitReport:
    """λ with self-normalised IS moments Σ w e^{λ·φ} φ / Σ w e^{λ·φ} = μ̄ (samples φ from q, log w = log(P₀/q)).

    The SNIS moment is the gradient of the convex g(λ) = logsumexp(log w + λ·φ) − λ·μ̄, so damped Newton
    steps on g converge when μ̄ lies strictly inside the convex hull of the sampled φ; otherwise (a target
    moment no sample reaches) the fit fails with a :class:`TargetError` naming the factor and the residual.
    """
    phi, log_w = phi.double().reshape(phi.shape[0], -1), log_w.double()
    mu = torch.tensor(list(moments), dtype=torch.float64)
    ok = torch.isfinite(log_w)
    if not ok.any():
        raise TargetError(f"{name}: no probe sample has non-zero weight under the other factors; cannot fit λ.")
    phi, log_w = phi[ok], log_w[ok]
    lo, hi = phi.min(0).values, phi.max(0).values
    outside = (mu < lo - 1e-12) | (mu > hi + 1e-12) | ((hi - lo < 1e-12) & ((mu - lo).abs() > 1e-12))
    if outside.any():
        k = int(outside.nonzero()[0])
        raise TargetError(f"{name}: target moment {float(mu[k])} for feature {k} is infeasible: the probe samples' "
                          f"values lie in [{float(lo[k])}, {float(hi[k])}]. Draw more probe samples or change it.")
    lam = torch.zeros_like(mu)

    def objective(lmb: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_w + phi @ lmb, 0) - lmb @ mu

    it = 0
    for it in range(1, max_iter + 1):
        w = torch.softmax(log_w + phi @ lam, 0)
        m = w @ phi
        grad = m - mu
        if float(grad.abs().max()) < tol:
            break
        centred = phi - m
        hess = (centred * w[:, None]).T @ centred + 1e-9 * torch.eye(len(mu), dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        g0, t = objective(lam), 1.0
        while t > 1e-8 and objective(lam - t * step) > g0 - 1e-4 * t * (grad @ step):
            t *= 0.5
        lam = lam - t * step
    w = torch.softmax(log_w + phi @ lam, 0)
    m = w @ phi
    residual = float((m - mu).abs().max())
    ess = float(1.0 / (w ** 2).sum())
    if residual > max(tol * 10, 1e-3) or not torch.isfinite(lam).all():
        raise TargetError(f"{name}: λ fitting did not converge (residual {residual:.3g} after {it} iterations, "
                          f"moments {m.tolist()} vs targets {mu.tolist()}); the moments may be infeasible.")
    return FitReport(lam.tolist(), m.tolist(), mu.tolist(), residual, it, ess)


@dataclass
class Target:
    """A product of factors on top of the base model a(x|c)."""

    factors: list[Factor] = field(default_factory=list)

    def log_factor(self, samples: Samples) -> torch.Tensor:
        """Σ_k log φ_k(x): ``log P(x) − log a(x)`` per sample (float64; ``−inf`` = zero target mass)."""
        total = torch.zeros(len(samples), dtype=torch.float64)
        for f in self.factors:
            s = f.log_score(samples)
            if torch.isnan(s).any() or (s == math.inf).any():
                raise TargetError(f"{f.name}: log-score is NaN or +inf for some sample.")
            total = total + s
        return total

    @property
    def pointwise_only(self) -> bool:
        return all(isinstance(f, Pointwise) for f in self.factors)

    def alignment(self, samples: Samples) -> dict[str, float]:
        out: dict[str, float] = {}
        for f in self.factors:
            out.update(f.alignment(samples))
        if any(isinstance(f, Pointwise) for f in self.factors):
            out["rate/all_constraints"] = float(torch.isfinite(self.log_factor_pointwise(samples)).double().mean())
        return out

    def log_factor_pointwise(self, samples: Samples) -> torch.Tensor:
        total = torch.zeros(len(samples), dtype=torch.float64)
        for f in self.factors:
            if isinstance(f, Pointwise):
                total = total + f.log_score(samples)
        return total

    def fit(self, samples: Samples, log_w: torch.Tensor | None = None, tol: float = 1e-4) -> list[FitReport]:
        """Fit λ of every distributional factor (jointly) on probe ``samples`` with log(a/q) = ``log_w``."""
        dist = [f for f in self.factors if isinstance(f, Distributional) and f.lambdas is None]
        if not dist:
            return []
        base = torch.zeros(len(samples), dtype=torch.float64) if log_w is None else log_w.double()
        for f in self.factors:
            if not isinstance(f, Distributional):
                base = base + f.log_score(samples)
        phi = torch.cat([f.values(samples) for f in dist], dim=1)
        moments = [m for f in dist for m in f.moments]
        rep = fit_lambda(phi, base, moments, tol=tol, name=" × ".join(f.name for f in dist))
        k = 0
        for f in dist:
            f.lambdas = rep.lambdas[k:k + len(f.moments)]
            k += len(f.moments)
        return [rep]

    def state(self) -> list[list[float] | None]:
        return [f.lambdas if isinstance(f, Distributional) else None for f in self.factors]

    def load_state(self, state: Sequence[Any]) -> None:
        for f, lam in zip(self.factors, state):
            if isinstance(f, Distributional):
                f.lambdas = None if lam is None else list(lam)


def build_target(spec: Sequence[Mapping[str, Any]]) -> Target:
    """A :class:`Target` from config entries, e.g.

    ``[{type: pointwise, feature: {kind: contains, word: amazing}},
       {type: distributional, features: [{kind: contains, word: she}], moments: [0.5]},
       {type: reward, feature: {kind: python, function: "mod:fn"}, beta: 0.1}]``
    """
    if not spec:
        raise ConfigError("target is empty: give at least one factor (pointwise, distributional or reward).")
    factors: list[Factor] = []
    for i, entry in enumerate(spec):
        where = f"target[{i}]"
        if not isinstance(entry, Mapping) or entry.get("type") not in FACTOR_TYPES:
            raise ConfigError(f"{where}: 'type' must be one of {', '.join(FACTOR_TYPES)}, got {dict(entry) if isinstance(entry, Mapping) else entry!r}.")
        kind = entry["type"]
        extra = set(entry) - {"type", "feature", "features", "moments", "lambdas", "beta"}
        if extra:
            raise ConfigError(f"{where} ({kind}): unknown keys {sorted(extra)}.")
        if kind == "pointwise":
            factors.append(Pointwise(build_feature(entry.get("feature"), f"{where}.feature")))
        elif kind == "reward":
            beta = float(entry.get("beta", 1.0))
            if not beta > 0:
                raise ConfigError(f"{where}: beta must be > 0, got {beta}.")
            factors.append(Reward(build_feature(entry.get("feature"), f"{where}.feature"), beta))
        else:
            feats = entry.get("features") or ([entry["feature"]] if entry.get("feature") else [])
            moments = list(entry.get("moments") or [])
            if not feats or len(feats) != len(moments):
                raise ConfigError(f"{where}: distributional needs 'features' and as many 'moments' "
                                  f"(got {len(feats)} and {len(moments)}).")
            lambdas = entry.get("lambdas")
            factors.append(Distributional([build_feature(f, f"{where}.features[{j}]") for j, f in enumerate(feats)],
                                          [float(m) for m in moments], None if lambdas is None else list(lambdas)))
    return Target(factors)
