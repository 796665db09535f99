"""Head ablation: zero a set of heads, or replace them with their mean output, during forward passes.

``with ablate_heads(model, [(layer, head), ...], mode="zero"): model(...)`` edits the heads' slices of the output
projections' input (see :mod:`tunelens.heads.sites`), so it works with any attention kernel. ``mode="mean"``
replaces a head's output by its mean over the (non-padding) tokens of reference data, from
:func:`mean_head_outputs`. An empty head set installs no hooks, so outputs stay bit-identical.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tunelens.errors import ConfigError
from tunelens.heads.inputs import Batch, per_sample_loss
from tunelens.heads.sites import (
    HeadSite,
    check_heads,
    find_head_sites,
    head_input_hooks,
)

__all__ = ["ABLATION_MODES", "ablate_heads", "mean_head_outputs", "response_loss"]

ABLATION_MODES = ("zero", "mean")


@torch.no_grad()
def mean_head_outputs(model: nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Each layer's mean head output ``[heads, head_dim]`` over the non-padding tokens of ``batches``."""
    sites = find_head_sites(model)
    sums = [torch.zeros(s.num_heads, s.head_dim, dtype=torch.float64) for s in sites]
    count = {"n": 0, "mask": None}

    def record(site: HeadSite, x: torch.Tensor) -> torch.Tensor:
        mask = count["mask"].to(x.device, x.dtype)
        sums[site.layer] += (x * mask[..., None, None]).sum(dim=(0, 1)).double().cpu()
        return x

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with head_input_hooks(sites, record):
            for batch in batches:
                count["mask"] = batch["attention_mask"]
                count["n"] += int(batch["attention_mask"].sum())
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                      use_cache=False)
    finally:
        model.train(was_training)
    if count["n"] == 0:
        raise ConfigError("mean_head_outputs: the batches hold no tokens.")
    return [s / count["n"] for s in sums]


@contextmanager
def ablate_heads(model: nn.Module, heads: Sequence[tuple[int, int]], mode: str = "zero",
                 means: Sequence[torch.Tensor] | None = None) -> Iterator[list[tuple[int, int]]]:
    """Ablate ``heads`` (``(layer, head)`` pairs) inside the context; yields the validated, sorted head list.

    ``mode="zero"`` zeroes each head's output; ``mode="mean"`` replaces it with ``means[layer][head]`` (from
    :func:`mean_head_outputs`). Heads out of range raise :class:`ConfigError`.
    """
    if mode not in ABLATION_MODES:
        raise ConfigError(f"Unknown ablation mode {mode!r}; choose from {ABLATION_MODES}.")
    sites = find_head_sites(model)
    chosen = check_heads(sites, heads)
    if mode == "mean" and means is None:
        raise ConfigError("mode='mean' needs means=mean_head_outputs(model, batches).")
    if means is not None and len(means) != len(sites):
        raise ConfigError(f"means has {len(means)} layers, the model {len(sites)}.")
    if not chosen:
        yield chosen
        return
    by_layer: dict[int, list[int]] = {}
    for layer, head in chosen:
        by_layer.setdefault(layer, []).append(head)
    active = [s for s in sites if s.layer in by_layer]

    def edit(site: HeadSite, x: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor(by_layer[site.layer], device=x.device)
        keep = torch.ones(site.num_heads, dtype=x.dtype, device=x.device).index_fill(0, idx, 0)
        y = x * keep[:, None]
        if mode == "mean":
            fill = means[site.layer].to(x.device, x.dtype) * (1 - keep)[:, None]  # type: ignore[index]
            y = y + fill
        return y

    with head_input_hooks(active, edit):
        yield chosen


@torch.no_grad()
def response_loss(model: nn.Module, batches: Sequence[Batch], bf16: bool = False) -> dict[str, Any]:
    """Mean response loss per sample (``loss``) and per token (``token_loss``) over ``batches``, and each
    sample's loss (``sample_losses``, samples with a response only)."""
    device = next(model.parameters()).device
    sample_losses, token_sum, tokens = [], 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(input_ids=batch["input_ids"].to(device),
                            attention_mask=batch["attention_mask"].to(device), use_cache=False)
            labels = batch["labels"].to(device)
            n = (labels[:, 1:] != -100).sum(-1)
            mean = per_sample_loss(out.logits, labels, "mean")
            sample_losses.extend(mean[n > 0].double().cpu().tolist())
            token_sum += float(per_sample_loss(out.logits, labels, "sum").double().sum())
            tokens += int(n.sum())
    finally:
        model.train(was_training)
    return {"loss": sum(sample_losses) / max(len(sample_losses), 1), "token_loss": token_sum / max(tokens, 1),
            "n_samples": len(sample_losses), "n_tokens": tokens, "sample_losses": sample_losses}
