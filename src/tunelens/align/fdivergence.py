"""f-divergences D_f(π‖p) = E_p[f(π/p)] as functions of ``log_t = log π(x) − log p(x)``, and the f-DPG loss.

Every function takes ``log_t`` (a tensor, ``+inf`` where the target gives the sample zero mass) so that
ratios never under- or overflow. The policy gradient of Go et al. (ICML 2023, Theorem 1) is

    ∇_θ D_f(π_θ‖p) = E_{x∼q}[ (π_θ(x)/q(x)) · (f′(π_θ/p) − B) · ∇_θ log π_θ(x) ]

with the pseudo-reward ``R = −f′(π/p)`` and any baseline ``B`` not depending on the current samples.

Divergences (``t = π/p``):

=======  ===========================  ==================================  =====================================
name     D_f                          f(t)                                f′ at t=∞ (sample outside the support)
=======  ===========================  ==================================  =====================================
fkl      KL(p‖π)                      −log t                              0
rkl      KL(π‖p)                      t log t                             +∞ (clipped, see ``max_log_ratio``)
js       Jensen-Shannon               ½[t log(2t/(1+t)) + log(2/(1+t))]   ½ log 2
tv       total variation              ½|t − 1|                            ½
chi2     Neyman χ²(p‖π) = Σ(p−π)²/π   (1 − t)²/t                          1
alpha    Amari α (0<α<1)              (t^α − αt − (1−α))/(α(α−1))          1/(1−α)
=======  ===========================  ==================================  =====================================

Reverse KL is the only one whose pseudo-reward is unbounded outside the support: there ``log_t`` is
clipped at ``max_log_ratio`` (default 20 nats), i.e. an out-of-support sample costs as much as one whose
target probability is e^{-20} times its policy probability. The loss stays finite and its gradient
still pushes mass back into the support; the clipping is reported (``clipped`` in the loss stats).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from tunelens.errors import ConfigError, TrainingError

LOSSES = ("fkl", "rkl", "js", "tv", "chi2", "alpha")
LOG2 = math.log(2.0)
_MIN_LOG_T = -60.0  # exp(±2·60) stays finite in float64/float32 math below


@dataclass(frozen=True)
class FDivergence:
    """One divergence: ``f(log_t)`` and ``f_prime(log_t)``, both elementwise and finite wherever they can be."""

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    f_prime: Callable[[torch.Tensor], torch.Tensor]
    bounded_outside_support: bool


def _fkl_f(lt: torch.Tensor) -> torch.Tensor:
    return -lt


def _fkl_fp(lt: torch.Tensor) -> torch.Tensor:
    return -torch.exp(-lt)  # −1/t; exactly 0 at t = ∞


def _rkl_f(lt: torch.Tensor) -> torch.Tensor:
    return torch.exp(lt) * lt


def _rkl_fp(lt: torch.Tensor) -> torch.Tensor:
    return 1.0 + lt


def _js_f(lt: torch.Tensor) -> torch.Tensor:
    # ½[t log(2t/(1+t)) + log(2/(1+t))] with log(1+t) = softplus(log t)
    sp = F.softplus(lt)
    return 0.5 * (torch.exp(lt) * (LOG2 + lt - sp) + LOG2 - sp)


def _js_fp(lt: torch.Tensor) -> torch.Tensor:
    return 0.5 * (LOG2 - F.softplus(-lt))  # ½ log(2t/(1+t)); ½ log 2 at t = ∞


def _tv_f(lt: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.abs(torch.expm1(lt))


def _tv_fp(lt: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.sign(lt)


def _chi2_f(lt: torch.Tensor) -> torch.Tensor:
    lt = lt.clamp(min=_MIN_LOG_T)
    return torch.expm1(lt) ** 2 * torch.exp(-lt)


def _chi2_fp(lt: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.exp(-2.0 * lt.clamp(min=_MIN_LOG_T))  # 1 − 1/t²


def _alpha(alpha: float) -> FDivergence:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must lie strictly between 0 and 1 (0 is forward KL, 1 reverse KL), got {alpha}.")
    a = alpha

    def f(lt: torch.Tensor) -> torch.Tensor:
        return (torch.exp(a * lt) - a * torch.exp(lt) - (1.0 - a)) / (a * (a - 1.0))

    def fp(lt: torch.Tensor) -> torch.Tensor:
        return (torch.exp((a - 1.0) * lt) - 1.0) / (a - 1.0)

    return FDivergence(f"alpha={a:g}", f, fp, True)


def get_divergence(name: str, alpha: float = 0.5) -> FDivergence:
    """The divergence called ``name`` (one of :data:`LOSSES`); ``alpha`` only for ``alpha``."""
    table = {
        "fkl": FDivergence("fkl", _fkl_f, _fkl_fp, True),
        "rkl": FDivergence("rkl", _rkl_f, _rkl_fp, False),
        "js": FDivergence("js", _js_f, _js_fp, True),
        "tv": FDivergence("tv", _tv_f, _tv_fp, True),
        "chi2": FDivergence("chi2", _chi2_f, _chi2_fp, True),
    }
    if name == "alpha":
        return _alpha(alpha)
    if name not in table:
        raise ConfigError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")
    return table[name]


def pseudo_reward(div: FDivergence, log_pi: torch.Tensor, log_p: torch.Tensor,
                  max_log_ratio: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``R = −f′(π/p)`` per sample (finite) and a mask of samples whose ratio was clipped.

    ``log_p`` may be ``−inf`` (outside the target's support); a NaN anywhere is an error of the caller.
    Only divergences unbounded there (reverse KL) clip ``log_t`` at ``max_log_ratio``.
    """
    if torch.isnan(log_pi).any() or torch.isnan(log_p).any():
        part = "policy" if torch.isnan(log_pi).any() else "target"
        raise TrainingError(f"pseudo_reward: the {part} log-probabilities contain NaN; refusing to train on them.")
    lt = log_pi.detach().double() - log_p.detach().double()
    clipped = torch.zeros_like(lt, dtype=torch.bool)
    if not div.bounded_outside_support:
        clipped = lt > max_log_ratio
        lt = lt.clamp(max=max_log_ratio)
    r = -div.f_prime(lt)
    return r, clipped


