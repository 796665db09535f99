"""``with steer(model, highlight, heads=..., alpha=0.9): model.generate(...)`` — attention steering for any model
whose attention goes through transformers' ``AttentionInterface`` (SDPA or eager; no model-class whitelist).

How it runs: :func:`tunelens.probes.attention_capture.intercept_attention` switches the model to an interceptor
registered in ``AttentionInterface`` that delegates to the implementation the model was using; the steering
handler replaces each steered layer's mask with ``mask + log α`` on the non-highlighted prompt keys of the steered
heads (:mod:`tunelens.steer.bias`). Per forward pass, a model pre-hook works out which batch rows run and how many
tokens each sequence has seen:

* a forward without a filled KV cache is a *prefill*: its rows get their highlight (an explicit
  :class:`Highlight` matched by shape — repeated when ``generate`` expands the batch for beams or samples — or
  a :class:`PromptHighlights` matched by each row's unpadded token ids);
* the rows' highlights are attached to the KV cache object, and follow it through ``batch_select_indices``,
  ``reorder_cache`` and ``batch_repeat_interleave`` (so rows dropped, forked or beam-reordered keep theirs), so
  decode steps still see the bias on the prompt keys.

Errors (``ConfigError``): α outside (0, 1]; a head out of range or an empty head set; a highlight that selects
nothing or does not fit the prompt; a decode step on a cache not prefilled under steering; a model whose forward
never calls the registered attention function, or whose steered layers never reach it.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import nn

from tunelens.errors import ConfigError
from tunelens.probes.attention_capture import AttentionCall, intercept_attention
from tunelens.steer.bias import key_scale_mask, steer_mask
from tunelens.steer.cache_rows import ROWS_ATTR, track_cache_rows
from tunelens.steer.heads import HeadSet, HeadSpec, resolve_heads
from tunelens.steer.spans import Highlight, PromptHighlights

__all__ = ["Steering", "check_alpha", "steer"]

HighlightLike = Union[Highlight, PromptHighlights, torch.Tensor]


def check_alpha(alpha: Any) -> float:
    """α as a float in (0, 1] (1 = no steering), else ConfigError."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a number in (0, 1], got {alpha!r}.") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ConfigError(f"alpha must lie in (0, 1] (attention to non-highlighted keys is multiplied by alpha), "
                          f"got {alpha!r}.")
    return value


