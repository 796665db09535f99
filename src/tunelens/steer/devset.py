"""The dev-set objective head selection optimises: the knowledge-conflict log-likelihood margin.

For each conflict item (context that contradicts memory), the prompt is the probes' conflicts prompt (same
variant, same user turn: ``Context: ...\\nQuestion: ...``) and the objective is the mean over items of
``log p(context answer | prompt) - log p(memory answer | prompt)`` (summed token log-probs) — the smooth version of
the probes' ``ctx_pref_rate``. Highlight: the prompt's user-content tokens (what ``--steer`` highlights).

One batch = both answers of several items as rows ``[left pad, prompt, answer, right pad]``: all prompts end at
the same column ``W``, so one :class:`~tunelens.steer.Highlight` of width ``W`` covers them and the answers lie
beyond it (never scaled).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from tunelens.errors import ConfigError
from tunelens.steer.spans import Highlight

__all__ = ["DevBatch", "DevSet", "build_devset", "load_dev_items"]


@dataclass
class DevBatch:
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, position_ids: [2n, W + A]
    highlight: Highlight  # [2n, W]
    prompt_only: dict[str, torch.Tensor]  # left-padded prompts [n, W] (attention capture)
    prompt_highlight: Highlight  # [n, W]
    targets: torch.Tensor  # [2n, W + A] token ids to score at each position (-100: none)


@dataclass
class DevSet:
    """Dev prompts and answer pairs in batches; ``margin`` evaluates the objective."""

    batches: list[DevBatch]
    n_items: int
    variant: str
    prompts: list[Any]  # probes Prompt objects
    answers: list[tuple[list[int], list[int]]]
    bf16: bool = False  # run forwards under bf16 autocast (log-softmax in fp32)

    def answer_logprobs(self, model: Any, batch: DevBatch) -> torch.Tensor:
        """Summed log-prob of each row's answer, ``[2n]`` (rows: ctx0, mem0, ctx1, mem1, ...)."""
        device = batch.inputs["input_ids"].device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = model(**batch.inputs).logits[:, :-1].float()
        tgt = batch.targets[:, 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * (tgt >= 0)).sum(-1)

    def margin(self, model: Any, context: Callable[[DevBatch], ContextManager] | None = None,
               grad: bool = False) -> torch.Tensor:
        """Mean ``log p(ctx) - log p(mem)`` over the items; ``context(batch)`` wraps each forward (e.g. steering).
        With ``grad=True`` the result keeps the graph (parameters' grads are not needed and not computed)."""
        total = torch.zeros(())
        for batch in self.batches:
            ctx = context(batch) if context is not None else _null()
            with ctx, torch.set_grad_enabled(grad):
                lp = self.answer_logprobs(model, batch)
                total = total + (lp[0::2] - lp[1::2]).sum()
        return total / self.n_items


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def load_dev_items(spec: str, n: int, skip: int = 0) -> list[Any]:
    """Conflict items for selection: ``spec`` is a conflicts suite (``capitals``, ``world_facts`` or a file),
    items ``skip .. skip+n``."""
    from tunelens.probes.items import load_conflicts

    items = load_conflicts(spec, limit=skip + n)[skip:]
    if not items:
        raise ConfigError(f"dev set {spec!r} has no items after skipping {skip}.")
    return items


def build_devset(tokenizer: Any, items: Sequence[Any], variant: str = "chat", batch_size: int = 8,
                 device: Any = "cpu", bf16: bool = False) -> DevSet:
    """Prompts (the probes' conflicts prompts in ``variant``) and answer token ids, batched."""
    from tunelens.probes.prompts import build_prompt
    from tunelens.probes.suites.common import continuation_ids
    from tunelens.probes.suites.conflicts import _parts, _prefix

    prompts, answers = [], []
    for it in items:
        p = build_prompt(variant, _parts(it), tokenizer, response_prefix=_prefix(variant, it))
        prompts.append(p)
        answers.append((continuation_ids(tokenizer, p, it.answer), continuation_ids(tokenizer, p, it.memory_answer)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = [_batch(prompts[i:i + batch_size], answers[i:i + batch_size], pad, device)
               for i in range(0, len(prompts), batch_size)]
    return DevSet(batches, len(prompts), variant, prompts, answers, bf16)


def _batch(prompts: Sequence[Any], answers: Sequence[tuple[list[int], list[int]]], pad: int, device: Any) -> DevBatch:
    width = max(len(p.input_ids) for p in prompts)
    ans = max(max(len(a), len(b)) for a, b in answers)
    rows = 2 * len(prompts)
    ids = torch.full((rows, width + ans), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    tgt = torch.full_like(ids, -100)
    hl = torch.zeros((rows, width), dtype=torch.bool)
    for i, (p, pair) in enumerate(zip(prompts, answers)):
        user = torch.tensor([r == "user" for r in p.token_roles])
        if not bool(user.any()):
            raise ConfigError("a dev prompt has no user-content token to highlight.")
        n = len(p.input_ids)
        for j, answer in enumerate(pair):
            r = 2 * i + j
            ids[r, width - n:width] = torch.tensor(p.input_ids)
            ids[r, width:width + len(answer)] = torch.tensor(answer, dtype=torch.long)
            att[r, width - n:width + len(answer)] = 1
            tgt[r, width:width + len(answer)] = torch.tensor(answer, dtype=torch.long)
            hl[r, width - n:] = user
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": ids.to(device), "attention_mask": att.to(device), "position_ids": pos.to(device)}
    p_ids, p_att = ids[0::2, :width], att[0::2, :width]
    prompt_only = {"input_ids": p_ids.to(device), "attention_mask": p_att.to(device),
                   "position_ids": (p_att.cumsum(-1) - 1).clamp(min=0).to(device)}
    return DevBatch(inputs, Highlight(hl.to(device)), prompt_only, Highlight(hl[0::2].to(device)), tgt.to(device))
