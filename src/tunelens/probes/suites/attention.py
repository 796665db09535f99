"""Attention-allocation suite ([B] §2.2): where does the last prompt token look?

Prompts are the knowledge-conflict prompts (same builder as :mod:`tunelens.probes.suites.conflicts`: user turn
``Context: {context}\\nQuestion: {question}``, ``Answer:`` response prefix in the ``raw`` variant), default items
``load_conflicts("world_facts", limit=settings.limit)``; ``attention:<spec>`` takes any conflicts spec.

For every prompt, one forward pass (left-padded batches of ``batch_size``) captures, in every layer and head, the
attention of the **last prompt token** (:func:`tunelens.probes.attention_capture.capture_attention`, which works
with SDPA and eager) and sums it over the spans of :data:`SPANS`, from the prompt's token roles:

* ``context``: user tokens inside ``Prompt.context_token_span``; ``user_rest``: the other user tokens (question,
  "Context:" label, instruction, indicator) -- together the user turn;
* ``system``, ``template`` (chat-template / format tokens), ``bos``, ``prefix`` (the response prefix).

The spans partition the prompt, so per head they sum to 1. ``*_renorm`` drops template tokens and renormalises
over the rest ([B]: user / (user + assistant + BOS); here user / (user + system + BOS + prefix)).

Metrics (flat floats): ``{span}_mass`` (mean over items, layers and heads), ``user_mass`` (= context + user_rest),
``user_mass_renorm``, ``context_mass_renorm``; at [B]'s choice -- the middle layer ``L // 2`` and its head with the
largest item-mean user mass -- ``user_mass_best_head`` and ``user_mass_renorm_best_head`` (``best_layer`` and
``best_head`` say which); ``n``.

Records: first ``{"id": "__mean__", "per_layer_head": {...}}`` with the item-mean ``[layer][head][span]`` masses
(and the user / renormalised user ``[layer][head]`` matrices), then one record per item with its per-layer
(head-mean) masses. :func:`attention_heatmap` draws the layer x head user mass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from tunelens.errors import ConfigError
from tunelens.probes.attention_capture import capture_attention
from tunelens.probes.engine import autocast_context, model_device, left_pad, pad_token_id
from tunelens.probes.items import ConflictItem, load_conflicts
from tunelens.probes.prompts import Prompt
from tunelens.probes.settings import ProbeSettings, SuiteResult
from tunelens.probes.suites.common import fit_prompt, model_limit, settings_record
from tunelens.probes.suites.conflicts import _parts, _prefix
from tunelens.progress import progress_bar

__all__ = ["SPANS", "attention_heatmap", "prompt_spans", "run_attention", "run_attention_items", "span_masses"]

SPANS = ("context", "user_rest", "system", "template", "bos", "prefix")
_INDEX = {s: i for i, s in enumerate(SPANS)}
_USER = [_INDEX["context"], _INDEX["user_rest"]]
_TEMPLATE = _INDEX["template"]


def prompt_spans(prompt: Prompt) -> list[str]:
    """The span (one of :data:`SPANS`) of every prompt token."""
    lo, hi = prompt.context_token_span or (0, 0)
    out = []
    for i, role in enumerate(prompt.token_roles):
        if role == "user":
            out.append("context" if lo <= i < hi else "user_rest")
        elif role in _INDEX:
            out.append(role)
        else:
            raise ConfigError(f"Unknown token role {role!r} at token {i} of a {prompt.variant} prompt.")
    return out


def span_masses(model: Any, prompts: Sequence[Prompt], settings: ProbeSettings) -> np.ndarray:
    """Attention of each prompt's last token, summed per span: ``[items, layers, heads, len(SPANS)]`` (float64)."""
    device, pad = model_device(model), pad_token_id(model)
    out: list[Optional[np.ndarray]] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    with capture_attention(model, "last") as cap, torch.inference_mode(), autocast_context(device, settings.bf16), \
            progress_bar(len(prompts), "attention", enabled=settings.progress) as bar:
        for start in range(0, len(order), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            ids, mask, pos = left_pad([prompts[i].input_ids for i in idx], pad, device)
            width = ids.shape[1]
            onehot = torch.zeros((len(idx), width, len(SPANS)), dtype=torch.float32)
            for row, i in enumerate(idx):
                spans = prompt_spans(prompts[i])
                cols = torch.tensor([_INDEX[s] for s in spans], dtype=torch.long)
                onehot[row, width - len(spans) + torch.arange(len(spans)), cols] = 1.0
            try:
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
            except TypeError:  # a model without logits_to_keep
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            heads = {a.shape[1] for a in cap.attentions}
            if len(heads) != 1:
                raise ConfigError(f"The model's attention layers have different head counts ({sorted(heads)}); "
                                  "the attention suite needs one layer x head grid.")
            probs = torch.stack([a[:, :, 0, :].cpu() for a in cap.attentions], dim=1)  # [b, L, H, width]
            masses = torch.einsum("blhw,bws->blhs", probs, onehot).double().clamp(0.0, 1.0).numpy()
            for row, i in enumerate(idx):
                out[i] = masses[row]
            bar.advance(len(idx))
    return np.stack(out)  # type: ignore[arg-type]


def _renorm(masses: np.ndarray) -> np.ndarray:
    """Masses with template tokens dropped and the rest renormalised (template entry 0; NaN if nothing is left)."""
    kept = masses.copy()
    kept[..., _TEMPLATE] = 0.0
    rest = kept.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rest > 1e-12, kept / np.where(rest > 1e-12, rest, 1.0), np.nan)


