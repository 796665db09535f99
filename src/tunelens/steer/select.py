"""Which heads to steer, chosen automatically on a dev set (:mod:`tunelens.steer.devset`).

* :func:`profile_heads` — PASTA-style profiling: steer one head at a time (``granularity="head"``, L×H
  evaluations) or one layer at a time and then the heads of the best layers (``"layer"``, as PASTA's code does
  for large models), keep the top-k by gain in the dev objective.
* :func:`attribute_heads` — one pass, no L×H runs:
  ``"gradient"``: the first-order effect of steering each head, from one forward+backward per batch: with a
  per-head bias ``s_h`` on non-highlighted prompt keys (``s = log α``), ``Δmargin ≈ s · ∂margin/∂s_h`` at
  ``s = 0``, so the predicted gain of steering head h at α is ``-log α · (-∂margin/∂s_h)``; ranked by
  ``-∂margin/∂s_h``. ``"attention"``: attention mass from the last prompt token to the highlighted (user) tokens.
  ``"ap"``: the head activation pattern (Zhao et al. 2024, :func:`tunelens.heads.compute_patterns`) on the dev
  items with the context answer as the response.

All return a :class:`Selection` (head set, the ``[layers, heads]`` score matrix, settings; ``save`` writes
``heads.json`` in PASTA's format and ``selection.json``).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelens.errors import ConfigError
from tunelens.progress import progress_bar
from tunelens.steer.context import check_alpha, steer
from tunelens.steer.devset import DevSet
from tunelens.steer.heads import HeadSet, model_shape

__all__ = ["ATTRIBUTIONS", "Selection", "attribute_heads", "profile_heads", "top_k_heads"]

ATTRIBUTIONS = ("gradient", "attention", "ap")
GRANULARITIES = ("head", "layer")


@dataclass
class Selection:
    """Selected heads with the scores they were ranked by (``nan``: not evaluated)."""

    heads: HeadSet
    scores: np.ndarray
    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "heads": self.heads.to_json(), "n_heads": len(self.heads),
                "settings": self.settings,
                "scores": [[None if math.isnan(v) else float(v) for v in row] for row in self.scores]}

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.heads.save(out / "heads.json")
        (out / "selection.json").write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        return out


def top_k_heads(scores: np.ndarray, k: int) -> HeadSet:
    """The ``k`` heads with the highest scores (nan never chosen; ties by (layer, head))."""
    n_layers, n_heads = scores.shape
    if not 1 <= k <= n_layers * n_heads:
        raise ConfigError(f"k must be in 1..{n_layers * n_heads} (layers x heads), got {k}.")
    flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    chosen = [(i // n_heads, i % n_heads) for i in order[:k] if np.isfinite(flat[i])]
    if not chosen:
        raise ConfigError("no head has a finite score; nothing to select.")
    return HeadSet.from_pairs(chosen, n_layers, n_heads)


def _steered(model: Any, heads: Any, alpha: float):
    return lambda batch: steer(model, batch.highlight, heads=heads, alpha=alpha)


def profile_heads(model: Any, dev: DevSet, *, alpha: float = 0.01, k: int = 16, granularity: str = "head",
                  top_layers: int = 4, progress: bool = True) -> Selection:
    """PASTA profiling: the gain ``margin(steered) - margin(unsteered)`` of steering each head (or each layer, then
    the heads of the ``top_layers`` best layers) alone at ``alpha``; keep the top ``k`` heads."""
    alpha = check_alpha(alpha)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    n_layers, n_heads = model_shape(model)
    start = time.perf_counter()
    with torch.no_grad():
        base = float(dev.margin(model))
        scores = np.full((n_layers, n_heads), np.nan)
        layers = list(range(n_layers))
        layer_gain = None
        runs = 0
        if granularity == "layer":
            layer_gain = np.zeros(n_layers)
            with progress_bar(n_layers, "profile layers", enabled=progress) as bar:
                for l in layers:
                    layer_gain[l] = float(dev.margin(model, _steered(model, {l: range(n_heads)}, alpha))) - base
                    runs += 1
                    bar.advance(1)
            layers = sorted(layers, key=lambda l: (-layer_gain[l], l))[:max(1, top_layers)]
        pairs = [(l, h) for l in sorted(layers) for h in range(n_heads)]
        with progress_bar(len(pairs), "profile heads", enabled=progress) as bar:
            for l, h in pairs:
                scores[l, h] = float(dev.margin(model, _steered(model, {l: [h]}, alpha))) - base
                runs += 1
                bar.advance(1)
    settings = {"alpha": alpha, "k": k, "granularity": granularity, "base_margin": base, "runs": runs,
                "dev_items": dev.n_items, "variant": dev.variant, "seconds": time.perf_counter() - start}
    if layer_gain is not None:
        settings.update(top_layers=sorted(layers), layer_gain=[float(g) for g in layer_gain])
    return Selection(top_k_heads(scores, k), scores, f"profile-{granularity}", settings)


def attribute_heads(model: Any, dev: DevSet, *, method: str = "gradient", k: int = 16, tokenizer: Any = None,
                    items: list[Any] | None = None, progress: bool = True) -> Selection:
    """One-pass head selection by ``method`` in :data:`ATTRIBUTIONS` (see the module docstring); top ``k``."""
    if method not in ATTRIBUTIONS:
        raise ConfigError(f"attribution method must be one of {ATTRIBUTIONS}, got {method!r}.")
    start = time.perf_counter()
    if method == "gradient":
        scores = _gradient_scores(model, dev, progress)
    elif method == "attention":
        scores = _attention_scores(model, dev)
    else:
        if tokenizer is None or items is None:
            raise ConfigError("attribution 'ap' needs the tokenizer and the dev items.")
        scores = _ap_scores(model, tokenizer, items, progress, dev.bf16)
    settings = {"k": k, "dev_items": dev.n_items, "variant": dev.variant, "seconds": time.perf_counter() - start}
    return Selection(top_k_heads(scores, k), scores, f"attribution-{method}", settings)


def _gradient_scores(model: Any, dev: DevSet, progress: bool) -> np.ndarray:
    n_layers, n_heads = model_shape(model)
    device = next(model.parameters()).device
    strengths = {l: torch.zeros(n_heads, device=device, requires_grad=True) for l in range(n_layers)}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with progress_bar(len(dev.batches), "attribution", enabled=progress) as bar:
            for batch in dev.batches:
                with steer(model, batch.highlight, heads="all", alpha=1.0, strengths=strengths), torch.enable_grad():
                    lp = dev.answer_logprobs(model, batch)
                    ((lp[0::2] - lp[1::2]).sum() / dev.n_items).backward()
                bar.advance(1)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    grad = torch.stack([strengths[l].grad if strengths[l].grad is not None else torch.zeros(n_heads)
                        for l in range(n_layers)])
    return (-grad).double().cpu().numpy()  # gain per unit of -log(alpha)


def _attention_scores(model: Any, dev: DevSet) -> np.ndarray:
    from tunelens.probes.attention_capture import capture_attention

    n_layers, n_heads = model_shape(model)
    total = np.zeros((n_layers, n_heads))
    with torch.no_grad(), capture_attention(model, "last") as cap:
        for batch in dev.batches:
            model(**batch.prompt_only)
            hl = batch.prompt_highlight.mask.float()  # [n, W]
            for i, (layer, probs) in enumerate(zip(cap.layers, cap.attentions)):
                l = i if layer is None else layer
                mass = (probs[:, :, 0, :] * hl[:, None, :]).sum(-1)  # [n, H]
                total[l] += mass.sum(0).double().cpu().numpy()
    return total / dev.n_items


def _ap_scores(model: Any, tokenizer: Any, items: list[Any], progress: bool, bf16: bool) -> np.ndarray:
    from tunelens.data import Example
    from tunelens.heads import compute_patterns
    from tunelens.probes.suites.conflicts import _parts

    examples = [Example(messages=[{"role": "user", "content": "".join(text for _, text in _parts(it))},
                                 {"role": "assistant", "content": it.answer}], source=f"dev:{i}")
                for i, it in enumerate(items)]
    patterns = compute_patterns(model, tokenizer, examples, bf16=bf16, progress=progress)
    return np.asarray(patterns.matrix, dtype=np.float64)

