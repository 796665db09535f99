"""Head activation patterns (Zhao et al. 2024): ``AP[l, h] = mean_i |Σ A ⊙ ∂L_i/∂A|``, one forward and
backward per batch for any Hugging Face causal LM (see :mod:`tunelens.heads.backends`).

Aggregations of the per-sample signed scores ``s[i, l, h]``:

* ``per_sample_abs`` (the paper): ``mean_i |s_i|``;
* ``batch_sum_abs`` (Michel et al. 2019's head-mask gradient): ``Σ_batches |Σ_{i in batch} s_i| / n`` (the sign
  is dropped after summing a batch, so it depends on ``batch_size``);

``per_token=True`` takes each sample's loss as the sum over its response tokens and divides by the total number
of response tokens instead of samples (Michel's per-token mean; default: each sample's loss is the mean over
its tokens, so long answers do not dominate). ``normalize`` rescales the result: ``layer_l2`` (each layer's
row to unit L2 norm), ``minmax`` (global min-max to [0, 1]), or both (``"layer_l2+minmax"``, Michel's defaults).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunelens.errors import ConfigError, DataError
from tunelens.heads.backends import BACKENDS
from tunelens.heads.inputs import as_batches
from tunelens.heads.sites import find_head_sites
from tunelens.progress import progress_bar

__all__ = ["AGGREGATIONS", "NORMALIZATIONS", "HeadPatterns", "aggregate", "compute_patterns", "normalize_pattern"]

AGGREGATIONS = ("per_sample_abs", "batch_sum_abs")
NORMALIZATIONS = ("layer_l2", "minmax")
PATTERNS_FILE = "patterns.json"
SAMPLES_FILE = "per_sample.npy"


@dataclass
class HeadPatterns:
    """An L×H head activation pattern with how it was computed.

    ``matrix``: the pattern (float64 ``[layers, heads]``; normalised if ``settings["normalize"]``),
    ``raw``: before normalisation, ``signed``: mean signed score (direction: > 0 means the head raises the
    loss), ``per_sample``: the signed scores ``[n, layers, heads]`` (kept unless disabled; saved as .npy),
    ``batch_ids``: the batch of each sample (for re-aggregation), ``losses``: each sample's response loss.
    """

    matrix: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 0
    n_tokens: int = 0
    raw: np.ndarray | None = None
    signed: np.ndarray | None = None
    per_sample: np.ndarray | None = None
    batch_ids: np.ndarray | None = None
    losses: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.matrix.ndim != 2:
            raise ConfigError(f"A head pattern is a [layers, heads] matrix, got shape {self.matrix.shape}.")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    @property
    def n_layers(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_heads(self) -> int:
        return self.matrix.shape[1]

    @property
    def mean_loss(self) -> float | None:
        return None if self.losses is None or not len(self.losses) else float(np.mean(self.losses))

    def top_k(self, k: int) -> list[tuple[int, int]]:
        """The k heads with the largest values, as ``(layer, head)``, largest first (ties: lower index first)."""
        if not 0 < k <= self.matrix.size:
            raise ConfigError(f"k must be in 1..{self.matrix.size} ({self.n_layers} layers x {self.n_heads} heads), "
                              f"got {k}.")
        flat = self.matrix.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))[:k]
        return [(int(i // self.n_heads), int(i % self.n_heads)) for i in order]

    def normalized(self, kind: str | None) -> HeadPatterns:
        """A copy whose matrix is ``normalize_pattern(raw, kind)``."""
        base = self.raw if self.raw is not None else self.matrix
        settings = dict(self.settings, normalize=kind)
        return HeadPatterns(normalize_pattern(base, kind), settings, self.n_samples, self.n_tokens, base.copy(),
                            self.signed, self.per_sample, self.batch_ids, self.losses)

    def to_json(self) -> dict[str, Any]:
        def lst(a: np.ndarray | None) -> Any:
            return None if a is None else np.asarray(a).tolist()

        return {"matrix": lst(self.matrix), "shape": list(self.shape), "settings": self.settings,
                "n_samples": self.n_samples, "n_tokens": self.n_tokens, "raw": lst(self.raw),
                "signed": lst(self.signed), "mean_loss": self.mean_loss, "losses": lst(self.losses),
                "batch_ids": lst(self.batch_ids)}

    def save(self, out: str | Path) -> Path:
        """Write ``out/patterns.json`` (and ``out/per_sample.npy`` when kept); returns the json path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / PATTERNS_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        tmp.replace(path)
        if self.per_sample is not None:
            np.save(out / SAMPLES_FILE, self.per_sample)
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadPatterns:
        """Read a directory written by :meth:`save` (or its patterns.json)."""
        path = Path(path)
        file = path / PATTERNS_FILE if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"{file}: no such file; expected a directory written by `tunelens heads patterns`.")
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
            matrix = np.asarray(d["matrix"], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{file}: not a head-pattern file ({exc}).") from None
        arr = lambda k: None if d.get(k) is None else np.asarray(d[k])
        samples = file.parent / SAMPLES_FILE
        return cls(matrix, d.get("settings", {}), int(d.get("n_samples", 0)), int(d.get("n_tokens", 0)),
                   arr("raw"), arr("signed"), np.load(samples) if samples.is_file() else None, arr("batch_ids"),
                   arr("losses"))


def normalize_pattern(matrix: np.ndarray, kind: str | None) -> np.ndarray:
    """Apply ``kind`` (None, ``layer_l2``, ``minmax`` or ``layer_l2+minmax``) to an L×H matrix."""
    m = np.asarray(matrix, dtype=np.float64).copy()
    steps = [] if not kind or kind == "none" else kind.split("+")
    bad = [s for s in steps if s not in NORMALIZATIONS]
    if bad:
        raise ConfigError(f"Unknown normalisation {bad}; choose from {NORMALIZATIONS} or 'layer_l2+minmax'.")
    for step in steps:
        if step == "layer_l2":
            m = m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-20)
        else:
            lo, hi = m.min(), m.max()
            m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return m


