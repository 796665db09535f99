"""Per-sample, per-head attribution scores ``s[i, l, h] = Σ_{q,k} A ⊙ ∂L_i/∂A`` (A: head (l, h)'s attention
probabilities on sample i, L_i: sample i's response loss), computed two ways.

* ``gate`` (default; any attention kernel, one forward + backward): a gate ``ξ`` of ones, shape
  ``[batch, heads]`` per layer, multiplies each head's slice of the output projection's input. Since head h's
  output is ``o = A V`` and the loss sees A only through o, ``Σ_{q,k} A_qk ∂L/∂A_qk = Σ_q <∂L/∂o_q, o_q>
  = ∂L/∂ξ_h`` at ξ = 1. With the per-sample losses summed over the batch, row i of the gate gradient is
  sample i's own score (samples do not interact in a forward pass).
* ``eager`` (reference): the model is switched to eager attention, returns its attention probabilities
  (``output_attentions=True``), and ``Σ A ⊙ ∂L/∂A`` is taken literally from their gradients.

Both return float64 ``[batch, layers, heads]`` signed scores and the per-sample losses.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from tunelens.errors import ConfigError
from tunelens.heads.inputs import Batch, per_sample_loss
from tunelens.heads.sites import HeadSite, head_input_hooks

__all__ = ["BACKENDS", "eager_scores", "gate_scores"]


def _param_dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32


def _forward(model: nn.Module, batch: Batch, **kwargs) -> object:
    device = next(model.parameters()).device
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                 use_cache=False, **kwargs)


def gate_scores(model: nn.Module, batch: Batch, sites: Sequence[HeadSite], *, loss_reduction: str = "mean",
                autocast: Callable[[], object] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores through per-sample head gates on the output projections' inputs (see the module docstring)."""
    n = batch["input_ids"].shape[0]
    device = next(model.parameters()).device
    gates = [torch.ones(n, s.num_heads, dtype=_param_dtype(model), device=device, requires_grad=True)
             for s in sites]
    by_layer = {s.layer: g for s, g in zip(sites, gates)}

    def scale(site: HeadSite, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != n:
            raise ConfigError(f"{site.projection_name}: expected the batch ({n}) first in its input, got "
                              f"shape {tuple(x.shape)}.")
        g = by_layer[site.layer].to(x.dtype)
        return x * g.view(n, *([1] * (x.dim() - 3)), site.num_heads, 1)

    with torch.enable_grad(), head_input_hooks(sites, scale), (autocast() if autocast else _null()):
        out = _forward(model, batch)
        losses = per_sample_loss(out.logits, batch["labels"].to(device), loss_reduction)
        grads = torch.autograd.grad(losses.sum(), gates, allow_unused=True)
    if any(g is None for g in grads):
        missing = [s.projection_name for s, g in zip(sites, grads) if g is None]
        raise ConfigError(f"The loss does not depend on the gates of {missing}: these projections are not on the "
                          f"model's forward path.")
    return torch.stack([g.detach().double() for g in grads], dim=1).cpu(), losses.detach().double().cpu()


@contextmanager
def _null() -> Iterator[None]:
    yield


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention inside the context; the previous implementation is restored."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise ConfigError(f"{type(model).__name__} cannot switch to eager attention (not a PreTrainedModel).")
    previous = config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous or "eager")


def eager_scores(model: nn.Module, batch: Batch, sites: Sequence[HeadSite], *, loss_reduction: str = "mean",
                 autocast: Callable[[], object] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scores ``Σ A ⊙ ∂L_i/∂A`` from eager attention probabilities (memory grows with seq²)."""
    device = next(model.parameters()).device
    with torch.enable_grad(), eager_attention(model), (autocast() if autocast else _null()):
        out = _forward(model, batch, output_attentions=True)
        attentions = [a for a in (out.attentions or ()) if a is not None]
        if len(attentions) != len(sites):
            raise ConfigError(f"{type(model).__name__} returned {len(attentions)} attention maps with "
                              f"output_attentions=True but has {len(sites)} attention layers; the eager reference "
                              f"needs one map per layer.")
        losses = per_sample_loss(out.logits, batch["labels"].to(device), loss_reduction)
        grads = torch.autograd.grad(losses.sum(), attentions, allow_unused=True)
    scores = []
    for site, a, g in zip(sites, attentions, grads):
        if a.shape[1] != site.num_heads:
            raise ConfigError(f"{site.attention_name}: attention map has {a.shape[1]} heads, expected "
                              f"{site.num_heads}.")
        scores.append(torch.zeros(a.shape[:2], dtype=torch.float64) if g is None
                      else (a.detach().double() * g.double()).sum(dim=(-1, -2)))
    return torch.stack(scores, dim=1).cpu(), losses.detach().double().cpu()


BACKENDS = {"gate": gate_scores, "eager": eager_scores}
