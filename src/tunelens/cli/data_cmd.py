"""``tunelens data show``: render examples with their trained tokens highlighted (or as JSON); the data-prep
commands (``curate``, ``augment``, ``indicate``) live in :mod:`tunelens.cli.data_prep_cmd`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.rule import Rule

from tunelens.chat import highlight, load_template_file, render, to_record
from tunelens.data import load_examples
from tunelens.errors import ConfigError
from tunelens.models import tiny_tokenizer

app = typer.Typer(no_args_is_help=True, help="Inspect datasets as the trainer sees them.")


def parse_fields(items: List[str]) -> dict[str, str]:
    """``canonical=name_in_file`` pairs from repeated --field options."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--field {item!r}: expected canonical=name_in_file, e.g. output=response.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_tokenizer(model: str):
    """Only the tokenizer of a model spec (presets share the bundled one; others load the model)."""
    from tunelens.models import PRESETS, load_model

    if model in PRESETS and PRESETS[model].source == "random":
        return tiny_tokenizer()
    return load_model(model)[1]


@app.command("show")
def show(
    data: List[Path] = typer.Argument(..., help="Data file(s): JSONL/JSON/Parquet/CSV or a datasets directory."),
    model: str = typer.Option("tiny-llama", "--model", "-m", help="Model spec whose tokenizer renders the data."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A .jinja template to use instead."),
    fmt: str = typer.Option("text", "--format", help="text (highlighted) or json (one object per example)."),
    limit: int = typer.Option(3, "--limit", "-n", help="Number of examples to show."),
    schema: str = typer.Option("auto", "--schema"),
    field: List[str] = typer.Option([], "--field", help="Field mapping canonical=name (repeatable)."),
    train_on: str = typer.Option("assistant", "--train-on", help="assistant | last | all"),
) -> None:
    """Show rendered examples; trained tokens are highlighted (text) or flagged per token (json)."""
    if fmt not in ("text", "json"):
        raise ConfigError(f"--format must be text or json, got {fmt!r}.")
    tok = load_tokenizer(model)
    template = load_template_file(chat_template) if chat_template else None
    report = load_examples([str(p) for p in data], schema=schema, fields=parse_fields(field), limit=limit)
    con = Console(soft_wrap=True, highlight=False)
    for ex in report.examples:
        r = render(ex.messages, tok, train_on=train_on, chat_template=template)
        if fmt == "json":
            print(json.dumps(to_record(r, tok), ensure_ascii=False))
            continue
        con.print(Rule(f"{ex.source}  ({len(r)} tokens, {sum(r.trained_mask)} trained)"))
        con.print(highlight(r))
    if fmt == "text" and report.rejected:
        con.print(f"[yellow]{len(report.rejected)} records rejected; first: {report.rejected[0]}[/]")


def _register_prep() -> None:
    from tunelens.cli import data_prep_cmd

    app.command("curate")(data_prep_cmd.curate)
    app.command("augment")(data_prep_cmd.augment)
    app.command("indicate")(data_prep_cmd.indicate)


_register_prep()
