"""Probes along training: evaluate at step 0 and every N steps, summarise peak/final/inversion.

``TrajectoryCallback`` plugs into ``tunelens.train`` through the callback interface. It calls an
``evaluate(model, tokenizer) -> {metric: value}`` function (normally :func:`tunelens.probes.run`
bound to chosen suites), logs every value as a ``probe`` event in metrics.jsonl/TensorBoard, and at
the end writes ``trajectory.json`` with, per tracked metric, peak, step of peak, final,
``inversion = peak - final`` and a flag above ``threshold``. Options: keep the model at the
reliance peak (``peak/``, a standard HF directory) and stop early once the tracked reliance has
fallen by ``early_stop_drop`` from its peak at ``early_stop_patience`` consecutive evaluations.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelens.models import save_model
from tunelens.probes.metrics import summarize_trajectory
from tunelens.train.callbacks import Callback, TrainState

Evaluate = Callable[[Any, Any], dict[str, float]]


@dataclass
class TrajectoryOptions:
    every: int = 50
    track: list[str] = field(default_factory=list)  # metric keys summarised (default: every metric logged)
    reliance: str | None = None  # the metric that drives keep_peak / early stop (default: track[0])
    threshold: float = 0.1  # inversion above this is flagged
    keep_peak: bool = False
    early_stop_drop: float | None = None  # stop once reliance <= peak - drop ...
    early_stop_patience: int = 2  # ... at this many consecutive evaluations


class TrajectoryCallback(Callback):
    """Run ``evaluate`` at step 0 and every ``every`` steps (and at the last step)."""

    def __init__(self, evaluate: Evaluate, options: TrajectoryOptions | None = None):
        self.evaluate = evaluate
        self.opt = options or TrajectoryOptions()
        self.history: list[dict[str, Any]] = []
        self._below = 0
        self._peak = float("-inf")

    def on_train_begin(self, state: TrainState) -> None:
        self.history = [h for h in _load_history(state.run_dir) if h["step"] <= state.step]
        self._replay()
        if not any(h["step"] == state.step for h in self.history):
            self._evaluate(state)

    def on_step_end(self, state: TrainState) -> None:
        if state.step % self.opt.every == 0 or state.step == state.max_steps:
            self._evaluate(state)

    def on_train_end(self, state: TrainState) -> None:
        if not any(h["step"] == state.step for h in self.history):
            self._evaluate(state)  # stopped early between evaluations: record where it ended
        if state.is_main:
            summary = self.summary(state.run_dir)
            _atomic_write(state.run_dir / "trajectory.json", json.dumps(summary, indent=2))
            state.extra["trajectory"] = summary

    # -- internals -------------------------------------------------------------------------------
    def _reliance_key(self) -> str | None:
        return self.opt.reliance or (self.opt.track[0] if self.opt.track else None)

    def _replay(self) -> None:
        """Rebuild the peak and the early-stop count from the history a resumed run already has."""
        key, drop = self._reliance_key(), self.opt.early_stop_drop
        self._peak, self._below = float("-inf"), 0
        for h in self.history:
            value = h["metrics"].get(key) if key else None
            if value is None:
                continue
            self._peak = max(self._peak, value)
            if drop is not None:
                self._below = self._below + 1 if value <= self._peak - drop else 0

    def _evaluate(self, state: TrainState) -> None:
        start = time.perf_counter()
        metrics = {k: float(v) for k, v in self.evaluate(state.model, state.tokenizer).items()}
        seconds = time.perf_counter() - start
        self.history.append({"step": state.step, "metrics": metrics, "loss": state.loss, "seconds": seconds})
        state.log({**metrics, "probe_seconds": seconds}, event="probe")
        if state.is_main:
            _atomic_write(state.run_dir / "trajectory_points.json", json.dumps(self.history))
        key = self._reliance_key()
        if key is None or key not in metrics:
            return
        value = metrics[key]
        if value > self._peak:
            self._peak = value
            if self.opt.keep_peak and state.is_main:
                save_model(state.model, state.tokenizer, state.run_dir / "peak")
                _atomic_write(state.run_dir / "peak" / "peak.json",
                              json.dumps({"step": state.step, "metric": key, "value": value}))
        drop = self.opt.early_stop_drop
        if drop is not None:
            self._below = self._below + 1 if value <= self._peak - drop else 0
            if self._below >= self.opt.early_stop_patience and state.step > 0:
                state.should_stop = True
                state.log({"early_stop": 1, "peak": self._peak, "value": value}, event="trajectory")

    def summary(self, run_dir: Path | None = None) -> dict[str, Any]:
        """Per metric: peak, step_of_peak, final, inversion, inverted; plus the raw points."""
        keys = self.opt.track or sorted({k for h in self.history for k in h["metrics"]})
        per_metric = {}
        for key in keys:
            points = [(h["step"], h["metrics"][key]) for h in self.history if key in h["metrics"]]
            if points:
                per_metric[key] = summarize_trajectory(points, threshold=self.opt.threshold)
        return {"metrics": per_metric, "reliance": self._reliance_key(), "threshold": self.opt.threshold,
                "probe_seconds": sum(h.get("seconds", 0.0) for h in self.history), "points": self.history}


def _load_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "trajectory_points.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_OPTION_KEYS = {f for f in TrajectoryOptions.__dataclass_fields__}


def trajectory_from_config(cfg: dict[str, Any], model_name: str = "") -> TrajectoryCallback:
    """Build the callback from a recipe's ``probes:`` section.

    Keys: ``suites`` and ``variants`` (as for ``tunelens probe``), any :class:`TrajectoryOptions` field
    (every, track, reliance, threshold, keep_peak, early_stop_drop, early_stop_patience) and any
    :class:`~tunelens.probes.settings.ProbeSettings` field (mode, limit, batch_size, bf16, ...).
    """
    from tunelens.errors import ConfigError
    from tunelens.probes.runner import parse_suites, parse_variants, run
    from tunelens.probes.settings import ProbeSettings

    cfg = dict(cfg)
    suites, variants = cfg.pop("suites", None), cfg.pop("variants", ["chat"])
    if not suites:
        raise ConfigError("probes.suites is empty: name at least one suite, e.g. [conflicts:world_facts].")
    settings_keys = set(ProbeSettings.__dataclass_fields__)
    unknown = sorted(set(cfg) - _OPTION_KEYS - settings_keys)
    if unknown:
        raise ConfigError(f"Unknown probes key(s) {unknown}; allowed: suites, variants, "
                          f"{', '.join(sorted(_OPTION_KEYS | settings_keys))}.")
    options = TrajectoryOptions(**{k: v for k, v in cfg.items() if k in _OPTION_KEYS})
    settings = ProbeSettings(**{k: v for k, v in cfg.items() if k in settings_keys})
    settings.progress = False
    settings.validate()
    parse_suites(suites)
    variant_list = parse_variants(variants)
    if options.every < 1:
        raise ConfigError(f"probes.every must be >= 1, got {options.every}.")

    def evaluate(model: Any, tokenizer: Any) -> dict[str, float]:
        return run(model, tokenizer, suites, variant_list, settings, model_name=model_name).flat()

    return TrajectoryCallback(evaluate, options)
