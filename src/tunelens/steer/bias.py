"""The steering bias: per-head ``log α`` on non-highlighted prompt keys, folded into the mask the kernel gets.

For a steered head, PASTA's rule ``T(A)_ij = α·A_ij / C_i`` (j not highlighted), ``A_ij / C_i`` (j highlighted)
equals ``softmax(scores + b)`` with ``b_j = log α`` on non-highlighted keys and 0 on highlighted ones. So the
handler adds ``b`` (per head, per batch row, per key) to the additive mask the model's own kernel (SDPA or eager)
applies: no attention matrix is materialised beyond what that kernel does.

Key positions: keys are matched to absolute positions as ``offset + i`` with ``offset = max(0, total - kv_len)``,
where ``total`` is the number of tokens the sequence has seen after this forward (past + new). That holds for
full caches (``kv_len == total``), static caches (``kv_len >= total``, unused slots are masked) and dynamic
sliding-window caches that keep the most recent keys (``kv_len < total``). Keys at or beyond the prompt width
``P`` are generated tokens: untouched unless ``scale_generated``.
"""
from __future__ import annotations

import math

import torch

from tunelens.probes.attention_capture import AttentionCall, attention_bias

__all__ = ["key_scale_mask", "steer_mask"]


def key_scale_mask(highlight: torch.Tensor, kv_len: int, total: int, scale_generated: bool) -> torch.Tensor:
    """Bool ``[batch, kv_len]``: keys whose attention is multiplied by α (non-highlighted prompt keys, plus
    generated keys when ``scale_generated``). ``highlight`` is ``[batch, P]`` in absolute positions."""
    prompt_len = highlight.shape[1]
    offset = max(0, total - kv_len)
    pos = torch.arange(offset, offset + kv_len, device=highlight.device)
    in_prompt = pos < prompt_len
    scaled = torch.zeros((highlight.shape[0], kv_len), dtype=torch.bool, device=highlight.device)
    if bool(in_prompt.any()):
        idx = pos[in_prompt]
        scaled[:, in_prompt] = ~highlight.index_select(1, idx)
    if scale_generated:
        scaled[:, ~in_prompt] = True
    return scaled


def _base_mask(call: AttentionCall, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask the kernel would apply (causal / padding / sliding window / position bias), as finite
    values in ``dtype`` (masked = dtype's min, like transformers' eager masks)."""
    bias = attention_bias(call)
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)


def steer_mask(call: AttentionCall, scaled_keys: torch.Tensor, strength: torch.Tensor,
               full_layer: float | None = None) -> torch.Tensor:
    """The new additive mask for ``call``: the original one plus ``strength[h]`` on ``scaled_keys`` (``[B, kv]``).

    ``strength``: ``[heads]`` (``log α`` on steered heads, 0 elsewhere; may require grad). ``full_layer``: when
    every head of the layer gets the same constant, that constant — the bias then has no head dimension.
    """
    dtype = call.query.dtype
    base = _base_mask(call, dtype)
    keys = scaled_keys.to(dtype)[:, None, None, :]  # [B, 1, 1, kv]
    if full_layer is not None:
        add = keys * full_layer
    else:
        add = keys * strength.to(dtype)[None, :, None, None]  # [B, H, 1, kv]
    mask = base + add
    if mask.shape[-2] != call.query_len:
        mask = mask.expand(*mask.shape[:-2], call.query_len, mask.shape[-1])
    return mask


def log_alpha(alpha: float) -> float:
    return math.log(alpha)
