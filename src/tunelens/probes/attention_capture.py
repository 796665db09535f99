"""Attention probabilities from any transformers model, through ``transformers.AttentionInterface``.

No hooks on model classes and no model whitelist: while a context is active, the model runs a custom attention
implementation registered in ``AttentionInterface`` (and ``AttentionMaskInterface``, so it receives exactly the
mask the original implementation would), which

1. hands every attention call, as an :class:`AttentionCall`, to the handlers of the context (a handler may
   observe it, or return a changed call, e.g. another mask: the hook steering builds on), then
2. computes the layer's output by delegating to the implementation the model was using (``sdpa``, or
   ``eager``: the model module's own ``eager_attention_forward``), so outputs are unchanged.

Two entry points:

* :func:`intercept_attention` (low level): ``with intercept_attention(model, handler): ...``.
* :func:`capture_attention`: ``with capture_attention(model, "last") as cap: model(**batch)``; then
  ``cap.attentions[l]`` is the fp32 probability tensor ``[batch, heads, n_selected, kv_len]`` of the l-th
  attention call of the last forward (``cap.stacked()`` stacks them: ``[layers, batch, heads, n, kv]``).

Probabilities (:func:`attention_probs`) are computed only for the selected query rows:
``softmax_fp32(softcap(q_sel · Kᵀ · scaling) + bias)``, with GQA key heads shared by ``heads // kv_heads`` query
heads, and ``bias`` built from the mask the kernel got (:func:`attention_bias`): a boolean mask (True = attend,
SDPA), an additive float mask (eager), or ``None``, which means what the kernel does with it: causal (upper-left
aligned, like ``torch`` SDPA's ``is_causal``) for SDPA when ``query_len > 1`` and the module is causal, no mask
otherwise. Sliding windows: transformers builds them into the mask of sliding layers (Gemma-3, Mistral, ...); the
``sliding_window`` argument is applied on top only when no mask was given (where transformers only ever skips the
mask when the window cannot bind, so this changes nothing). ``softcap`` (Gemma-2) and SDPA's ``position_bias``
are applied like the eager/SDPA kernels do. Rows whose every key is masked are all zero. Dropout (training mode)
is not reflected.

The implementation is switched with ``model.set_attn_implementation`` on entry and restored on exit (also on
error). A model whose class cannot switch, or whose forward pass never calls the function (its attention bypasses
``AttentionInterface``), raises :class:`~tunelens.errors.ConfigError` naming the class. Limits: only models
running ``sdpa`` or ``eager`` (switch flash/flex models to ``sdpa`` first); with ``eager``, GPT-2's
``reorder_and_upcast_attn`` path is replaced by its plain eager function (same math, not bit-identical).
"""
from __future__ import annotations

import sys
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from tunelens.errors import ConfigError

__all__ = ["AttentionCall", "Capture", "DELEGATES", "attention_bias", "attention_probs", "capture_attention",
           "implementation_name", "intercept_attention"]

#: Implementations the interceptor can delegate to.
DELEGATES = ("sdpa", "eager")
_PREFIX = "tunelens_"

QueryPositions = Union[str, Sequence[int]]


def implementation_name(delegate: str) -> str:
    """The ``AttentionInterface`` key under which the interceptor delegating to ``delegate`` is registered."""
    return f"{_PREFIX}{delegate}"


@dataclass
class AttentionCall:
    """One call of an attention layer, as the model made it (shapes: ``[batch, heads, len, head_dim]``).

    ``name``: the module's dotted name in the model; ``layer``: its ``layer_idx`` if it has one; ``delegate``:
    the implementation computing the output ('sdpa' | 'eager'); ``kwargs``: everything else the model passed
    (``sliding_window``, ``softcap``, ``position_bias``, ``is_causal``, ...). Handlers return a changed copy
    (``call.replace(attention_mask=...)``) to alter what the kernel computes.
    """

    module: nn.Module
    name: str
    layer: Optional[int]
    delegate: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    scaling: Optional[float]
    dropout: float
    kwargs: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "AttentionCall":
        return replace(self, **changes)

    @property
    def query_len(self) -> int:
        return int(self.query.shape[-2])

    @property
    def kv_len(self) -> int:
        return int(self.key.shape[-2])


Handler = Callable[[AttentionCall], Optional[AttentionCall]]


# --------------------------------------------------------------------------- probabilities

