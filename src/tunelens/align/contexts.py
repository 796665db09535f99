"""Build the conditioning contexts (prompts) of an alignment run from its :class:`ContextConfig`."""
from __future__ import annotations

from typing import Any

from tunelens.align.config import ContextConfig
from tunelens.align.samples import Context
from tunelens.errors import ConfigError


def _start_token(tokenizer: Any) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if isinstance(tid, int):
            return tid
    raise ConfigError("contexts.source=none needs a tokenizer with a BOS or EOS token to start sampling from.")


def _window(seq: list, cfg: ContextConfig) -> list:
    stop = cfg.offset + cfg.limit if cfg.limit else None
    return list(seq[cfg.offset:stop])


def build_contexts(cfg: ContextConfig, tokenizer: Any) -> list[Context]:
    """The run's contexts, in a fixed order (their index is the key of Ẑ_c and of per-context baselines)."""
    if cfg.source == "none":
        return [Context(0, (_start_token(tokenizer),), "")]
    from tunelens.probes.prompts import build_prompt

    if cfg.source == "texts":
        if not cfg.texts:
            raise ConfigError("contexts.source=texts needs contexts.texts (a list of prompts).")
        texts = _window(cfg.texts, cfg)
        if not texts:
            raise ConfigError(f"contexts: no texts left from offset {cfg.offset} (of {len(cfg.texts)}).")
        out = []
        for i, text in enumerate(texts):
            p = build_prompt(cfg.variant, text, tokenizer, system=cfg.system)
            out.append(Context(i, tuple(p.input_ids), p.text))
        return out
    if cfg.source == "conflicts":
        from tunelens.probes.items import load_conflicts

        items = _window(load_conflicts(cfg.path or "world_facts",
                                       limit=cfg.offset + cfg.limit if cfg.limit else None), cfg)
        if not items:
            raise ConfigError(f"contexts: no conflict items in {cfg.path or 'world_facts'!r} from offset {cfg.offset}.")
        out = []
        for i, it in enumerate(items):
            parts = [("other", "Context: "), ("context", it.context), ("other", "\nQuestion: "), ("question", it.question)] \
                if it.question else [("context", it.context)]
            prefix = "Answer:" if cfg.variant == "raw" and it.question else ""
            p = build_prompt(cfg.variant, parts, tokenizer, system=cfg.system, response_prefix=prefix)
            out.append(Context(i, tuple(p.input_ids), p.text,
                               {"answer": it.answer, "memory_answer": it.memory_answer, "id": it.id}))
        return out
    raise ConfigError(f"Unknown contexts.source {cfg.source!r}.")