def _mean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def run_attention(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    """Attention allocation of the last prompt token over the spans of conflict prompts (``arg``: conflicts spec)."""
    spec = arg or "world_facts"
    items = load_conflicts(spec, fields=s.fields or None, limit=s.limit)
    if not items:
        raise ConfigError(f"attention:{spec}: no items to probe.")
    return run_attention_items(model, tok, items, variant, s, f"attention:{spec}")


def run_attention_items(model: Any, tok: Any, items: Sequence[ConflictItem], variant: str, s: ProbeSettings,
                        suite: str) -> SuiteResult:
    """:func:`run_attention` on given conflict ``items``."""
    limit = model_limit(model, tok)
    prompts = [fit_prompt(variant, _parts(it), tok, s, limit, 0, _prefix(variant, it)) for it in items]
    masses = span_masses(model, prompts, s)  # [N, L, H, S]
    renorm = _renorm(masses)
    user = masses[..., _USER].sum(-1)  # [N, L, H]
    user_renorm = renorm[..., _USER].sum(-1)
    n_layers, n_heads = masses.shape[1], masses.shape[2]
    best_layer = n_layers // 2
    mean_user = user.mean(0)  # [L, H]
    best_head = int(np.argmax(mean_user[best_layer]))

    metrics: dict[str, float] = {f"{span}_mass": float(masses[..., i].mean()) for i, span in enumerate(SPANS)}
    metrics.update(
        user_mass=float(user.mean()),
        user_mass_renorm=_mean(user_renorm),
        context_mass_renorm=_mean(renorm[..., _INDEX["context"]]),
        user_mass_best_head=float(user[:, best_layer, best_head].mean()),
        user_mass_renorm_best_head=_mean(user_renorm[:, best_layer, best_head]),
        best_layer=float(best_layer),
        best_head=float(best_head),
        n=float(len(items)),
    )
    mean = {"id": "__mean__", "per_layer_head": {
        "spans": list(SPANS), "layers": n_layers, "heads": n_heads,
        "mass": masses.mean(0).tolist(),  # [layer][head][span]
        "user_mass": mean_user.tolist(),
        "user_mass_renorm": np.nanmean(user_renorm, axis=0).tolist() if np.isfinite(user_renorm).any()
        else np.full((n_layers, n_heads), np.nan).tolist(),
        "best_layer": best_layer, "best_head": best_head}}
    records: list[dict[str, Any]] = [mean]
    for k, (it, p) in enumerate(zip(items, prompts)):
        per_layer = masses[k].mean(1)  # [L, S]
        lo, hi = p.context_token_span or (0, 0)
        records.append({
            "id": it.id, "prompt_tokens": len(p), "context_tokens": hi - lo, "truncated": p.truncated,
            "last_token_span": prompt_spans(p)[-1],
            "per_layer": {span: per_layer[:, i].tolist() for i, span in enumerate(SPANS)},
            "user_mass_renorm_per_layer": np.nanmean(user_renorm[k], axis=1).tolist()
            if np.isfinite(user_renorm[k]).any() else [float("nan")] * n_layers,
        })
    truncated = sum(1 for p in prompts if p.truncated)
    return SuiteResult(suite=suite, variant=variant, mode="attention", n=len(items), metrics=metrics,
                       settings=settings_record(s, query="last prompt token", spans=list(SPANS)),
                       records=records, truncated=truncated)


def attention_heatmap(result: SuiteResult, path: str | Path, renorm: bool = False) -> Path:
    """Layer x head heat map of the item-mean user mass (``renorm``: template-free renormalised) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mean = next((r for r in result.records if r.get("id") == "__mean__"), None)
    if mean is None:
        raise ConfigError(f"{result.suite}/{result.variant}: no '__mean__' record; is this an attention result?")
    grid = mean["per_layer_head"]
    data = np.asarray(grid["user_mass_renorm" if renorm else "user_mass"], dtype=float)
    fig = Figure(figsize=(max(6.0, 0.45 * data.shape[1] + 3.0), max(3.5, 0.3 * data.shape[0] + 2.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.scatter([grid["best_head"]], [grid["best_layer"]], marker="s", facecolors="none", edgecolors="red", s=120)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(data.shape[1]))
    ax.set_yticks(range(data.shape[0]))
    label = "user mass (template-free, renormalised)" if renorm else "user mass"
    ax.set_title(f"{result.suite} / {result.variant} (n={result.n}): last prompt token's {label}\n"
                 "red box: the middle layer's head with the most user attention", fontsize=8)
    fig.colorbar(im, ax=ax, label="user mass (renorm.)" if renorm else "user mass")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