def _rows(call: AttentionCall, rows: Optional[torch.Tensor]) -> torch.Tensor:
    if rows is None:
        return torch.arange(call.query_len, device=call.query.device)
    return rows.to(device=call.query.device, dtype=torch.long)


def attention_bias(call: AttentionCall, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The additive fp32 bias (0 / -inf / the mask's own values) the kernel applies to the logits of ``rows``
    (query indices within the call, default all): ``[batch or 1, heads or 1, len(rows), kv_len]``."""
    rows = _rows(call, rows)
    device, kv_len = call.query.device, call.kv_len
    mask = call.attention_mask
    if mask is None:
        causal = call.kwargs.get("is_causal")
        causal = getattr(call.module, "is_causal", True) if causal is None else causal
        if call.delegate == "sdpa" and call.query_len > 1 and causal:
            kv = torch.arange(kv_len, device=device)
            allowed = kv[None, :] <= rows[:, None]  # torch SDPA's is_causal: upper-left aligned
            window = call.kwargs.get("sliding_window")
            if window:
                allowed &= kv[None, :] > rows[:, None] - int(window)
            bias = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))[None, None]
        else:
            bias = torch.zeros((1, 1, len(rows), kv_len), device=device)
    else:
        if mask.dim() != 4:
            raise ConfigError(f"{call.name}: expected a 4-D attention mask, got shape {tuple(mask.shape)}.")
        mask = mask[..., :kv_len]
        mask = mask if mask.shape[-2] == 1 else mask.index_select(-2, rows)
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, device=device).masked_fill(~mask, float("-inf"))
        else:
            bias = mask.float()
        if bias.shape[-2] == 1 and len(rows) != 1:
            bias = bias.expand(*bias.shape[:-2], len(rows), kv_len)
    position_bias = call.kwargs.get("position_bias")
    if isinstance(position_bias, torch.Tensor):
        pb = position_bias[..., :kv_len]
        bias = bias + (pb if pb.shape[-2] == 1 else pb.index_select(-2, rows)).float()
    return bias


def attention_probs(call: AttentionCall, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention probabilities of query ``rows`` (indices within the call; default all), fp32,
    ``[batch, heads, len(rows), kv_len]``; every row sums to 1 (0 where all keys are masked)."""
    rows = _rows(call, rows)
    with torch.no_grad():
        q = call.query.index_select(-2, rows).float()
        k = call.key.float()
        b, h, n, d = q.shape
        kv_heads = k.shape[1]
        if h % kv_heads:
            raise ConfigError(f"{call.name}: {h} query heads are not a multiple of {kv_heads} key/value heads.")
        groups = h // kv_heads
        # GQA without repeating keys: query head kv*groups + j reads key head kv (transformers' repeat_kv order)
        scores = q.reshape(b, kv_heads, groups * n, d) @ k.transpose(-1, -2)
        scores = scores.reshape(b, h, n, -1)
        scores = scores * (call.scaling if call.scaling is not None else d ** -0.5)
        softcap = call.kwargs.get("softcap")
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores + attention_bias(call, rows)
        probs = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(probs, nan=0.0)


# --------------------------------------------------------------------------- interception

class _Session:
    """One model under interception: its handlers, saved implementations and forward-pass bookkeeping."""

    def __init__(self, delegate: str):
        self.delegate = delegate
        self.handlers: list[Handler] = []
        self.names: dict[int, str] = {}
        self.calls = 0  # attention calls in the current forward pass


# module -> session of the model it belongs to (weak: modules that die drop out)
_SESSIONS: "weakref.WeakKeyDictionary[nn.Module, _Session]" = weakref.WeakKeyDictionary()
_REGISTERED: set[str] = set()
_EAGER_CACHE: dict[type, Callable] = {}


def _generic_eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                   softcap: Optional[float] = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (repeat_kv, softcap, additive mask, fp32 softmax), for modules without one."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask[..., : key.shape[-2]], torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _eager_for(module: nn.Module) -> Callable:
    """The module's own ``eager_attention_forward`` (the default its ``forward`` hands ``get_interface``): looked up
    in the Python module defining the class's ``forward``, then the class's; else :func:`_generic_eager`."""
    cls = type(module)
    fn = _EAGER_CACHE.get(cls)
    if fn is None:
        fn = _generic_eager
        for mod_name in (getattr(cls.forward, "__module__", None), cls.__module__):
            found = getattr(sys.modules.get(mod_name or ""), "eager_attention_forward", None)
            if callable(found):
                fn = found
                break
        _EAGER_CACHE[cls] = fn
    return fn


def _delegate_fn(delegate: str, module: nn.Module) -> Callable:
    if delegate == "eager":
        return _eager_for(module)
    from transformers import AttentionInterface

    return AttentionInterface._global_mapping[delegate]


def _make_interceptor(delegate: str) -> Callable:
    def tunelens_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Optional[torch.Tensor], **kwargs: Any) -> Any:
        session = _SESSIONS.get(module)
        had_scaling = "scaling" in kwargs
        if session is not None:
            session.calls += 1
            if session.handlers:
                extra = {k: v for k, v in kwargs.items() if k not in ("scaling", "dropout")}
                call = AttentionCall(module, session.names.get(id(module), type(module).__name__),
                                     getattr(module, "layer_idx", None), delegate, query, key, value,
                                     attention_mask, kwargs.get("scaling"), kwargs.get("dropout", 0.0), extra)
                for handler in list(session.handlers):
                    changed = handler(call)
                    if changed is not None:
                        call = changed
                query, key, value, attention_mask = call.query, call.key, call.value, call.attention_mask
                kwargs = dict(call.kwargs, dropout=call.dropout)
                if had_scaling or call.scaling is not None:
                    kwargs["scaling"] = call.scaling
        return _delegate_fn(delegate, module)(module, query, key, value, attention_mask, **kwargs)

    tunelens_attention.__name__ = f"tunelens_attention_{delegate}"
    return tunelens_attention


def _register(delegate: str) -> str:
    """Register the interceptor (attention function and mask function) for ``delegate`` once; returns its key."""
    name = implementation_name(delegate)
    if name not in _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(name, _make_interceptor(delegate))
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[delegate])
        _REGISTERED.add(name)
    return name


