"""Run directories: create a fresh one, or recognise one to resume, refusing a changed config."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import yaml

from tunelens.config import config_diff, to_dict
from tunelens.errors import ConfigError
from tunelens.train.checkpoint import latest_checkpoint

# Keys that may change between a run and its resume without changing what is computed.
RESUMABLE_KEYS = ("max_steps", "epochs", "save_every", "keep_last", "log_every", "tensorboard", "save_final_model")


def prepare_run_dir(out: Path, cfg: Any, force: bool = False, is_main: bool = True) -> Path | None:
    """Create ``out`` with ``config.yaml``, or return the checkpoint to resume from if ``out`` is a run."""
    cfg_path = out / "config.yaml"
    if cfg_path.is_file():
        saved = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        diffs = [d for d in config_diff(saved, to_dict(cfg)) if d.split(":")[0] not in RESUMABLE_KEYS]
        ckpt = latest_checkpoint(out / "checkpoints")
        if diffs and not force and ckpt is not None:
            raise ConfigError(
                f"{out} already holds a run with a different config ({'; '.join(diffs[:5])}). "
                "Use another --out directory, or pass --force to resume with the new config."
            )
        if is_main:
            _write_config(out, cfg)
        return ckpt  # None: the earlier attempt never checkpointed, so it starts afresh
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not a tunelens run directory (no config.yaml); choose an empty "
                          "or new --out directory.")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, cfg)
    return None


def _write_config(out: Path, cfg: Any) -> None:
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "transformers", "peft", "accelerate", "tunelens"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # a missing optional package is simply not recorded
            pass
    (out / "environment.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