class Steering:
    """The state of one ``steer`` context: settings, per-forward rows, and counters.

    ``strengths[layer]``: ``[heads]`` additive bias per head (``log α`` on steered heads); pass tensors that
    require grad to differentiate through steering (see :mod:`tunelens.steer.select`).
    """

    def __init__(self, heads: HeadSet, alpha: float, highlight: Highlight | PromptHighlights,
                 scale_generated: bool, device: torch.device,
                 strengths: dict[int, torch.Tensor] | None = None):
        self.heads, self.alpha, self.highlight = heads, alpha, highlight
        self.scale_generated = scale_generated
        self.log_alpha = math.log(alpha)
        custom = strengths is not None
        if strengths is None:
            strengths = {}
            for layer, hs in heads.heads.items():
                s = torch.zeros(heads.n_heads, device=device)
                s[list(hs)] = self.log_alpha
                strengths[layer] = s
        self._uniform = not custom  # default strengths: a fully steered layer shares one constant
        self.strengths = strengths
        self.forwards = 0
        self.steered_calls = 0
        self._rows: torch.Tensor | None = None
        self._total = 0
        self._calls = 0
        self._seen: set[int] = set()
        self._memo: dict[Any, torch.Tensor] = {}

    # ------------------------------------------------------------------ per forward
    def settings(self) -> dict[str, Any]:
        """What was steered, for result records."""
        return {"alpha": self.alpha, "n_heads": len(self.heads), "heads": self.heads.to_json(),
                "scale_generated": self.scale_generated}

    def _prefill_rows(self, ids: torch.Tensor | None, att: torch.Tensor | None, batch: int,
                      q_len: int, device: torch.device) -> torch.Tensor:
        hl = self.highlight
        if isinstance(hl, Highlight):
            if hl.width > q_len:
                raise ConfigError(f"steering: the highlight covers {hl.width} prompt tokens but the input has only "
                                  f"{q_len}; build it from the same (padded) inputs.")
            if batch % hl.batch:
                raise ConfigError(f"steering: the highlight has {hl.batch} rows but the batch has {batch}.")
            mask = hl.mask.to(device)
            return mask if batch == hl.batch else mask.repeat_interleave(batch // hl.batch, dim=0)
        if ids is None:
            raise ConfigError("steering with PromptHighlights needs input_ids (got inputs_embeds only).")
        rows = torch.zeros((batch, q_len), dtype=torch.bool)
        real = torch.ones_like(ids, dtype=torch.bool) if att is None else att[:, -q_len:].to(torch.bool)
        ids_cpu, real_cpu = ids.cpu(), real.cpu()
        for b in range(batch):
            pos = real_cpu[b].nonzero().flatten()
            rows[b, pos] = torch.tensor(hl.lookup(ids_cpu[b, pos].tolist()), dtype=torch.bool)
        return rows.to(device)

    def begin(self, args: tuple, kwargs: dict) -> None:
        """Model forward pre-hook: find this forward's rows and sequence length."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds  # longer than an explicit highlight: prompt + continuation
        if ref is None:
            raise ConfigError("steering: the forward pass got neither input_ids nor inputs_embeds.")
        batch, q_len = int(ref.shape[0]), int(ref.shape[1])
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if past == 0:
            rows = self._prefill_rows(ids, kwargs.get("attention_mask"), batch, q_len, ref.device)
            if cache is not None:
                cache.__dict__[ROWS_ATTR] = rows
        else:
            rows = cache.__dict__.get(ROWS_ATTR)
            if rows is None:
                raise ConfigError("steering: this KV cache was not prefilled under steer(...); run the prompt "
                                  "inside the steering context so the highlighted positions are known.")
            if rows.shape[0] != batch:
                raise ConfigError(f"steering: the cache carries {rows.shape[0]} highlighted rows but the batch has "
                                  f"{batch} (rows changed outside batch_select_indices/reorder_cache).")
        self._rows, self._total, self._calls = rows, past + q_len, 0
        self._seen, self._memo = set(), {}
        self.forwards += 1

    def end(self, output: Any) -> None:
        """Model forward hook: attach rows to a cache the model created, check every steered layer was reached."""
        cache = getattr(output, "past_key_values", None)
        if cache is not None and self._rows is not None and ROWS_ATTR not in cache.__dict__:
            cache.__dict__[ROWS_ATTR] = self._rows
        missing = sorted(set(self.heads.heads) - self._seen)
        if missing:
            raise ConfigError(f"steering: layers {missing[:8]} have steered heads but never reached the registered "
                              "attention function in this forward pass (the model bypasses AttentionInterface "
                              "there, or its layer indices differ); nothing would be steered in them.")

    # ------------------------------------------------------------------ per attention call
    def __call__(self, call: AttentionCall) -> AttentionCall | None:
        layer = call.layer if call.layer is not None else self._calls
        self._calls += 1
        self._seen.add(layer)
        strength = self.strengths.get(layer)
        if strength is None or self._rows is None:
            return None
        constant = None
        if not strength.requires_grad:
            if not bool(strength.any()):
                return None
            if self._uniform and self.heads.is_full_layer(layer):
                constant = float(strength[0])
        if strength.shape[0] != call.query.shape[1]:
            raise ConfigError(f"{call.name}: {call.query.shape[1]} query heads, but the head set assumes "
                              f"{strength.shape[0]}.")
        key = (call.kv_len, call.query_len, call.query.dtype, id(call.attention_mask),
               call.kwargs.get("sliding_window"), constant, layer if constant is None else None)
        mask = self._memo.get(key)
        if mask is None:
            scaled = key_scale_mask(self._rows, call.kv_len, self._total, self.scale_generated)
            mask = steer_mask(call, scaled, strength, constant)
            if len(self._memo) >= 4:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = mask
        self.steered_calls += 1
        kwargs = {k: v for k, v in call.kwargs.items() if k not in ("position_bias", "is_causal")}
        return call.replace(attention_mask=mask, kwargs=kwargs)


def _as_highlight(highlight: HighlightLike) -> Highlight | PromptHighlights:
    if isinstance(highlight, (Highlight, PromptHighlights)):
        return highlight
    if isinstance(highlight, (torch.Tensor, list)):
        return Highlight(torch.as_tensor(highlight))
    raise ConfigError(f"highlight must be a Highlight, PromptHighlights or a bool [batch, prompt_len] mask, "
                      f"got {type(highlight).__name__}.")


@contextmanager
def steer(model: nn.Module, highlight: HighlightLike, heads: HeadSpec = "all", alpha: float = 0.9, *,
          scale_generated: bool = False, strengths: dict[int, torch.Tensor] | None = None) -> Iterator[Steering]:
    """Steer ``model``'s attention toward the highlighted prompt tokens while the context is active.

    For every head in ``heads`` (``"all"``, a ``{"layer": [heads]}`` file or mapping, ``(layer, head)`` pairs, or a
    :class:`HeadSet`), attention to non-highlighted prompt keys is multiplied by ``alpha`` and rows renormalised.
    ``highlight``: a :class:`Highlight` (``[batch, prompt_len]`` bool, aligned with the padded input ids; see
    :func:`encode_highlighted` / :func:`encode_chat`) or :class:`PromptHighlights`. Generated tokens are scaled too
    only with ``scale_generated=True``. Works with ``forward`` and ``generate`` (KV cache included). Yields the
    :class:`Steering` (``settings()``, counters).
    """
    alpha = check_alpha(alpha)
    head_set = resolve_heads(model, heads)
    if len(head_set) == 0:
        raise ConfigError("the head set selects no head: steering it would do nothing.")
    hl = _as_highlight(highlight)
    device = next(model.parameters()).device
    steering = Steering(head_set, alpha, hl, scale_generated, device, strengths)
    with track_cache_rows(), intercept_attention(model, steering):  # its hooks run first: bypass errors
        hooks = [model.register_forward_pre_hook(lambda m, a, k: steering.begin(a, k), with_kwargs=True),
                 model.register_forward_hook(lambda m, a, o: steering.end(o))]
        try:
            yield steering
        finally:
            for h in hooks:
                h.remove()