def fdpg_loss(log_pi: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor,
              log_q: torch.Tensor | None = None, denominator: float | None = None) -> torch.Tensor:
    """Surrogate whose gradient is the f-DPG estimate ``−mean[(π/q)(R − B) ∇log π]``.

    ``log_pi`` carries the gradient; ``reward``, ``baseline`` (per sample) and ``log_q`` (the proposal's
    log-probability; ``None`` means on-policy, weight 1) are constants. ``denominator`` overrides the
    number of samples the mean divides by (micro-batching, several processes).
    """
    coef = (reward - baseline).to(log_pi.dtype)
    if log_q is not None:
        coef = coef * torch.exp(log_pi.detach() - log_q.to(log_pi.dtype))
    n = float(log_pi.numel()) if denominator is None else denominator
    return -(coef.detach() * log_pi).sum() / n


def divergence_from_samples(div: FDivergence, log_pi: torch.Tensor, log_p: torch.Tensor,
                            log_q: torch.Tensor | None = None) -> float:
    """Importance-sampling estimate of D_f(π‖p) from samples of q (default π): mean of (p/q)·f(π/p).

    D_f(π‖p) = E_p[f(t)] = E_q[(p/q) f(t)]; with ``log_p = −inf`` the sample contributes its limit
    ``lim_{p→0} p·f(π/p) = π·f*(0)`` where f* is the perspective (the f′ at ∞ term); for reverse KL that
    is +∞ (returned as ``math.inf``). ``log_p`` must be normalised (the caller subtracts log Ẑ).
    """
    lp, lpi = log_p.double(), log_pi.double()
    lq = lpi if log_q is None else log_q.double()
    n = lp.numel()
    out_support = torch.isinf(lp) & (lp < 0)
    inside = ~out_support
    lt = lpi - lp
    total = torch.zeros((), dtype=torch.float64)
    if inside.any():
        total = total + (torch.exp(lp[inside] - lq[inside]) * div.f(lt[inside])).sum()
    if out_support.any():
        # p·f(π/p) → π·lim_{t→∞} f(t)/t = π·f′(∞) (convex f, f(t)/t → f′(∞))
        tail = div.f_prime(torch.tensor([math.inf], dtype=torch.float64))[0]
        if not math.isfinite(float(tail)):
            return math.inf
        total = total + (torch.exp(lpi[out_support] - lq[out_support]) * tail).sum()
    return float(total / n)
