"""``tunelens steer select``: choose heads to steer (profiling or one-pass attribution) and write a head-set file."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Attention steering toward the user's context (PASTA-style), head selection.")


@app.command("select")
def select(
    model: str = typer.Option(..., "--model", "-m", help="Preset, HF directory/id or .gguf file."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory: heads.json ({layer: [heads]}) + selection.json."),
    method: str = typer.Option("gradient", "--method", help="gradient | attention | ap | profile | profile-layer."),
    k: int = typer.Option(16, "--k", help="Heads to keep."),
    alpha: float = typer.Option(0.01, "--alpha", help="α while profiling (profile methods)."),
    dev: str = typer.Option("capitals", "--dev", help="Conflicts set to select on (capitals, world_facts, FILE)."),
    dev_n: int = typer.Option(32, "--dev-n", help="Dev items."),
    variant: str = typer.Option("chat", "--variant", help="Prompt variant of the dev prompts."),
    top_layers: int = typer.Option(4, "--top-layers", help="profile-layer: layers whose heads are profiled."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights' dtype."),
    chat_template: Path | None = typer.Option(None, "--chat-template", help="A .jinja template to use instead."),
) -> None:
    """Select heads on a dev set of knowledge conflicts; use the file with ``probe --steer heads=DIR/heads.json``."""
    from tunelens.chat import load_template_file
    from tunelens.models import load_model
    from tunelens.steer.spec import parse_steer_spec, select_spec_heads

    spec = parse_steer_spec({"alpha": 1.0, "heads": "auto", "select": method, "k": k, "dev": dev, "dev_n": dev_n,
                             "dev_variant": variant, "profile_alpha": alpha, "top_layers": top_layers})
    m, tok = load_model(model, dtype=dtype)
    if chat_template:
        tok.chat_template = load_template_file(chat_template)
    heads, record = select_spec_heads(m, tok, spec, bf16=bf16)
    out.mkdir(parents=True, exist_ok=True)
    heads.save(out / "heads.json")
    import json

    (out / "selection.json").write_text(json.dumps(dict(record, model=model), indent=1), encoding="utf-8")
    Console().print(f"{len(heads)} heads ({record['method']}, {record['settings']['seconds']:.1f} s): {out / 'heads.json'}")
