"""Steering inside probe runs: every prompt the probes build is steered toward its user-turn content.

:func:`steer_probes` (used by :func:`tunelens.probes.run` when ``settings.steer`` is set) resolves the heads
(running the selection for ``heads=auto``), records what was steered in ``settings.steer``, and, while active,
registers each prompt built by :func:`tunelens.probes.prompts.build_prompt` in a :class:`PromptHighlights`
(highlight = tokens whose role is ``user``: user content only, template/system/response-prefix tokens excluded).
The engine's batches are matched to their prompts by content, so its sorting, padding, row dropping and cache
forks need no change.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunelens.probes.prompts import Prompt, observe_prompts
from tunelens.steer.context import steer
from tunelens.steer.spans import PromptHighlights
from tunelens.steer.spec import parse_steer_spec, select_spec_heads

__all__ = ["steer_probes"]


@contextmanager
def steer_probes(model: Any, tokenizer: Any, settings: Any) -> Iterator[dict[str, Any]]:
    """Steer every probe prompt built while active; yields (and stores in ``settings.steer``) the record."""
    spec = parse_steer_spec(settings.steer)
    heads, selection = select_spec_heads(model, tokenizer, spec, progress=getattr(settings, "progress", True),
                                         bf16=bool(getattr(settings, "bf16", False)))
    record = spec.to_dict()
    record.update(resolved_heads=heads.to_json(), n_heads=len(heads), highlight="user turn content")
    if selection is not None:
        record["selection"] = selection
    settings.steer = record
    highlights = PromptHighlights()

    def register(prompt: Prompt) -> None:
        highlights.add(prompt.input_ids, [r == "user" for r in prompt.token_roles],
                       where=f"{prompt.variant} prompt {prompt.text[:60]!r}")

    with observe_prompts(register), steer(model, highlights, heads=heads, alpha=spec.alpha,
                                          scale_generated=spec.scale_generated) as st:
        yield record
    record["steered_forwards"] = st.forwards
