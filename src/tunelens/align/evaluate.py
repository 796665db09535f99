"""The two measurements outside the optimisation loop: the probe of the base (Ẑ, λ) and policy evaluations."""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Sequence

import torch

from tunelens.align.features import TargetError
from tunelens.align.metrics import divergences, kl_p_pi_from_base, policy_metrics
from tunelens.align.partition import PartitionEstimator, ess
from tunelens.align.samples import Context
from tunelens.align.scoring import AlignModels
from tunelens.align.targets import Target


def probe_base(models: AlignModels, target: Target, contexts: Sequence[Context], z: PartitionEstimator, *,
               n_per_context: int, max_new_tokens: int, seed: int, fit_tol: float = 1e-4,
               drop_unaccepted: bool = False) -> dict[str, Any]:
    """Sample the base a for every context: fit λ (distributional factors, pooled over contexts) and
    initialise Ẑ_c (weights P/a = the factors). Raise :class:`TargetError` if a context accepts no sample, or,
    with ``drop_unaccepted``, list it under ``dropped_contexts`` (its Ẑ_c is unknown: it must not be trained);
    an error still when every context would be dropped."""
    g = torch.Generator().manual_seed(seed)
    rows = [c for c in contexts for _ in range(n_per_context)]
    drawn = models.sample("base", rows, max_new_tokens, g)
    fits = target.fit(drawn.samples, tol=fit_tol)
    log_f = target.log_factor(drawn.samples)
    idx = drawn.samples.context_index
    per_ctx, dropped = {}, []
    for c in contexts:
        sel = torch.tensor([i == c.index for i in idx])
        acc = float(torch.isfinite(log_f[sel]).double().mean())
        if acc == 0.0 and (not drop_unaccepted or len(dropped) == len(contexts) - 1):
            raise TargetError(
                f"zero acceptance: none of the {n_per_context} probe samples of context {c.index} "
                f"({c.text[:60]!r}) has non-zero target mass under {[f.name for f in target.factors]}"
                f"{' (nor of any other context)' if drop_unaccepted else ''}. Increase probe_samples or "
                "max_new_tokens, choose a less rare constraint, or set zero_acceptance=drop to train on the "
                "contexts that have some.")
        if acc == 0.0:
            dropped.append(c.index)
        per_ctx[c.index] = {"acceptance": acc, "ess": ess(log_f[sel])}
    z.update(idx, log_f)
    return {"fits": [asdict(f) for f in fits], "lambdas": target.state(), "contexts": per_ctx,
            "dropped_contexts": dropped,
            "acceptance": sum(v["acceptance"] for v in per_ctx.values()) / len(per_ctx),
            **{f"z/{k}": v for k, v in z.summary().items()}}


def evaluate_policy(models: AlignModels, target: Target, contexts: Sequence[Context], z: PartitionEstimator, *,
                    n_per_context: int, max_new_tokens: int, seed: int, n_base: int = 0) -> dict[str, float]:
    """Alignment, divergences to the target (IS, with Ẑ), KL from the base, diversity, on fresh policy samples.

    With ``n_base`` > 0, also KL(p‖π) on ``n_base`` samples of the base per context (``kl_p_pi_base``). The same
    ``seed`` at every evaluation gives common random numbers across steps.
    """
    g = torch.Generator().manual_seed(seed)
    rows = [c for c in contexts for _ in range(n_per_context)]
    drawn = models.sample("policy", rows, max_new_tokens, g)
    s = drawn.samples
    log_pi = drawn.logprob
    log_a = models.score("base", s)
    log_f = target.log_factor(s)
    log_p = log_a + log_f - z.log_z_of(s.context_index)
    out = dict(target.alignment(s))
    out.update(divergences(log_pi, log_p, s.context_index))
    out.update(policy_metrics(log_pi, log_a, [len(t) for t in s.token_ids], s.token_ids))
    out.update({f"z/{k}": v for k, v in z.summary([c.index for c in contexts]).items()})
    out["n_samples"] = float(len(s))
    if n_base > 0:
        out.update(_kl_p_pi_on_base_samples(models, target, contexts, n_base, max_new_tokens, seed + 1))
    return {k: (v if math.isfinite(v) else float(v)) for k, v in out.items()}


def _kl_p_pi_on_base_samples(models: AlignModels, target: Target, contexts: Sequence[Context], n_per_context: int,
                             max_new_tokens: int, seed: int) -> dict[str, float]:
    drawn = models.sample("base", [c for c in contexts for _ in range(n_per_context)], max_new_tokens,
                          torch.Generator().manual_seed(seed))
    b = drawn.samples
    log_f = target.log_factor(b)
    log_pi = torch.full((len(b),), math.nan, dtype=torch.float64)
    kept = [i for i in range(len(b)) if math.isfinite(float(log_f[i]))]
    if kept:  # only samples with non-zero target mass carry weight: score just those under π
        log_pi[kept] = models.score("policy", b.select(kept))
    return kl_p_pi_from_base(log_pi, drawn.logprob, log_f, b.context_index)
