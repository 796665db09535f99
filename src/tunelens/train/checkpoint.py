"""Checkpoints: written to a temporary directory and renamed, so a crash never leaves a half checkpoint.

``checkpoints/step-N/`` holds the trainable weights (safetensors), the optimizer and scheduler
states, every process's RNG states and ``trainer_state.json`` (written last: a directory without
it is incomplete and ignored). The frozen weights come back from the model spec on resume.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelens.errors import CheckpointError

STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied weights once), detached, contiguous copies."""
    seen: set[int] = set()
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.detach().contiguous().clone()
    return out


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], rank: int = 0, world_size: int = 1,
                    barrier: Any = None) -> Path:
    """Write ``root/step-{step}`` atomically. Every process writes its RNG state; rank 0 the rest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if barrier:
        barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if barrier:
        barrier()
    if rank == 0:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "world_size": world_size}, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
    if barrier:
        barrier()
    return final


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_RE.match(d.name)
        if m and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def prune_checkpoints(root: Path, keep_last: int, protect: set[Path] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (and stale temporary ones)."""
    ckpts = list_checkpoints(root)
    for _, d in ckpts[:-keep_last] if keep_last else ckpts:
        if d not in protect:
            shutil.rmtree(d, ignore_errors=True)
    for d in root.glob(".tmp-step-*"):
        shutil.rmtree(d, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG; return the trainer state."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE}).")
    state = json.loads(state_file.read_text())
    weights = load_file(str(path / "trainable.safetensors"))
    expected = trainable_state(model).keys()
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise CheckpointError(f"{path}: trainable weights do not match the model (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}); was the finetune mode or model changed?")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{path}: no RNG state for process {rank}; resume with the same number of "
                              f"processes as the run that wrote it ({state.get('world_size')}).")
    set_rng_state(torch.load(rng_file, weights_only=False))
    return state