def _configs(model: nn.Module) -> list[tuple[Any, Any]]:
    """Every distinct config of the model's (sub)models with its current attention implementation."""
    seen, out = set(), []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation_internal"):
            seen.add(id(cfg))
            out.append((cfg, cfg._attn_implementation_internal))
    return out


def _restore(model: nn.Module, previous: str, saved: list[tuple[Any, Any]]) -> None:
    try:
        model.set_attn_implementation(previous)
    finally:
        for cfg, impl in saved:  # sub-configs may have run other implementations than the top-level one
            if cfg._attn_implementation_internal != impl:
                cfg._attn_implementation_internal = impl


def _bypass_error(model_class: str, detail: str) -> ConfigError:
    return ConfigError(
        f"{model_class} does not route its attention through transformers' AttentionInterface ({detail}), so "
        f"attention cannot be captured or steered. Use a model whose attention layers call "
        f"ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...), as all current "
        f"transformers decoder models do.")


@contextmanager
def intercept_attention(model: nn.Module, handler: Handler) -> Iterator[None]:
    """Route every attention call of ``model`` through ``handler`` while the context is active.

    ``handler(call)`` gets an :class:`AttentionCall` before the kernel runs and may return a changed call (or
    None to keep it). Contexts nest on one model (handlers run outermost first; the implementation is switched
    once). Raises :class:`ConfigError` if the model runs neither ``sdpa`` nor ``eager``, cannot switch its
    implementation, or completes a forward pass without any attention call reaching the interceptor.
    """
    session = _SESSIONS.get(model)
    if session is not None:  # nested: add the handler to the running session
        session.handlers.append(handler)
        try:
            yield
        finally:
            session.handlers.remove(handler)
        return

    model_class = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise _bypass_error(model_class, "it is not a transformers PreTrainedModel")
    previous = config._attn_implementation
    delegate = "eager" if previous is None else previous
    if delegate not in DELEGATES:
        raise ConfigError(f"{model_class} runs attention implementation {previous!r}; capturing or steering "
                          f"attention needs one of {DELEGATES}: call model.set_attn_implementation('sdpa') first.")
    name = _register(delegate)
    saved = _configs(model)
    session = _Session(delegate)
    session.handlers.append(handler)
    hooks = []
    try:
        try:
            model.set_attn_implementation(name)
        except (ValueError, ImportError, KeyError) as exc:
            raise _bypass_error(model_class, f"set_attn_implementation({name!r}) failed: {exc}") from exc
        if model.config._attn_implementation != name:
            raise _bypass_error(model_class, "its class cannot switch attention implementations")
        for mod_name, module in model.named_modules():
            session.names[id(module)] = mod_name
            _SESSIONS[module] = session

        def before(module: nn.Module, args: Any) -> None:
            session.calls = 0
            for h in list(session.handlers):
                reset = getattr(h, "reset", None)
                if callable(reset):
                    reset()

        def after(module: nn.Module, args: Any, output: Any) -> None:
            if session.calls == 0:
                raise _bypass_error(model_class, "a forward pass finished without calling the registered "
                                                 f"attention function {name!r}")

        hooks.append(model.register_forward_pre_hook(before))
        hooks.append(model.register_forward_hook(after))
        yield
    finally:
        for h in hooks:
            h.remove()
        for module in model.modules():
            if _SESSIONS.get(module) is session:
                del _SESSIONS[module]
        _restore(model, delegate if previous is None else previous, saved)