def aggregate(per_sample: np.ndarray, batch_ids: np.ndarray, aggregation: str, denominator: float) -> np.ndarray:
    """Aggregate signed scores ``[n, L, H]`` into an L×H pattern (see the module docstring)."""
    s = np.asarray(per_sample, dtype=np.float64)
    if aggregation == "per_sample_abs":
        total = np.abs(s).sum(axis=0)
    elif aggregation == "batch_sum_abs":
        ids = np.asarray(batch_ids)
        total = sum(np.abs(s[ids == b].sum(axis=0)) for b in np.unique(ids))
    else:
        raise ConfigError(f"Unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}.")
    return total / denominator


def _autocast(model: nn.Module, bf16: bool):
    if not bf16:
        return None
    device = next(model.parameters()).device
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compute_patterns(model: nn.Module, tokenizer: Any, examples_or_batches: Any, *,
                     aggregation: str = "per_sample_abs", backend: str = "gate", batch_size: int = 8,
                     bf16: bool = False, max_length: int = 512, limit: int | None = None, per_token: bool = False,
                     normalize: str | None = None, keep_per_sample: bool = True, train_on: str = "assistant",
                     model_name: str = "", progress: bool = True) -> HeadPatterns:
    """Head activation patterns of ``model`` on the response loss of ``examples_or_batches`` (a data file,
    Examples, TokenizedExamples or ready batches; see :func:`tunelens.heads.inputs.as_batches`).

    ``backend="gate"`` needs one forward + backward per batch with any attention kernel; ``"eager"`` is the
    reference through eager attention probabilities. The model is put in eval mode (no dropout) and restored.
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"Unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}.")
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose from {sorted(BACKENDS)}.")
    normalize_pattern(np.zeros((1, 1)), normalize)  # validate before the expensive part
    batches = as_batches(examples_or_batches, tokenizer, batch_size=batch_size, max_length=max_length,
                         limit=limit, train_on=train_on)
    sites = find_head_sites(model)
    score_fn, autocast = BACKENDS[backend], _autocast(model, bf16)
    reduction = "sum" if per_token else "mean"
    chunks, ids, losses, n_tokens = [], [], [], 0
    was_training = model.training
    model.eval()
    try:
        with progress_bar(len(batches), "head patterns", enabled=progress) as bar:
            for b, batch in enumerate(batches):
                scores, loss = score_fn(model, batch, sites, loss_reduction=reduction, autocast=autocast)
                keep = (batch["labels"][:, 1:] != -100).sum(-1)
                chunks.append(scores[keep > 0].numpy())
                losses.append(loss[keep > 0].numpy())
                ids.extend([b] * int((keep > 0).sum()))
                n_tokens += int(keep.sum())
                bar.advance(1)
    finally:
        model.train(was_training)
    per_sample, batch_ids = np.concatenate(chunks), np.asarray(ids)
    n = per_sample.shape[0]
    raw = aggregate(per_sample, batch_ids, aggregation, n_tokens if per_token else n)
    settings = {"model": model_name, "aggregation": aggregation, "backend": backend, "batch_size": batch_size,
                "bf16": bf16, "max_length": max_length, "limit": limit, "per_token": per_token,
                "normalize": normalize, "train_on": train_on, "loss": "response tokens only",
                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "layers": [s.attention_name for s in sites], "projections": [s.projection_name for s in sites],
                "num_heads": sites[0].num_heads, "head_dim": sites[0].head_dim}
    return HeadPatterns(normalize_pattern(raw, normalize), settings, n, n_tokens, raw,
                        per_sample.mean(axis=0), per_sample if keep_per_sample else None, batch_ids,
                        np.concatenate(losses))
