"""Needle-in-a-haystack suite ([B] §2.1): keyword recall of a needle hidden in Paul Graham essays.

Spec: ``haystack`` ([B]'s San Francisco needle, ``sf_sandwich``) or ``haystack:<needle id>`` (any id of
``haystack/needles.json``, single or multi-needle). Grid: ``settings.haystack_lengths`` (context tokens) x
``settings.haystack_depths`` (0 = needle first, 1 = needle last), built by
:func:`~tunelens.probes.haystack_data.build_haystack`.

Prompt (user turn, any variant), [B]'s template as pieces::

    You are a helpful AI assistant that answers a question using only the provided document: \\n{context}
    \\n\\nQuestion: {retrieval_question}

With ``response_prefix`` the assistant turn opens with the needle's first 8 words ([B]'s ``add_hint``;
"The best thing to do in San Francisco"); the model continues it. Greedy decoding of
``haystack_new_tokens`` tokens (default 100, as [B]), no stop string; recall is scored on the generated
text only (never on the prefix): lower-case, punctuation -> spaces, share of the needle's keywords present
(:func:`~tunelens.probes.metrics.keyword_recall`; [B]'s 7 words for the SF needle). The suite always
generates, whatever ``settings.mode``.

Metrics: ``recall`` (mean over cells), ``recall_error`` (1 - recall, [B]'s reported number),
``recall_ci_low`` / ``recall_ci_high`` (percentile bootstrap of the mean, seed 0), ``n_lengths_clipped``,
``max_context_tokens``. Records: one per cell with ``length`` (the context length run), ``requested_length``,
``depth``, ``actual_tokens``, ``inserted_depth``, ``prompt_tokens``, ``recall``, ``output``.

Length policy (clip, never silent): the prompt budget is ``max_prompt_tokens`` or the model's limit minus
``haystack_new_tokens``; the largest context that fits is that budget minus the prompt's overhead (template,
preamble, question, indicator, response prefix). A requested length above it is **clipped** to it — as
[B]'s grid runs "from 200 to the maximum" — and lengths that clip to the same value run once (no duplicate
cells weighting the mean). Every clip is recorded: ``metrics["n_lengths_clipped"]``, and in the result's
settings ``haystack.clipped = {requested: used}`` and ``haystack.lengths_run``; a warning is logged. A
maximum smaller than the needle itself raises :class:`~tunelens.errors.ConfigError`. Cells are built so the
context is never cut by :func:`~tunelens.probes.suites.common.fit_prompt` (a cut could remove the needle):
when re-tokenisation at the seams makes a prompt a few tokens too long, its haystack is rebuilt that many
tokens shorter; only if that fails is the context cut, and then counted in ``SuiteResult.truncated``.

:func:`haystack_heatmap` draws the length x depth recall grid of a result (matplotlib, Agg canvas).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunelens.errors import ConfigError, DataError
from tunelens.probes.engine import generate_greedy
from tunelens.probes.haystack_data import (HaystackCase, MultiNeedle, Needle, build_haystack, haystack_grid,
                                           load_multi_needles, load_needles)
from tunelens.probes.metrics import bootstrap_ci, keyword_recall, recall_error
from tunelens.probes.prompts import Prompt, build_prompt
from tunelens.probes.settings import ProbeSettings, SuiteResult
from tunelens.probes.suites.common import fit_prompt, model_limit, settings_record

__all__ = ["DEFAULT_NEEDLE", "PREAMBLE", "QUESTION_SEP", "haystack_heatmap", "response_prefix_of", "run_haystack",
           "select_needle"]

log = logging.getLogger(__name__)

DEFAULT_NEEDLE = "sf_sandwich"
PREAMBLE = "You are a helpful AI assistant that answers a question using only the provided document: \n"
QUESTION_SEP = "\n\nQuestion: "
PREFIX_WORDS = 8  # [B]'s add_hint: the needle's first 8 words open the answer
_REBUILD_TRIES = 4


def select_needle(arg: str) -> Needle | MultiNeedle:
    """The needle named ``arg`` (single needles first, then multi-needle records); ``""`` -> [B]'s SF needle."""
    name = arg.strip() or DEFAULT_NEEDLE
    needles: list[Needle | MultiNeedle] = [*load_needles(), *load_multi_needles()]
    for n in needles:
        if n.id == name:
            return n
    raise ConfigError(f"Unknown haystack needle {name!r}; choose one of {', '.join(n.id for n in needles)} "
                      f"(e.g. --suite haystack:{needles[0].id}).")


def response_prefix_of(needle: Needle | MultiNeedle) -> str:
    """The needle's first :data:`PREFIX_WORDS` words (the first needle's, in multi-needle mode)."""
    return " ".join(needle.texts[0].split()[:PREFIX_WORDS])


def _parts(context: str, question: str) -> list[tuple[str, str]]:
    return [("other", PREAMBLE), ("context", context), ("other", QUESTION_SEP), ("question", question)]


def _build(variant: str, parts: list[tuple[str, str]], tok: Any, s: ProbeSettings, prefix: str) -> Prompt:
    return build_prompt(variant, parts, tok, system=s.system, context_only_instruction=s.context_only_instruction,
                        indicator=s.indicator, response_prefix=prefix)


def _plan_lengths(requested: list[int], max_ctx: int) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """``[(used, requested)]`` in the given order (clipped, deduplicated by used length) and the clips."""
    plan: list[tuple[int, int]] = []
    clipped: dict[int, int] = {}
    seen: set[int] = set()
    for n in requested:
        used = min(n, max_ctx)
        if used != n:
            clipped[n] = used
        if used not in seen:
            seen.add(used)
            plan.append((used, n))
    return plan, clipped


