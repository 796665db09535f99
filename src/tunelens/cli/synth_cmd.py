"""``tunelens synth CONFIG.yaml --out DIR [key=value ...]``: build non-instructional training pairs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tunelens.cli.recipe import load_recipe


def synth(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="Recipe YAML (see configs/synth-*.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory; a rerun reuses its teacher cache."),
) -> None:
    """Turn raw text into (first part -> teacher continuation) pairs; overrides follow as key=value."""
    from tunelens.data.synth import SynthConfig, run_synth

    cfg = load_recipe(SynthConfig, config, ctx)
    result = run_synth(cfg, out)
    rep = result.report
    c = rep["counts"]
    con = Console()
    ic = rep["instruction_check"]
    share = ic.get("rules_flagged_share")
    con.print(f"wrote {rep['written']} pairs to {result.pairs_path}")
    con.print(f"documents {c['documents']} (empty {c['empty_files']}, binary {c['binary_files']}, short "
              f"{c['short_documents']}), passages {c['passages']}, duplicates {c['exact_duplicates']} exact + "
              f"{c['near_duplicates']} near, too short to split {c['short_passages']}")
    con.print(f"teacher: {c['requests_sent']} requests sent, {c['cache_hits']} from cache, {c['teacher_errors']} "
              f"errors, {c['teacher_timeouts']} timeouts, {c['empty_outputs']} empty, {c['filtered']} filtered")
    if share is not None:
        con.print(f"instruction-like (rules): {ic['rules_flagged']}/{ic['checked']} = {100 * share:.2f}%")
    if ic.get("flagged_share") is not None:
        con.print(f"instruction-like (judge): {ic['flagged']}/{ic['judged']} = {100 * ic['flagged_share']:.2f}%")
    print(json.dumps({"pairs": result.pairs_path, "report": result.report_path, "written": rep["written"]}))
