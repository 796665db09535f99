"""Where each attention head lives: the input slices of every attention layer's output projection.

For any Hugging Face causal LM the attention output is ``o_proj(concat_h(o_h))`` with ``o_h = A_h V_h`` (Llama,
Gemma, Mistral, Qwen: ``o_proj``; GPT-2: the ``Conv1D`` ``c_proj``; OPT/BART-like: ``out_proj``; GPT-NeoX/Falcon:
``dense``). The input of that projection, viewed as ``[batch, seq, heads, head_dim]``, holds every query head's
output separately (grouped-query attention shares keys/values, not outputs), so a forward pre-hook on it can
scale, zero or replace single heads without touching the attention kernel (SDPA, eager, flash: all the same).

:func:`find_head_sites` discovers the projections generically: every module whose class name contains
"Attention" and which has a direct child projection (``nn.Linear``-like or ``Conv1D``) with
``in_features == num_heads * head_dim`` and ``out_features == hidden_size``; a known output name
(:data:`OUTPUT_NAMES`) wins over an unknown one, and a projection *into* the heads (``q_proj``, GPT-2's
``c_attn``) never matches because its output width is not the hidden size or it is not an output name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunelens.errors import ConfigError

__all__ = ["OUTPUT_NAMES", "HeadSite", "check_heads", "find_head_sites", "head_input_hooks", "model_shape"]

#: Names of attention output projections in transformers models, most common first.
OUTPUT_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "wo", "o", "proj")
_INPUT_NAMES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "q", "k", "v")


@dataclass(frozen=True)
class HeadSite:
    """One attention layer: its index among the model's attention layers, the module names, the projection
    whose input holds the heads, and the head layout of that input (``num_heads * head_dim`` features)."""

    layer: int
    attention_name: str
    projection_name: str
    projection: nn.Module
    num_heads: int
    head_dim: int


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear-like module (also PEFT wrappers) or of GPT-2's ``Conv1D``."""
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor):
        nx, nf = module.weight.shape  # Conv1D stores weight as [in, out]
        return int(nx), int(nf)
    return None


def _text_config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ConfigError(f"{type(model).__name__} has no .config; pass a Hugging Face causal LM.")
    get_text = getattr(cfg, "get_text_config", None)
    return get_text() if callable(get_text) else cfg


def model_shape(model: nn.Module) -> tuple[int, int]:
    """(number of query heads, hidden size) from the model's (text) config."""
    cfg = _text_config(model)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if not heads or not hidden:
        raise ConfigError(f"{type(model).__name__}'s config names no num_attention_heads/hidden_size.")
    return int(heads), int(hidden)


def _pick_projection(attn: nn.Module, heads: int, head_dim: int, hidden: int) -> tuple[str, nn.Module] | None:
    matches = []
    for name, child in attn.named_children():
        io = _in_out(child)
        if io is not None and io == (heads * head_dim, hidden) and name not in _INPUT_NAMES:
            matches.append((name, child))
    if not matches:
        return None
    known = [m for m in matches if m[0] in OUTPUT_NAMES]
    if known:
        return min(known, key=lambda m: OUTPUT_NAMES.index(m[0]))
    return matches[-1] if len(matches) == 1 else None


def find_head_sites(model: nn.Module) -> list[HeadSite]:
    """Every attention layer's output projection, in layer order. Raises :class:`ConfigError` when none is
    found (the model's attention has no separate output projection with the head layout)."""
    heads, hidden = model_shape(model)
    cfg = _text_config(model)
    sites: list[HeadSite] = []
    for name, module in model.named_modules():
        if "attention" not in type(module).__name__.lower() or any(
                name.startswith(s.attention_name + ".") for s in sites):
            continue
        head_dim = getattr(module, "head_dim", None) or getattr(cfg, "head_dim", None) or hidden // heads
        picked = _pick_projection(module, heads, int(head_dim), hidden)
        if picked is None:
            continue
        proj_name, proj = picked
        layer_idx = getattr(module, "layer_idx", None)
        sites.append(HeadSite(len(sites), name, f"{name}.{proj_name}", proj, heads, int(head_dim)))
        if layer_idx is not None and int(layer_idx) != len(sites) - 1:
            raise ConfigError(f"{name}: attention layers are not in layer_idx order (found {layer_idx} at "
                              f"position {len(sites) - 1}); head patterns need layer order.")
    if not sites:
        raise ConfigError(
            f"No attention output projection found in {type(model).__name__}: expected modules named *Attention* "
            f"with a child {'/'.join(OUTPUT_NAMES)} of input width num_heads*head_dim ({heads} heads) and output "
            f"width hidden_size ({hidden}).")
    return sites


def check_heads(sites: Sequence[HeadSite], heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validate ``(layer, head)`` pairs against the model; returns them as sorted unique int pairs."""
    out = set()
    for item in heads:
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise ConfigError(f"A head must be a (layer, head) pair of ints, got {item!r}.") from None
        if not 0 <= layer < len(sites):
            raise ConfigError(f"Head ({layer}, {head}): layer {layer} is out of range; the model has "
                              f"{len(sites)} attention layers (0..{len(sites) - 1}).")
        if not 0 <= head < sites[layer].num_heads:
            raise ConfigError(f"Head ({layer}, {head}): head {head} is out of range; layer {layer} has "
                              f"{sites[layer].num_heads} heads (0..{sites[layer].num_heads - 1}).")
        out.add((layer, head))
    return sorted(out)


HeadTransform = Callable[[HeadSite, torch.Tensor], torch.Tensor]


@contextmanager
def head_input_hooks(sites: Sequence[HeadSite], transform: HeadTransform) -> Iterator[None]:
    """While active, the input of each site's projection, viewed as ``[..., heads, head_dim]``, is replaced by
    ``transform(site, x)`` (same shape) before the projection runs. Hooks are removed on exit (also on error)."""
    handles = []

    def make(site: HeadSite) -> Callable:
        def pre_hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            if x.shape[-1] != site.num_heads * site.head_dim:
                raise ConfigError(f"{site.projection_name}: input width {x.shape[-1]} is not "
                                  f"{site.num_heads} heads x {site.head_dim}.")
            y = transform(site, x.unflatten(-1, (site.num_heads, site.head_dim)))
            return (y.flatten(-2), *args[1:])
        return pre_hook

    try:
        for site in sites:
            handles.append(site.projection.register_forward_pre_hook(make(site)))
        yield
    finally:
        for h in handles:
            h.remove()
