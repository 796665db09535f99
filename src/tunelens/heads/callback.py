"""ΔAP along training: a :class:`~tunelens.train.callbacks.Callback` that computes head activation patterns on a
fixed probe set at step 0 and every N steps, saves them, and logs how they moved.

Each evaluation writes ``RUN/heads/step-N/patterns.json`` and logs a ``heads`` event in metrics.jsonl with
``heads/gini``, ``heads/cv``, ``heads/entropy_norm`` (concentration), ``heads/{mse,pearson,spearman,jaccard@k}_vs_start``
and ``..._vs_prev`` (similarity to AP at step 0 and at the previous evaluation), ``heads/delta_mean_abs`` and
``heads/frac_changed`` (ΔAP = AP_t − AP_0) and ``heads/loss`` (the probe set's response loss). On resume the
saved step-0 and latest patterns are reloaded, so the comparisons continue.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunelens.heads.compare import delta_summary
from tunelens.heads.inputs import Batch, as_batches
from tunelens.heads.patterns import HeadPatterns, compute_patterns
from tunelens.heads.stats import concentration, mse, pearson, spearman, topk_jaccard
from tunelens.train.callbacks import Callback, TrainState

__all__ = ["HeadPatternCallback", "pattern_stats"]


def pattern_stats(current: HeadPatterns, start: HeadPatterns | None, previous: HeadPatterns | None, k: int,
                  threshold: float | None = None) -> dict[str, float]:
    """The values the callback logs for ``current`` against the step-0 and previous patterns."""
    k = min(k, current.matrix.size - 1) if current.matrix.size > 1 else 1
    out = {f"heads/{name}": v for name, v in concentration(current).items()}
    if current.mean_loss is not None:
        out["heads/loss"] = current.mean_loss
    for tag, ref in (("start", start), ("prev", previous)):
        if ref is None:
            continue
        out[f"heads/mse_vs_{tag}"] = mse(ref, current)
        out[f"heads/pearson_vs_{tag}"] = pearson(ref, current)
        out[f"heads/spearman_vs_{tag}"] = spearman(ref, current)
        out[f"heads/jaccard@{k}_vs_{tag}"] = topk_jaccard(ref, current, k)
    if start is not None:
        d = delta_summary(start, current, threshold)
        out.update({"heads/delta_mean_abs": d["mean_abs"], "heads/delta_max_abs": d["max_abs"],
                    "heads/delta_relative_l1": d["relative_l1"], "heads/frac_changed": d["frac_changed"]})
    return out


class HeadPatternCallback(Callback):
    """Compute AP on ``data`` (a data file, examples or batches) at step 0, every ``every`` steps and at the end.

    ``k``: the top-k size for Jaccard; ``threshold``: |ΔAP| above which a head counts as changed (default 10% of
    the mean AP at step 0); other keyword arguments go to :func:`compute_patterns` (``batch_size``,
    ``max_length``, ``limit``, ``aggregation``, ``bf16``, ...).
    """

    def __init__(self, data: Any, every: int = 50, k: int = 10, threshold: float | None = None,
                 subdir: str = "heads", **compute_kwargs: Any):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.data, self.every, self.k, self.threshold, self.subdir = data, every, k, threshold, subdir
        self.kwargs = {"progress": False, **compute_kwargs}
        self.batches: list[Batch] | None = None
        self.start: HeadPatterns | None = None
        self.previous: HeadPatterns | None = None
        self.history: list[dict[str, Any]] = []

    def _dir(self, state: TrainState, step: int) -> Path:
        return Path(state.run_dir) / self.subdir / f"step-{step}"

    def on_train_begin(self, state: TrainState) -> None:
        kw = {k: self.kwargs[k] for k in ("batch_size", "max_length", "limit", "train_on") if k in self.kwargs}
        self.batches = as_batches(self.data, state.tokenizer, **kw)
        saved = sorted((int(m.group(1)), p) for p in (Path(state.run_dir) / self.subdir).glob("step-*")
                       if (m := re.fullmatch(r"step-(\d+)", p.name)) and (p / "patterns.json").is_file()
                       and int(m.group(1)) <= state.step)
        if saved and saved[0][0] == 0:
            self.start = HeadPatterns.load(saved[0][1])
            self.previous = HeadPatterns.load(saved[-1][1])
        if not saved or saved[-1][0] != state.step:
            self._evaluate(state)

    def on_step_end(self, state: TrainState) -> None:
        if state.step % self.every == 0 or state.step == state.max_steps:
            self._evaluate(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.previous is None or self.previous.settings.get("step") != state.step:
            self._evaluate(state)

    def _evaluate(self, state: TrainState) -> None:
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("batch_size", "max_length", "limit", "train_on")}
        current = compute_patterns(state.model, state.tokenizer, self.batches, **kwargs)
        current.settings["step"] = state.step
        values = pattern_stats(current, self.start, self.previous, self.k, self.threshold)
        if state.is_main:
            current.save(self._dir(state, state.step))
        state.log(values, event="heads")
        self.history.append({"step": state.step, **values})
        if self.start is None:
            self.start = current
        self.previous = current


_CONFIG_KEYS = {"data", "every", "k", "threshold", "limit", "batch_size", "max_length", "aggregation", "per_token",
                "bf16", "train_on", "fields", "system"}


def heads_from_config(cfg: dict[str, Any]) -> HeadPatternCallback:
    """The callback from an SFT recipe's ``heads:`` section: ``data`` (a data file, required), ``every`` (50),
    ``k`` (10), ``threshold``, ``limit`` (64), ``batch_size`` (8), ``max_length`` (512), ``aggregation``,
    ``per_token``, ``bf16``, ``train_on``, ``fields``, ``system``."""
    from tunelens.data import load_examples
    from tunelens.errors import ConfigError

    cfg = dict(cfg)
    unknown = sorted(set(cfg) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"heads: unknown key(s) {unknown}; expected some of {sorted(_CONFIG_KEYS)}.")
    if not cfg.get("data"):
        raise ConfigError("heads: 'data' (a data file of probe examples) is required, e.g. heads.data=FILE.")
    examples = load_examples(cfg.pop("data"), fields=cfg.pop("fields", None) or None, system=cfg.pop("system", None),
                             limit=int(cfg.pop("limit", 64))).examples
    return HeadPatternCallback(examples, every=int(cfg.pop("every", 50)), k=int(cfg.pop("k", 10)),
                               threshold=cfg.pop("threshold", None), **cfg)
