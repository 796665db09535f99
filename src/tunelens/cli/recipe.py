"""Shared by the recipe-driven commands (sft, align, synth, testbed): config file + key=value overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, TypeVar

import typer

from tunelens.config import load_config

T = TypeVar("T")


def load_recipe(cls: type[T], config: Optional[Path], ctx: typer.Context) -> T:
    """``cls`` from the recipe file and the extra ``key=value`` arguments; a first argument that is an override
    rather than a file (``tunelens sft max_steps=5 --out DIR``) counts as one."""
    overrides = list(ctx.args)
    if config is not None and "=" in str(config) and not config.exists():
        config, overrides = None, [str(config), *overrides]
    return load_config(cls, config, overrides)
