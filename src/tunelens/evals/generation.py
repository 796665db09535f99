"""Answering prompts with a model under its chat template, and the well-terminated rate.

A prompt is rendered as one user turn (plus an optional system turn) with the tokenizer's chat template, or
tunelens' fallback template for base models (see :mod:`tunelens.chat.templates`), then decoded greedily by
:func:`tunelens.probes.engine.generate_greedy`. An answer is *well-terminated* when the model emitted its EOS /
end-of-turn token before ``max_new_tokens``; stopping at a user-given stop string is counted separately.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tunelens.chat import render_prompt
from tunelens.probes.engine import generate_greedy


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    batch_size: int = 8
    bf16: bool = False
    system: str | None = None
    stop_strings: tuple[str, ...] = ()
    chat_template: str | None = None
    progress: bool = True


@dataclass
class Answer:
    text: str
    n_tokens: int
    stopped: str  # eos | stop_string | length
    prompt_tokens: int


def prompt_messages(user: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def answer_prompts(model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings) -> list[Answer]:
    """Greedy answers to ``prompts`` (user-turn texts), in order."""
    return answer_conversations(model, tokenizer, [prompt_messages(p, settings.system) for p in prompts], settings)


def answer_conversations(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                         settings: GenerationSettings) -> list[Answer]:
    """Greedy answers to conversations that end with a user turn, in order."""
    ids = [render_prompt(c, tokenizer, settings.chat_template).input_ids for c in conversations]
    gens = generate_greedy(model, tokenizer, ids, max_new_tokens=settings.max_new_tokens,
                           stop_strings=settings.stop_strings, batch_size=settings.batch_size, bf16=settings.bf16,
                           progress=settings.progress)
    return [Answer(g.text, len(g.token_ids), g.stopped, len(i)) for g, i in zip(gens, ids)]


def termination_stats(answers: Sequence[Answer]) -> dict[str, float]:
    """Rates of ``eos`` (well-terminated), ``stop_string`` and ``length`` stops, and the mean answer length."""
    n = len(answers)
    if n == 0:
        return {"n": 0, "well_terminated_rate": float("nan"), "stop_string_rate": float("nan"),
                "length_limit_rate": float("nan"), "mean_answer_tokens": float("nan")}
    count = {why: sum(a.stopped == why for a in answers) for why in ("eos", "stop_string", "length")}
    return {"n": n, "well_terminated_rate": count["eos"] / n, "stop_string_rate": count["stop_string"] / n,
            "length_limit_rate": count["length"] / n, "mean_answer_tokens": sum(a.n_tokens for a in answers) / n}
