"""Causal check of a head pattern: ablating its top-k heads should hurt more than ablating k random heads.

:func:`ablation_check` measures the response loss (and optionally probe metrics through
:func:`tunelens.probes.run`) with no ablation, with the top-k heads of a pattern ablated, and with ``n_random``
seeded draws of k other heads ablated, and reports the changes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from tunelens.errors import ConfigError
from tunelens.heads.ablation import ablate_heads, mean_head_outputs, response_loss
from tunelens.heads.inputs import as_batches
from tunelens.heads.patterns import HeadPatterns
from tunelens.heads.sites import find_head_sites

__all__ = ["AblationCondition", "AblationReport", "ablation_check", "probe_metrics", "random_heads"]

Probe = Callable[[nn.Module, Any], dict[str, float]]


@dataclass
class AblationCondition:
    """One ablated head set and what it did: losses, their change from the baseline, probe metrics."""

    name: str
    heads: list[tuple[int, int]]
    loss: float
    token_loss: float
    delta_loss: float = 0.0
    abs_delta_loss: float = 0.0  # mean over samples of |Δ sample loss|: the causal counterpart of AP
    sample_losses: list[float] = field(default_factory=list, repr=False)
    probe: dict[str, float] = field(default_factory=dict)
    delta_probe: dict[str, float] = field(default_factory=dict)


@dataclass
class AblationReport:
    """Baseline, top-k and random-k conditions, plus a summary: top vs random Δloss (signed, of the mean loss)
    and mean per-sample |Δloss| (what AP estimates to first order, since AP drops the sign per sample);
    ``top_beats_random_frac`` is the fraction of random draws whose |Δloss| the top-k set exceeds."""

    k: int
    mode: str
    baseline: AblationCondition
    top: AblationCondition
    random: list[AblationCondition]

    def summary(self) -> dict[str, Any]:
        r = np.array([c.delta_loss for c in self.random])
        ra = np.array([c.abs_delta_loss for c in self.random])
        out = {"k": self.k, "mode": self.mode, "baseline_loss": self.baseline.loss, "n_random": int(r.size),
               "top_delta_loss": self.top.delta_loss, "random_delta_loss_mean": float(r.mean()),
               "random_delta_loss_std": float(r.std(ddof=1)) if r.size > 1 else 0.0,
               "top_abs_delta_loss": self.top.abs_delta_loss, "random_abs_delta_loss_mean": float(ra.mean()),
               "random_abs_delta_loss_std": float(ra.std(ddof=1)) if ra.size > 1 else 0.0,
               "top_beats_random_frac": float((self.top.abs_delta_loss > ra).mean())}
        for key, v in self.top.delta_probe.items():
            rs = [c.delta_probe.get(key, float("nan")) for c in self.random]
            out[f"top_delta_{key}"] = v
            out[f"random_delta_{key}_mean"] = float(np.nanmean(rs))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "baseline": asdict(self.baseline), "top": asdict(self.top),
                "random": [asdict(c) for c in self.random]}


def random_heads(shape: tuple[int, int], k: int, seed: int, exclude: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """k distinct heads drawn uniformly (seeded) from those not in ``exclude`` (from all if too few remain)."""
    layers, heads = shape
    pool = [(l, h) for l in range(layers) for h in range(heads) if (l, h) not in set(exclude)]
    if len(pool) < k:
        pool = [(l, h) for l in range(layers) for h in range(heads)]
    rng = np.random.default_rng(seed)
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))


def probe_metrics(suites: str, variants: str = "chat", settings: Any = None) -> Probe:
    """A probe for :func:`ablation_check` running :func:`tunelens.probes.run` and returning its flat metrics."""
    def run_probe(model: nn.Module, tokenizer: Any) -> dict[str, float]:
        from tunelens.probes import run

        return run(model, tokenizer, suites, variants, settings).flat()
    return run_probe


def _condition(name: str, model: nn.Module, tokenizer: Any, batches: list, heads: Sequence[tuple[int, int]], mode: str,
               means: Any, probe: Probe | None, bf16: bool, base: AblationCondition | None) -> AblationCondition:
    with ablate_heads(model, heads, mode, means) as chosen:
        loss = response_loss(model, batches, bf16=bf16)
        metrics = probe(model, tokenizer) if probe is not None else {}
    cond = AblationCondition(name, [tuple(h) for h in chosen], loss["loss"], loss["token_loss"], probe=metrics,
                             sample_losses=loss["sample_losses"])
    if base is not None:
        cond.delta_loss = cond.loss - base.loss
        cond.abs_delta_loss = float(np.mean(np.abs(np.subtract(cond.sample_losses, base.sample_losses))))
        cond.delta_probe = {k: v - base.probe[k] for k, v in metrics.items() if k in base.probe}
    return cond


def ablation_check(model: nn.Module, tokenizer: Any, data: Any, patterns: HeadPatterns, k: int, *,
                   mode: str = "zero", n_random: int = 5, seed: int = 0, batch_size: int = 8, max_length: int = 512,
                   limit: int | None = None, bf16: bool = False, probe: Probe | None = None) -> AblationReport:
    """Ablate the top-k heads of ``patterns`` and ``n_random`` seeded random k-sets (disjoint from the top-k
    when possible) on ``data``'s response loss; ``mode`` is ``zero`` or ``mean`` (means over ``data``)."""
    sites = find_head_sites(model)
    if patterns.shape != (len(sites), sites[0].num_heads):
        raise ConfigError(f"The pattern is {patterns.shape} but the model has {len(sites)} layers x "
                          f"{sites[0].num_heads} heads.")
    if n_random < 1:
        raise ConfigError(f"n_random must be >= 1, got {n_random}.")
    top = patterns.top_k(k)
    batches = as_batches(data, tokenizer, batch_size=batch_size, max_length=max_length, limit=limit)
    means = mean_head_outputs(model, batches) if mode == "mean" else None
    base = _condition("baseline", model, tokenizer, batches, [], mode, means, probe, bf16, None)
    top_c = _condition(f"top{k}", model, tokenizer, batches, top, mode, means, probe, bf16, base)
    rand = [_condition(f"random{k}-{i}", model, tokenizer, batches, random_heads(patterns.shape, k, seed + i, top),
                       mode, means, probe, bf16, base) for i in range(n_random)]
    return AblationReport(k, mode, base, top_c, rand)
