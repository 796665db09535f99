"""``tunelens testbed run CONFIG.yaml --out DIR [key=value ...]``: the context-parametric inversion testbed."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from tunelens.cli.recipe import load_recipe

app = typer.Typer(no_args_is_help=True, help="Synthetic world -> tiny pretrained Llama -> IFT variants x seeds.")


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    config: Path | None = typer.Argument(None, help="Testbed recipe YAML (configs/testbed.yaml); omit for defaults."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (finished variant runs in it are reused)."),
) -> None:
    """Pretrain (or reuse the cached model), fine-tune every variant x seed, write summary.json and plots.

    Overrides follow as key=value, e.g. seeds=[0] variants=[vanilla,no_cs_s] finetune.steps=100.
    """
    from tunelens.testbed import TestbedConfig, format_table, run_testbed

    cfg = load_recipe(TestbedConfig, config, ctx)
    summary = run_testbed(cfg, out)
    con = Console()
    rec = summary["pretrain"]["closed_book_recall"]
    con.print(f"pretrained model: {summary['pretrain']['n_params'] / 1e6:.2f}M params "
              f"({'cached' if summary['pretrain']['cache_hit'] else 'trained now'}); closed-book recall "
              f"train {rec['train']['declarative']:.2f} / held-out {rec['heldout']['declarative']:.2f}")
    print(format_table(summary["table"]))
    print(f"checks: {json.dumps(summary['checks'])}")
    con.print(f"total {summary['timing']['total_s']:.0f}s; summary: {out / 'summary.json'}; plots: {out / 'plots'}")
