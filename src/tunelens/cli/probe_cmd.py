"""``tunelens probe``: run context-reliance probes on any model and write results.json, records and plots."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from tunelens.cli.data_cmd import parse_fields

app = typer.Typer(help="Context-reliance probes (knowledge conflicts, haystack, contextual QA, attention).")


def _floats(spec: str) -> list[float]:
    return [float(x) for x in spec.split(",") if x.strip()]


@app.callback(invoke_without_command=True)
def probe(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Preset, HF directory/id or .gguf file."),
    suite: str = typer.Option("conflicts:world_facts", "--suite", "-s",
                              help="Comma-separated suites: conflicts:world_facts|capitals|PATH, memotrap[:NAME], "
                                   "haystack, contextqa:xquad|boolq|PATH, attention."),
    variants: str = typer.Option("raw,chat", "--variants", "-v", help="Comma-separated: raw, chat, alpaca, tulu."),
    mode: str = typer.Option("generate", "--mode", help="generate | loglik (conflict suites)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="First N items of each suite."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (results.json, records/, plots)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (fast on AMX CPUs)."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights' dtype."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens"),
    field: List[str] = typer.Option([], "--field", help="Field mapping for user files, canonical=name."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    context_only: bool = typer.Option(False, "--context-only", help="Add 'answer from the context only'."),
    indicator: Optional[str] = typer.Option(None, "--indicator", help="Suffix on the user turn, e.g. [IND]."),
    no_control: bool = typer.Option(False, "--no-control", help="Skip the no-context control."),
    haystack_lengths: str = typer.Option("256,512,1024", "--haystack-lengths"),
    haystack_depths: str = typer.Option("0,0.25,0.5,0.75,1", "--haystack-depths"),
    response_prefix: bool = typer.Option(False, "--response-prefix", help="Haystack: open the answer with the "
                                         "needle's first words."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A .jinja template to use instead."),
    steer: Optional[str] = typer.Option(None, "--steer", help="Steer attention toward each prompt's user turn: "
                                        "alpha=0.9,heads=all|FILE.json|auto[,select=gradient|attention|ap|profile|"
                                        "profile-layer,k=16,dev=capitals,dev_n=32] (see tunelens.steer.spec)."),
) -> None:
    """Run probes; prints a table and writes DIR/results.json, DIR/records/*.jsonl and plots."""
    if ctx.invoked_subcommand is not None:
        return
    from tunelens.chat import load_template_file
    from tunelens.errors import ConfigError
    from tunelens.models import load_model
    from tunelens.probes.runner import run
    from tunelens.probes.settings import ProbeSettings

    if model is None or out is None:
        raise ConfigError("tunelens probe needs --model and --out (e.g. --model tiny-llama --out runs/probe).")
    settings = ProbeSettings(mode=mode, limit=limit, batch_size=batch_size, bf16=bf16, max_new_tokens=max_new_tokens,
                             system=system, context_only_instruction=context_only, indicator=indicator,
                             no_context_control=not no_control, fields=parse_fields(field),
                             haystack_lengths=[int(x) for x in _floats(haystack_lengths)],
                             haystack_depths=_floats(haystack_depths), response_prefix=response_prefix,
                             steer=_steer_spec(steer))
    settings.validate()
    m, tok = load_model(model, dtype=dtype)
    if chat_template:
        tok.chat_template = load_template_file(chat_template)
    report = run(m, tok, suite, variants, settings, model_name=model)
    report.save(out)
    if settings.steer:
        Console().print(f"steered heads: {_save_heads(settings.steer, out)}")
    print_table(report)
    for path in save_plots(report, out):
        Console().print(f"plot: {path}")
    Console().print(f"results: {out / 'results.json'}")


def _steer_spec(text: Optional[str]) -> Optional[dict]:
    if text is None:
        return None
    from tunelens.steer.spec import parse_steer_spec

    return parse_steer_spec(text).to_dict()


def _save_heads(record: dict, out: Path) -> Path:
    """The steered head set as PASTA's ``{"layer": [heads]}`` file (reusable with heads=FILE)."""
    import json

    path = out / "steer_heads.json"
    path.write_text(json.dumps(record["resolved_heads"], indent=1) + "\n", encoding="utf-8")
    return path


def print_table(report) -> None:
    """One row per suite × variant with its headline metrics."""
    table = Table("suite", "variant", "mode", "n", "metric", "value", "truncated")
    for r in report.results:
        for i, (k, v) in enumerate(r.metrics.items()):
            head = (r.suite, r.variant, r.mode, str(r.n)) if i == 0 else ("", "", "", "")
            table.add_row(*head, k, f"{v:.4f}", str(r.truncated) if i == 0 else "")
        table.add_section()
    Console(width=max(100, Console().width)).print(table)


def save_plots(report, out: Path) -> list[Path]:
    """A bar chart of the headline metrics, plus per-suite figures where the suite provides one."""
    from tunelens.report.probe_plots import plot_probe_report

    return plot_probe_report(report, out)


@app.command("export-lm-eval")
def export_lm_eval(
    out: Path = typer.Argument(..., help="Directory for the task YAMLs (use with lm_eval --include_path DIR)."),
    suites: str = typer.Option("world_facts,capitals", "--suites", help="Built-in conflict sets to export."),
    limit: Optional[int] = typer.Option(None, "--limit"),
) -> None:
    """Write lm-evaluation-harness tasks for the conflict suites."""
    from tunelens.probes.lm_eval_export import export_tasks

    for path in export_tasks(out, [s.strip() for s in suites.split(",") if s.strip()], limit=limit):
        Console().print(f"wrote {path}")