def _cell(tok: Any, variant: str, s: ProbeSettings, needle: Needle | MultiNeedle, length: int, depth: float,
          limit: int, prefix: str) -> tuple[HaystackCase, Prompt]:
    """A case and its prompt; the haystack is rebuilt shorter rather than having its context cut."""
    target = length
    for _ in range(_REBUILD_TRIES):
        try:
            case = build_haystack(tok, target, depth, needle)
        except ValueError as e:
            raise ConfigError(f"haystack length {length}: {e}; use longer haystack_lengths.") from None
        prompt = fit_prompt(variant, _parts(case.context, case.question), tok, s, limit, s.haystack_new_tokens,
                            prefix)
        if not prompt.truncated:
            return case, prompt
        target -= prompt.truncated
    return case, prompt  # still cut after the retries: counted in SuiteResult.truncated


def run_haystack(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    """Run the needle-in-a-haystack grid under one prompt ``variant`` (see the module docstring)."""
    needle = select_needle(arg)
    suite = f"haystack:{arg.strip()}" if arg.strip() else "haystack"
    prefix = response_prefix_of(needle) if s.response_prefix else ""
    limit = model_limit(model, tok)
    budget = s.max_prompt_tokens or (limit - s.haystack_new_tokens)
    overhead = len(_build(variant, _parts("", needle.question), tok, s, prefix))
    max_ctx = budget - overhead
    needle_tokens = sum(len(tok(" " + t, add_special_tokens=False)["input_ids"]) + 1 for t in needle.texts)
    if max_ctx <= needle_tokens:
        raise ConfigError(
            f"haystack: the prompt budget is {budget} tokens (model limit {limit} - {s.haystack_new_tokens} new "
            f"tokens, or max_prompt_tokens) and the prompt without its document takes {overhead}, leaving "
            f"{max_ctx} context tokens, too few for the needle ({needle_tokens}); raise max_prompt_tokens or "
            f"lower haystack_new_tokens.")
    plan, clipped = _plan_lengths(list(s.haystack_lengths), max_ctx)
    if clipped:
        log.warning("haystack (%s): lengths above the %d context tokens that fit were clipped: %s", variant,
                    max_ctx, ", ".join(f"{a}->{b}" for a, b in clipped.items()))
    requested_of = dict(plan)
    try:
        grid = haystack_grid([used for used, _ in plan], list(s.haystack_depths))
    except ValueError as e:
        raise ConfigError(f"haystack: {e}.") from None
    cells = [(n, d, *_cell(tok, variant, s, needle, n, d, limit, prefix)) for n, d in grid]
    gens = generate_greedy(model, tok, [p.input_ids for _, _, _, p in cells], max_new_tokens=s.haystack_new_tokens,
                           batch_size=s.batch_size, bf16=s.bf16, progress=s.progress)
    keywords = list(needle.recall_words)
    records: list[dict[str, Any]] = []
    for (n, d, case, prompt), g in zip(cells, gens):
        try:
            r = keyword_recall(g.text, keywords)
        except DataError as e:
            raise ConfigError(f"haystack needle {needle.id!r}: {e}") from None
        records.append({"needle_id": needle.id, "length": n, "requested_length": requested_of[n], "depth": d,
                        "actual_tokens": case.actual_tokens, "inserted_depth": case.inserted_depths[0],
                        "prompt_tokens": len(prompt), "truncated": prompt.truncated, "recall": r,
                        "output": g.text, "stopped": g.stopped})
        if len(case.inserted_depths) > 1:
            records[-1]["inserted_depths"] = list(case.inserted_depths)
    recalls = [rec["recall"] for rec in records]
    ci = bootstrap_ci(recalls)
    metrics = {"recall": ci.estimate, "recall_error": recall_error(recalls), "recall_ci_low": ci.low,
               "recall_ci_high": ci.high, "n_lengths_clipped": float(len(clipped)),
               "max_context_tokens": float(max_ctx)}
    info = {"needle": needle.id, "keywords": keywords, "response_prefix_text": prefix, "max_context_tokens": max_ctx,
            "prompt_overhead_tokens": overhead, "lengths_requested": list(s.haystack_lengths),
            "lengths_run": [used for used, _ in plan], "clipped": {str(a): b for a, b in clipped.items()},
            "length_policy": "clip"}
    return SuiteResult(suite=suite, variant=variant, mode="generate", n=len(records), metrics=metrics,
                       settings=settings_record(s, haystack=info), records=records,
                       truncated=sum(1 for _, _, _, p in cells if p.truncated))


def haystack_heatmap(result: SuiteResult, path: str | Path) -> Path:
    """Draw ``result``'s recall over context length (x) x needle depth (y) as a PNG at ``path``.

    Cells run more than once (none, by construction) are averaged; missing cells stay blank. Uses an Agg
    canvas directly, so the global matplotlib backend is left alone. Returns the path written.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not result.records:
        raise ConfigError(f"{result.suite} ({result.variant}): no records to draw.")
    lengths = sorted({int(r["length"]) for r in result.records})
    depths = sorted({float(r["depth"]) for r in result.records})
    total = np.zeros((len(depths), len(lengths)))
    count = np.zeros_like(total)
    for r in result.records:
        i, j = depths.index(float(r["depth"])), lengths.index(int(r["length"]))
        total[i, j] += float(r["recall"])
        count[i, j] += 1
    with np.errstate(invalid="ignore"):
        grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    fig = Figure(figsize=(max(4.0, 0.6 * len(lengths) + 2.5), max(3.0, 0.35 * len(depths) + 2.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45 if len(lengths) > 6 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    if len(lengths) * len(depths) <= 120:
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if count[i, j]:
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="keyword recall")
    rec = result.metrics.get("recall", float("nan"))
    ax.set_title(f"{result.suite} [{result.variant}]: recall {rec:.3f}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
