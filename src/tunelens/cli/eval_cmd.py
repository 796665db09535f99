"""``tunelens eval ifeval|refll|judge``: instruction-following measures; each writes DIR/results.json + records."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Measure instruction following: IFEval checks, reference-answer log-likelihood and "
                       "well-terminated rate, LLM judge.", no_args_is_help=True)

_MODEL = typer.Option(..., "--model", "-m", help="Preset, HF directory/id or .gguf file.")
_OUT = typer.Option(..., "--out", "-o", help="Output directory (results.json, records/).")


def _load(model: str, dtype: str, chat_template: Optional[Path]) -> tuple[Any, Any, Optional[str]]:
    from tunelens.chat import load_template_file
    from tunelens.models import load_model

    m, tok = load_model(model, dtype=dtype)
    m.eval()
    return m, tok, load_template_file(chat_template) if chat_template else None


def _settings(max_new_tokens: int, batch_size: int, bf16: bool, system: Optional[str], stop: List[str],
              template: Optional[str]):
    from tunelens.errors import ConfigError
    from tunelens.evals import GenerationSettings

    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("--max-new-tokens and --batch-size must be >= 1.")
    return GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, bf16=bf16, system=system,
                              stop_strings=tuple(stop), chat_template=template)


def _finish(out: Path, kind: str, model: str, settings: dict[str, Any], metrics: dict[str, Any],
            records: dict[str, list]) -> None:
    from tunelens.evals import save_results

    path = save_results(out, {"eval": kind, "model": model, "settings": settings, "metrics": metrics}, records)
    table = Table("metric", "value")
    for key, value in _flat(metrics):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    Console().print(f"results: {path}")


def _flat(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in metrics.items():
        if k in ("by_instruction", "by_category", "judge"):
            continue
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((prefix + k, v))
    return rows


@app.command("ifeval")
def ifeval(
    model: str = _MODEL,
    out: Path = _OUT,
    data: Optional[Path] = typer.Option(None, "--data", help="IFEval input_data.jsonl (default: shared copy)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="First N prompts."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    batch_size: int = typer.Option(8, "--batch-size"),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (fast on AMX CPUs)."),
    dtype: str = typer.Option("float32", "--dtype"),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable), e.g. '### User:'."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A .jinja template to use instead."),
) -> None:
    """IFEval: strict/loose accuracy at prompt and instruction level, plus the well-terminated rate."""
    from tunelens.evals import evaluate_ifeval, load_ifeval

    items = load_ifeval(data, limit)
    m, tok, template = _load(model, dtype, chat_template)
    gs = _settings(max_new_tokens, batch_size, bf16, system, stop, template)
    metrics, records = evaluate_ifeval(m, tok, items, gs)
    _finish(out, "ifeval", model, {"data": str(data) if data else "shared:ifeval_input_data.jsonl", "limit": limit,
                                   "max_new_tokens": max_new_tokens, "bf16": bf16, "dtype": dtype, "system": system,
                                   "stop": stop, "chat_template": str(chat_template) if chat_template else None},
            metrics, {"ifeval": records})


@app.command("refll")
def refll(
    model: str = _MODEL,
    out: Path = _OUT,
    benchmarks: str = typer.Option("mt_bench,vicuna_bench", "--benchmarks", help="Comma-separated."),
    turns: str = typer.Option("all", "--turns", help="all | first (MT-Bench has two turns)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="First N items."),
    max_answer_tokens: Optional[int] = typer.Option(None, "--max-answer-tokens",
                                                   help="Score only the first N tokens of longer answers."),
    generate: bool = typer.Option(True, "--generate/--no-generate", help="Also answer the questions greedily "
                                  "and report the well-terminated rate."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    batch_size: int = typer.Option(4, "--batch-size"),
    bf16: bool = typer.Option(False, "--bf16"),
    dtype: str = typer.Option("float32", "--dtype"),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (generation only)."),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template"),
) -> None:
    """Reference-answer log-likelihood (per token) on MT-Bench/Vicuna-bench, and the well-terminated rate."""
    from tunelens.evals import (
        load_reference_items,
        reference_loglik,
        reference_termination,
    )

    items = load_reference_items([b.strip() for b in benchmarks.split(",") if b.strip()], turns=turns, limit=limit)
    m, tok, template = _load(model, dtype, chat_template)
    metrics, records = reference_loglik(m, tok, items, batch_size=batch_size, bf16=bf16, chat_template=template,
                                        max_answer_tokens=max_answer_tokens)
    all_records = {"refll": records}
    if generate:
        gs = _settings(max_new_tokens, batch_size, bf16, system, stop, template)
        metrics["termination"], all_records["answers"] = reference_termination(m, tok, items, gs)
    _finish(out, "refll", model, {"benchmarks": benchmarks, "turns": turns, "limit": limit,
                                  "max_answer_tokens": max_answer_tokens, "generate": generate,
                                  "max_new_tokens": max_new_tokens, "bf16": bf16, "dtype": dtype, "stop": stop,
                                  "chat_template": str(chat_template) if chat_template else None},
            metrics, all_records)


@app.command("judge")
def judge(
    model: str = _MODEL,
    out: Path = _OUT,
    judge_kind: str = typer.Option("openai", "--judge-kind", help="openai | hf (a synthesis teacher kind)."),
    judge_model: str = typer.Option(..., "--judge-model", help="Served model name (openai) or preset/dir (hf)."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", "--base-url"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="NAME of the variable with the key."),
    concurrency: int = typer.Option(8, "--concurrency"),
    judge_max_tokens: int = typer.Option(512, "--judge-max-tokens"),
    benchmark: str = typer.Option("mt_bench", "--benchmark", help="mt_bench | vicuna_bench (first turns)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    batch_size: int = typer.Option(8, "--batch-size"),
    bf16: bool = typer.Option(False, "--bf16"),
    dtype: str = typer.Option("float32", "--dtype"),
    system: Optional[str] = typer.Option(None, "--system"),
    stop: List[str] = typer.Option([], "--stop"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template"),
) -> None:
    """Answer MT-Bench/Vicuna questions with the model and rate them 1-10 with a judge model."""
    from tunelens.data.synth.teachers import TeacherConfig, make_teacher
    from tunelens.evals import evaluate_judge, load_judge_items

    items = load_judge_items(benchmark, limit)
    m, tok, template = _load(model, dtype, chat_template)
    teacher = make_teacher(TeacherConfig(kind=judge_kind, model=judge_model, prompt_format="chat",
                                         max_tokens=judge_max_tokens, temperature=0.0, base_url=base_url,
                                         api_key_env=api_key_env, concurrency=concurrency))
    try:
        gs = _settings(max_new_tokens, batch_size, bf16, system, stop, template)
        metrics, records = evaluate_judge(m, tok, teacher, items, gs)
    finally:
        teacher.close()
    _finish(out, "judge", model, {"benchmark": benchmark, "limit": limit, "max_new_tokens": max_new_tokens,
                                  "judge_kind": judge_kind, "judge_model": judge_model, "base_url": base_url,
                                  "judge_max_tokens": judge_max_tokens, "bf16": bf16, "dtype": dtype},
            metrics, {"judge": records})