# --------------------------------------------------------------------------- capture

class Capture:
    """Attention probabilities recorded by :func:`capture_attention` (one entry per attention call).

    After each forward pass of the model: ``attentions[i]`` (fp32, ``[batch, heads, n_selected, kv_len]``,
    detached, on the model's device) and ``layer_names[i]`` / ``layers[i]`` (module name / ``layer_idx``) of the
    i-th attention call of that pass, in call order; ``rows[i]`` the query indices (within the call) captured.
    Each forward pass of the model replaces the previous one's entries (``forwards`` counts them).
    """

    def __init__(self, model_class: str, query_positions: QueryPositions):
        if isinstance(query_positions, str):
            if query_positions not in ("last", "all"):
                raise ConfigError(f"query_positions must be 'last', 'all' or a list of ints, got {query_positions!r}.")
        else:
            query_positions = [int(p) for p in query_positions]
            if not query_positions:
                raise ConfigError("query_positions is an empty list; give at least one query position.")
        self.model_class = model_class
        self.query_positions = query_positions
        self.attentions: list[torch.Tensor] = []
        self.layer_names: list[str] = []
        self.layers: list[Optional[int]] = []
        self.rows: list[list[int]] = []
        self.forwards = 0

    def reset(self) -> None:
        """Drop the recorded entries (called at the start of every forward pass of the model)."""
        self.attentions, self.layer_names, self.layers, self.rows = [], [], [], []
        self.forwards += 1

    def _select(self, q_len: int) -> list[int]:
        if self.query_positions == "last":
            return [q_len - 1]
        if self.query_positions == "all":
            return list(range(q_len))
        out = []
        for p in self.query_positions:
            if not -q_len <= p < q_len:
                raise ConfigError(f"query position {p} is outside the {q_len} query positions of this call.")
            out.append(p % q_len)
        return out

    def __call__(self, call: AttentionCall) -> None:
        rows = self._select(call.query_len)
        probs = attention_probs(call, torch.tensor(rows, device=call.query.device))
        self.attentions.append(probs.detach())
        self.layer_names.append(call.name)
        self.layers.append(call.layer)
        self.rows.append(rows)

    def stacked(self) -> torch.Tensor:
        """All entries as one tensor ``[calls, batch, heads, n_selected, kv_len]``."""
        if not self.attentions:
            raise ConfigError("No attention was captured: run a forward pass inside capture_attention(...).")
        shapes = {tuple(a.shape) for a in self.attentions}
        if len(shapes) > 1:
            raise ConfigError(f"Captured attention tensors differ in shape ({sorted(shapes)}); "
                              "read Capture.attentions one by one.")
        return torch.stack(self.attentions)


@contextmanager
def capture_attention(model: nn.Module, query_positions: QueryPositions = "last") -> Iterator[Capture]:
    """Record attention probabilities of the selected query rows in every attention layer.

    ``query_positions``: ``"last"`` (the last query row of each call: with left padding, every sequence's last
    token), ``"all"``, or a list of indices into the query block of each call (negative ones count from the end;
    without a KV cache these are sequence positions). Yields a :class:`Capture`; see the module docstring for
    the computation and the errors.
    """
    cap = Capture(type(model).__name__, query_positions)
    with intercept_attention(model, cap):
        yield cap
