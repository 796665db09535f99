"""``tunelens align CONFIG.yaml --out DIR [key=value ...]``: f-divergence alignment (f-DPG) toward a target."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tunelens.align import AlignConfig, train_align
from tunelens.cli.recipe import load_recipe

KEYS = ("rate/all_constraints", "kl_p_pi", "js", "tv", "kl_pi_a", "distinct_2")


def align(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="Recipe YAML (see configs/align-*.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; an existing run resumes."),
    force: bool = typer.Option(False, "--force", help="Resume even if the config changed."),
) -> None:
    """Train toward an energy-based target by minimising an f-divergence (loss=fkl|rkl|js|tv|chi2|alpha)."""
    cfg = load_recipe(AlignConfig, config, ctx)
    result = train_align(cfg, out, force=force)
    con = Console()
    print(json.dumps({k: v for k, v in asdict(result).items() if k not in ("initial", "final")}, indent=2))
    for key in [k for k in result.final if k in KEYS or k.startswith(("rate/", "moment/", "reward/"))]:
        con.print(f"{key}: {result.initial.get(key, float('nan')):.4g} -> {result.final[key]:.4g}", markup=False)
    con.print(f"summary: {out / 'summary.json'}")
