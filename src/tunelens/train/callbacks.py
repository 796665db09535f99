"""The callback interface: how probes and other observers run inside training without the loop knowing them.

A callback subclasses :class:`Callback` and overrides any hook. Hooks run on every process (so
collective work stays in lock-step); use ``state.is_main`` to write files. ``state.log(values)``
writes to metrics.jsonl/TensorBoard at the current step; setting ``state.should_stop`` ends
training after the current step (a final checkpoint is still written).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn


@dataclass
class TrainState:
    step: int
    max_steps: int
    model: nn.Module  # the unwrapped model (PEFT model for LoRA); in eval mode inside hooks
    tokenizer: Any
    run_dir: Path
    config: Any
    is_main: bool = True
    loss: float | None = None
    tokens_seen: int = 0
    should_stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # callbacks may keep shared values here
    _log: Callable[[int, dict[str, Any], str], None] | None = None

    def log(self, values: dict[str, Any], event: str = "probe") -> None:
        """Record metrics at the current step."""
        if self._log is not None:
            self._log(self.step, values, event)


class Callback:
    """No-op hooks; subclass and override what you need."""

    def on_train_begin(self, state: TrainState) -> None:
        """After setup and resume, before the first step (``state.step`` is 0 on a fresh run)."""

    def on_step_end(self, state: TrainState) -> None:
        """After each optimizer step (``state.step`` is the number of steps done)."""

    def on_save(self, state: TrainState, checkpoint: Path) -> None:
        """After a checkpoint has been written."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last step, before the final model is written."""
