"""Ancestral sampling with a KV cache, and sequence log-probabilities of continuations.

:func:`sample` draws continuations from a causal LM exactly as the model defines them (temperature 1, no
top-k/top-p: the policy whose gradient is estimated must be the one sampled), stopping a row at an EOS token
(kept as the last token: its probability is part of log π(x)) or after ``max_new_tokens``. It returns the
log-probability of every sampled continuation as computed while sampling. Row i's token t is drawn by inverse
CDF from the uniform ``U[i, t]`` of one (n, max_new_tokens) matrix, so a row's draw does not depend on which
other rows share its micro-batch or process: a data-parallel run that gives each process a slice of the global
matrix samples exactly what one process would. :func:`sequence_logprobs` scores given continuations with one
teacher-forced forward per micro-batch (with or without gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelens.align.samples import Context, Samples
from tunelens.probes.engine import autocast_context, decode_step, left_pad, model_device, pad_token_id


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


@dataclass
class Sampled:
    samples: Samples
    logprob: torch.Tensor  # (n,) float64, log q(x|c) of the sampling model


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], eos: set[int]) -> str:
    body = list(ids[:-1]) if ids and ids[-1] in eos else list(ids)
    return tokenizer.decode(body, skip_special_tokens=True)


@torch.no_grad()
def sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, contexts: Sequence[Context], *,
           max_new_tokens: int, batch_size: int = 64, bf16: bool = False,
           generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> Sampled:
    """One continuation per entry of ``contexts`` (repeat a context to draw several), in input order.

    ``uniforms``: the (len(contexts), max_new_tokens) float64 matrix of U(0, 1) draws to use; by default it is
    drawn from ``generator``.
    """
    device, pad, eos = model_device(model), pad_token_id(model, tokenizer), eos_ids(model, tokenizer)
    if uniforms is None:
        uniforms = torch.rand(len(contexts), max_new_tokens, dtype=torch.float64, generator=generator)
    elif tuple(uniforms.shape) != (len(contexts), max_new_tokens):
        raise ValueError(f"uniforms has shape {tuple(uniforms.shape)}, expected ({len(contexts)}, {max_new_tokens})")
    tokens: list[list[int]] = []
    logps: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with autocast_context(device, bf16):
            for i in range(0, len(contexts), batch_size):
                chunk = contexts[i:i + batch_size]
                t, lp = _sample_batch(model, [list(c.prompt_ids) for c in chunk], max_new_tokens, eos, pad, device,
                                      uniforms[i:i + batch_size])
                tokens.extend(t)
                logps.append(lp)
    finally:
        model.train(was_training)
    texts = [decode(tokenizer, t, eos) for t in tokens]
    lp = torch.cat(logps) if logps else torch.zeros(0, dtype=torch.float64)
    return Sampled(Samples(list(contexts), tokens, texts), lp)


def _sample_batch(model: PreTrainedModel, prompts: list[list[int]], max_new: int, eos: set[int], pad: int,
                  device: torch.device, uniforms: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    n = len(prompts)
    out: list[list[int]] = [[] for _ in range(n)]
    logp = torch.zeros(n, dtype=torch.float64)
    ids, mask, pos = left_pad(prompts, pad, device)
    res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, plen = res.past_key_values, mask.sum(-1)
    logits = res.logits[:, -1].float()
    active = list(range(n))
    eos_t = torch.tensor(sorted(eos), device=device) if eos else None
    for step in range(max_new):
        lsm = torch.log_softmax(logits, -1)
        # inverse-CDF draw: one uniform per row (torch.multinomial and per-token noise are ~20x slower on CPU)
        cdf = torch.cumsum(lsm.double().exp(), -1)
        u = uniforms[active, step].unsqueeze(1).to(device) * cdf[:, -1:]
        nxt = torch.searchsorted(cdf, u).squeeze(1).clamp(max=cdf.shape[-1] - 1)
        tok_lp = lsm.gather(-1, nxt.unsqueeze(-1)).squeeze(-1).double().cpu()
        keep = []
        for k, row in enumerate(active):
            tok = int(nxt[k])
            out[row].append(tok)
            logp[row] += tok_lp[k]
            if not (eos_t is not None and tok in eos):
                keep.append(k)
        if not keep or step == max_new - 1:
            break
        logits, cache, mask, plen, active = decode_step(model, cache, nxt, mask, plen, step, active, keep)
    return out, logp


def sequence_logprobs(model: Any, contexts: Sequence[Context], continuations: Sequence[Sequence[int]], *,
                      pad_id: int, bf16: bool = False, grad: bool = False) -> torch.Tensor:
    """Σ_t log π(x_t | c, x_<t) per continuation (float32 on the model's device; float64 on CPU without grad).

    Sequences are left-padded so every continuation ends at the last position; only the last
    ``max_len + 1`` positions' logits are computed. Empty continuations score 0.
    """
    device = model_device(model)
    full = [list(c.prompt_ids) + list(x) for c, x in zip(contexts, continuations)]
    lens = torch.tensor([len(x) for x in continuations], device=device)
    width = int(lens.max()) if len(lens) else 0
    if width == 0:
        return torch.zeros(len(full), device=device)
    ids, mask, pos = left_pad(full, pad_id, device)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, autocast_context(device, bf16):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=width + 1).logits
    logits = logits[:, :-1].float()  # position j predicts token j+1: (B, width, V) predicts the last width tokens
    targets = ids[:, -width:]
    lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    valid = torch.arange(width, device=device).unsqueeze(0) >= (width - lens).unsqueeze(1)
    out = (lp * valid).sum(-1)
    return out if grad else out.double().cpu()


def score_in_batches(model: Any, samples: Samples, *, pad_id: int, batch_size: int, bf16: bool) -> torch.Tensor:
    """:func:`sequence_logprobs` without gradient over a whole batch of samples, in micro-batches."""
    parts = []
    for i in range(0, len(samples), batch_size):
        parts.append(sequence_logprobs(model, samples.contexts[i:i + batch_size], samples.token_ids[i:i + batch_size],
                                       pad_id=pad_id, bf16=bf16))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
