"""Helpers every suite shares: the model's length limit, prompts that fit it, continuation token ids."""
from __future__ import annotations

from typing import Any, Sequence

from tunelens.probes.prompts import Prompt, build_prompt, truncate_prompt
from tunelens.probes.settings import ProbeSettings

_UNBOUNDED = 1_000_000


def model_limit(model: Any, tokenizer: Any) -> int:
    """Longest sequence the model handles: its position limit (and the tokenizer's, when that is sane)."""
    limit = getattr(model.config, "max_position_embeddings", None) or _UNBOUNDED
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < _UNBOUNDED:
        limit = min(limit, tok_limit)
    return int(limit)


def fit_prompt(variant: str, parts: Sequence[tuple[str, str]], tokenizer: Any, settings: ProbeSettings,
               limit: int, new_tokens: int, response_prefix: str = "") -> Prompt:
    """Build a prompt; if it exceeds ``limit - new_tokens`` tokens, cut its context (counted, never silent)."""
    budget = min(settings.max_prompt_tokens or limit, limit - new_tokens)
    kwargs = dict(system=settings.system, context_only_instruction=settings.context_only_instruction,
                  indicator=settings.indicator, response_prefix=response_prefix)
    prompt = build_prompt(variant, list(parts), tokenizer, **kwargs)
    if len(prompt) <= budget:
        return prompt
    return truncate_prompt(variant, list(parts), tokenizer, budget, where=settings.truncation, **kwargs)


def continuation_ids(tokenizer: Any, prompt: Prompt, answer: str) -> list[int]:
    """Token ids of ``answer`` as a continuation of ``prompt`` (a space is put before it unless the
    prompt ends in whitespace), taken from the joint tokenization when it extends the prompt's ids."""
    text = answer.strip()
    if prompt.text and not prompt.text[-1].isspace():
        text = " " + text
    full = tokenizer(prompt.text + text, add_special_tokens=False)["input_ids"]
    n = len(prompt.input_ids)
    if full[:n] == prompt.input_ids and len(full) > n:
        return list(full[n:])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def settings_record(settings: ProbeSettings, **extra: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(settings)
    d.pop("progress", None)
    d.update(extra)
    return d
