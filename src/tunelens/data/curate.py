"""Curation by parametric perplexity (Goyal et al., ICLR 2025, §4 and §6).

An example's **parametric perplexity** is the perplexity of its target (the content tokens of its last assistant
turn) under a chosen model when the context is removed from the prompt (the rule is in
:mod:`tunelens.data.context`): ``exp(-mean_t log p(y_t | prompt without context, y_<t))``. A low value means the
target is predictable from memory (or from its own earlier tokens), so the example is *not context-critical*;
such examples cause context-parametric inversion. :func:`curate_by_parametric_perplexity` drops the
``floor(drop_fraction * n)`` examples with the lowest value (ties broken by input position: earlier first),
and reports what it dropped.

The prompt is the no-context conversation rendered with the tokenizer's chat template (``tunelens.chat.render``)
up to the target's first content token; the end-of-turn marker is not part of the target. Scoring is batched
through :func:`tunelens.probes.engine.score_continuations` (deterministic for a fixed batch size).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelens.data.context import ContextSpec, example_id, target_turn, without_context
from tunelens.data.schemas import Example
from tunelens.errors import DataError

__all__ = ["CurationReport", "ExampleScore", "curate_by_parametric_perplexity", "n_to_drop",
           "parametric_perplexities", "select_lowest", "target_request"]


@dataclass
class ExampleScore:
    """Parametric perplexity of one example (``index``: its position in the input)."""

    index: int
    source: str
    id: Any
    parametric_ppl: float
    mean_nll: float  # mean negative log-likelihood per target token (nats); ppl = exp(mean_nll)
    n_target_tokens: int
    had_context: bool
    prompt_truncated: bool = False
    dropped: bool = False


@dataclass
class CurationReport:
    """Kept and dropped examples (input order), every example's score, and the counts."""

    kept: list[Example]
    dropped: list[Example]
    scores: list[ExampleScore]
    drop_fraction: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """The highest parametric perplexity among the dropped examples (None if none was dropped)."""
        dropped = [s.parametric_ppl for s in self.scores if s.dropped]
        return max(dropped) if dropped else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: counts, threshold, score statistics, the dropped examples and every score."""
        ppl = sorted(s.parametric_ppl for s in self.scores)
        return {
            "step": "curate",
            "drop_fraction": self.drop_fraction,
            "n_total": len(self.scores),
            "n_kept": len(self.kept),
            "n_dropped": len(self.dropped),
            "n_without_context": sum(not s.had_context for s in self.scores),
            "n_prompt_truncated": sum(s.prompt_truncated for s in self.scores),
            "threshold_ppl": self.threshold,
            "ppl_quantiles": {q: _quantile(ppl, q) for q in ("0.0", "0.25", "0.5", "0.75", "1.0")},
            "settings": self.settings,
            "dropped": [_brief(s) for s in self.scores if s.dropped],
            "scores": [asdict(s) for s in self.scores],
        }

    def summary(self) -> str:
        t = self.threshold
        return (f"curated {len(self.scores)} examples: kept {len(self.kept)}, dropped {len(self.dropped)} "
                f"(lowest {self.drop_fraction:.0%} parametric perplexity"
                + (f", <= {t:.4g})" if t is not None else ")"))


def _brief(s: ExampleScore) -> dict[str, Any]:
    return {"index": s.index, "id": s.id, "source": s.source, "parametric_ppl": s.parametric_ppl}


def _quantile(sorted_values: list[float], q: str) -> float | None:
    if not sorted_values:
        return None
    pos = float(q) * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def n_to_drop(n: int, drop_fraction: float) -> int:
    """How many of ``n`` examples a ``drop_fraction`` drops: ``floor(drop_fraction * n)`` (never rounds up)."""
    if not 0.0 <= drop_fraction < 1.0:
        raise DataError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    return math.floor(drop_fraction * n + 1e-9)


def select_lowest(values: Sequence[float], drop_fraction: float) -> list[int]:
    """Indices of the ``n_to_drop`` lowest ``values`` (ties: lower index first), in ascending index order."""
    for i, v in enumerate(values):
        if math.isnan(v):
            raise DataError(f"score {i} is NaN; cannot rank it")
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return sorted(order[: n_to_drop(len(values), drop_fraction)])


def target_request(example: Example, tokenizer: PreTrainedTokenizerBase, spec: ContextSpec | None = None, *,
                   chat_template: str | None = None,
                   max_length: int | None = None) -> tuple[list[int], list[int], bool, bool]:
    """(prompt ids without context, target ids, had_context, prompt_truncated) for one example.

    The target is the last assistant turn's content tokens. Over ``max_length`` the prompt loses tokens from
    its start (the target is kept, cut to ``max_length - 1`` tokens if it alone is longer).
    """
    spec = spec or ContextSpec()
    from tunelens.chat import render

    messages, had_context = without_context(example, spec)
    a, _ = target_turn(Example(messages, example.source, example.meta))
    try:
        r = render(messages, tokenizer, train_on="last", chat_template=chat_template)
    except Exception as e:  # TemplateError and tokenizer errors: name the example
        raise DataError(f"{example.source}: cannot render the example without its context: {e}") from e
    span = next(s for s in reversed(r.spans) if s.message_index == a)
    prompt, target = list(r.input_ids[: span.token_start]), list(r.input_ids[span.token_start: span.token_end])
    if not target:
        raise DataError(f"{example.source}: the target (last assistant turn) renders to no tokens")
    if not prompt:
        if tokenizer.bos_token_id is None:
            raise DataError(f"{example.source}: nothing precedes the target and the tokenizer has no BOS token "
                            "to condition on")
        prompt = [tokenizer.bos_token_id]
    truncated = False
    if max_length is not None and len(prompt) + len(target) > max_length:
        target = target[: max_length - 1]
        prompt, truncated = prompt[-(max_length - len(target)):], True
    return prompt, target, had_context, truncated


def parametric_perplexities(examples: Sequence[Example], model: PreTrainedModel,
                            tokenizer: PreTrainedTokenizerBase, *, spec: ContextSpec | None = None,
                            batch_size: int = 8, bf16: bool = False, chat_template: str | None = None,
                            max_length: int | None = None, progress: bool = True) -> list[ExampleScore]:
    """Score every example's target without its context (input order). ``max_length`` defaults to the
    model's ``max_position_embeddings``."""
    spec = spec or ContextSpec()
    from tunelens.probes.engine import ScoreRequest, score_continuations

    if not examples:
        raise DataError("no examples to score")
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    built = [target_request(ex, tokenizer, spec, chat_template=chat_template, max_length=max_length)
             for ex in examples]
    requests = [ScoreRequest(prompt, [target]) for prompt, target, _, _ in built]
    results = score_continuations(model, requests, batch_size=batch_size, bf16=bf16, progress=progress)
    scores = []
    for i, (ex, (_, target, had, trunc), res) in enumerate(zip(examples, built, results)):
        nll = -res[0].logprob / len(target)
        scores.append(ExampleScore(i, ex.source, example_id(ex), math.exp(min(nll, 700.0)), nll, len(target),
                                   had, trunc))
    return scores


