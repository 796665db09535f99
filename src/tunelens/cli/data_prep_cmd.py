"""``tunelens data curate | augment | indicate``: the context-reliance data-prep steps (thin wrappers).

Each reads data with :func:`tunelens.data.load_examples`, writes the resulting examples as messages JSONL
with provenance (``--out``) and a JSON report (``--report``, default ``OUT.report.json``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from tunelens.errors import ConfigError

DATA_ARG = typer.Argument(..., help="Data file(s): JSONL/JSON/Parquet/CSV or a datasets directory.")
OUT_OPT = typer.Option(..., "--out", "-o", help="Output messages JSONL.")
REPORT_OPT = typer.Option(None, "--report", help="Report JSON (default: OUT.report.json).")
SCHEMA_OPT = typer.Option("auto", "--schema")
FIELD_OPT = typer.Option([], "--field", help="Field mapping canonical=name_in_file (repeatable).")
LIMIT_OPT = typer.Option(None, "--limit", help="Use only the first N examples.")
ON_ERROR_OPT = typer.Option("fail", "--on-error", help="fail (stop at the first bad record) | skip.")


def _load(data: List[Path], schema: str, field: List[str], limit: Optional[int], on_error: str):
    from tunelens.cli.data_cmd import parse_fields
    from tunelens.data import load_examples

    if on_error not in ("fail", "skip"):
        raise ConfigError(f"--on-error must be fail or skip, got {on_error!r}.")
    return load_examples([str(p) for p in data], schema=schema, fields=parse_fields(field), limit=limit,
                         on_error=on_error)


def _report_path(out: Path, report: Optional[Path]) -> Path:
    return report if report is not None else out.with_name(out.name + ".report.json")


def _finish(out: Path, report_path: Optional[Path], examples, step: str, info, report: dict, loaded,
            summary: str) -> None:
    from tunelens.data.export import write_examples_jsonl, write_json

    report = dict(report, n_read=loaded.n_read, n_rejected=len(loaded.rejected),
                  rejected=[str(r) for r in loaded.rejected[:50]], output=str(out))
    write_examples_jsonl(out, examples, step, info)
    path = write_json(_report_path(out, report_path), report)
    con = Console(soft_wrap=True, highlight=False)
    con.print(summary)
    con.print(f"wrote {len(examples)} examples to {out}; report: {path}")


def _finite(x: float) -> Optional[float]:
    return None if math.isnan(x) else x


def _model(spec: str, dtype: str, seed: int):
    from tunelens.models import load_model

    return load_model(spec, dtype=dtype, seed=seed)


def _template(path: Optional[Path]) -> Optional[str]:
    from tunelens.chat import load_template_file

    return load_template_file(path) if path else None


def curate(
    data: List[Path] = DATA_ARG,
    model: str = typer.Option(..., "--model", "-m", help="Model spec that scores the targets."),
    out: Path = OUT_OPT,
    drop: float = typer.Option(0.25, "--drop", help="Fraction dropped: floor(drop * n) lowest-perplexity examples."),
    report: Optional[Path] = REPORT_OPT,
    schema: str = SCHEMA_OPT,
    field: List[str] = FIELD_OPT,
    limit: Optional[int] = LIMIT_OPT,
    on_error: str = ON_ERROR_OPT,
    missing_context: str = typer.Option("error", "--missing-context",
                                        help="error | as_is: examples without a marked context."),
    context_key: str = typer.Option("context", "--context-key", help="meta field holding the context."),
    question_key: str = typer.Option("question", "--question-key", help="meta field holding the question."),
    batch_size: int = typer.Option(8, "--batch-size"),
    bf16: bool = typer.Option(False, "--bf16/--no-bf16", help="Score under bf16 autocast."),
    dtype: str = typer.Option("float32", "--dtype"),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed of random presets."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template"),
) -> None:
    """Drop the examples whose target is most predictable WITHOUT its context (Goyal et al. 2025)."""
    from tunelens.data.context import ContextSpec
    from tunelens.data.curate import curate_by_parametric_perplexity

    loaded = _load(data, schema, field, limit, on_error)
    spec = ContextSpec(context_key=context_key, question_key=question_key, missing=missing_context)
    m, tok = _model(model, dtype, seed)
    rep = curate_by_parametric_perplexity(loaded.examples, m, tok, drop, batch_size=batch_size, bf16=bf16,
                                          spec=spec, chat_template=_template(chat_template), progress=True)
    rep.settings["model"] = model
    info = [{"parametric_ppl": s.parametric_ppl, "model": model} for s in rep.scores if not s.dropped]
    _finish(out, report, rep.kept, "curate", info, rep.to_dict(), loaded, rep.summary())


def augment(
    data: List[Path] = DATA_ARG,
    out: Path = OUT_OPT,
    fraction: float = typer.Option(0.1, "--fraction", help="round(fraction * n) counterfactual examples."),
    conflicts: Optional[str] = typer.Option(None, "--conflicts",
                                            help="Conflicts file or built-in name; omit for answer substitution."),
    conflict_field: List[str] = typer.Option([], "--conflict-field",
                                             help="Conflicts field mapping ours=name_in_file (repeatable)."),
    mode: str = typer.Option("add", "--mode", help="add (append) | replace (keep the set's size)."),
    seed: int = typer.Option(0, "--seed"),
    type_key: str = typer.Option("answer_type", "--type-key", help="meta field giving an answer's type."),
    report: Optional[Path] = REPORT_OPT,
    schema: str = SCHEMA_OPT,
    field: List[str] = FIELD_OPT,
    limit: Optional[int] = LIMIT_OPT,
    on_error: str = ON_ERROR_OPT,
) -> None:
    """Mix counterfactual-context examples into the data (from a conflicts file or by answer substitution)."""
    from tunelens.cli.data_cmd import parse_fields
    from tunelens.data.augment import augment_counterfactual

    loaded = _load(data, schema, field, limit, on_error)
    rep = augment_counterfactual(loaded.examples, fraction, conflicts=conflicts, seed=seed, mode=mode,
                                 type_key=type_key, conflict_fields=parse_fields(conflict_field) or None)
    info = [{"counterfactual": bool(ex.meta.get("counterfactual"))} for ex in rep.examples]
    _finish(out, report, rep.examples, "augment", info, rep.to_dict(), loaded, rep.summary())


def indicate(
    data: List[Path] = DATA_ARG,
    model: str = typer.Option(..., "--model", "-m", help="Seed model whose attention scores the examples."),
    out: Path = OUT_OPT,
    beta: float = typer.Option(0.6, "--beta", help="Turns scoring above beta get the indicator."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Attention layer (default: the middle one)."),
    token: str = typer.Option("[IND]", "--token"),
    save_model: Optional[Path] = typer.Option(None, "--save-model",
                                              help="Also save the model + tokenizer with the token added here."),
    init_from: Optional[str] = typer.Option(None, "--init-from",
                                            help="Initialise the token's embedding from this text (default: mean)."),
    report: Optional[Path] = REPORT_OPT,
    schema: str = SCHEMA_OPT,
    field: List[str] = FIELD_OPT,
    limit: Optional[int] = LIMIT_OPT,
    on_error: str = ON_ERROR_OPT,
    batch_size: int = typer.Option(4, "--batch-size"),
    bf16: bool = typer.Option(False, "--bf16/--no-bf16"),
    dtype: str = typer.Option("float32", "--dtype"),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed of random presets."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template"),
) -> None:
    """Append [IND] to user turns whose response attends to the user turn most (Wang et al. 2024)."""
    from tunelens.data.indicator import add_indicator_token
    from tunelens.data.indicator import indicate as run_indicate

    loaded = _load(data, schema, field, limit, on_error)
    m, tok = _model(model, dtype, seed)
    rep = run_indicate(loaded.examples, m, tok, beta, token=token, layer=layer, batch_size=batch_size, bf16=bf16,
                       chat_template=_template(chat_template), progress=True)
    rep.settings["model"] = model
    result = rep.to_dict()
    if save_model is not None:
        from tunelens.models import save_model as save

        result["token_id"] = add_indicator_token(m, tok, token, init_from=init_from)
        result["saved_model"] = str(save(m, tok, save_model))
    info = [{"indicator": s.flagged, "scores": [_finite(t.score) for t in s.turns]} for s in rep.scores]
    _finish(out, report, rep.examples, "indicate", info, result, loaded, rep.summary())
