"""``tunelens sft CONFIG.yaml --out DIR [key=value ...]``: run or resume supervised fine-tuning."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tunelens.cli.recipe import load_recipe
from tunelens.train import SFTConfig, train_sft


def sft(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="Recipe YAML (see configs/); omit to use defaults."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; an existing run resumes."),
    force: bool = typer.Option(False, "--force", help="Resume even if the config changed."),
) -> None:
    """Fine-tune a model; overrides follow as key=value (e.g. max_steps=50 data.max_length=256)."""
    cfg = load_recipe(SFTConfig, config, ctx)
    callbacks = []
    if cfg.probes:
        from tunelens.probes.trajectory import trajectory_from_config

        callbacks.append(trajectory_from_config(cfg.probes, model_name=cfg.model.spec))
    if cfg.heads:
        from tunelens.heads.callback import heads_from_config

        callbacks.append(heads_from_config(cfg.heads))
    result = train_sft(cfg, out, callbacks=callbacks, force=force)
    con = Console()
    print(json.dumps(asdict(result), indent=2))
    if result.resumed_from is not None:
        con.print(f"resumed from step {result.resumed_from}")
    if cfg.probes:
        from tunelens.report import plot_trajectory

        summary = json.loads((out / "trajectory.json").read_text())
        for key, s in summary["metrics"].items():
            flag = "  INVERTED" if s.get("inverted") else ""
            con.print(f"{key}: peak {s['peak']:.3f} @ step {s['step_of_peak']}, final {s['final']:.3f}, "
                      f"inversion {s['inversion']:.3f}{flag}")
        con.print(f"plot: {plot_trajectory(out)}")