def curate_by_parametric_perplexity(examples: Sequence[Example], model: PreTrainedModel,
                                    tokenizer: PreTrainedTokenizerBase, drop_fraction: float = 0.25, *,
                                    batch_size: int = 8, bf16: bool = False, spec: ContextSpec | None = None,
                                    chat_template: str | None = None, max_length: int | None = None,
                                    progress: bool = True) -> CurationReport:
    """Drop the ``floor(drop_fraction * n)`` examples whose target is most predictable without the context.

    Returns a :class:`CurationReport` whose ``kept``/``dropped`` keep the input order. ``spec`` says where the
    context is (default: ``meta['context']``/``meta['question']``; examples without one raise unless
    ``spec.missing == 'as_is'``).
    """
    spec = spec or ContextSpec()
    n_to_drop(len(examples), drop_fraction)  # validate before the (slow) scoring
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    scores = parametric_perplexities(examples, model, tokenizer, spec=spec, batch_size=batch_size, bf16=bf16,
                                     chat_template=chat_template, max_length=max_length, progress=progress)
    drop = set(select_lowest([s.mean_nll for s in scores], drop_fraction))
    for s in scores:
        s.dropped = s.index in drop
    settings = {"batch_size": batch_size, "bf16": bf16, "context_key": spec.context_key,
                "question_key": spec.question_key, "missing": spec.missing, "max_length": max_length,
                "model": getattr(model.config, "_name_or_path", "") or type(model).__name__}
    return CurationReport(kept=[ex for i, ex in enumerate(examples) if i not in drop],
                          dropped=[ex for i, ex in enumerate(examples) if i in drop],
                          scores=scores, drop_fraction=drop_fraction, settings=settings)
