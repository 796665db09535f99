"""Prompt variants for the probes (raw / chat / alpaca / tulu), with per-token roles and context truncation.

Exact formats (``{user}`` is the user content, see below; ``{bos}`` is the tokenizer's BOS *text*, present
only for raw/alpaca/tulu when the tokenizer adds a BOS by default, e.g. Llama-2; the chat variant gets its
BOS, if any, from the chat template itself):

* ``raw``:    ``{bos}[{system}\\n\\n]{user}\\n{prefix}`` — the ``\\n`` is added only if ``{user}`` does not
  already end with one (paper B's "no template" condition).
* ``chat``:   the model's own chat template via :func:`tunelens.chat.render_prompt` (system turn if given,
  one user turn, assistant turn opened), or :data:`tunelens.chat.FALLBACK_TEMPLATE` for base tokenizers,
  then ``{prefix}``.
* ``alpaca``: ``{bos}{preamble}\\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n{prefix}`` where the preamble
  is the Alpaca sentence, or ``{system}`` when given.
* ``tulu``:   ``{bos}[<|system|>\\n{system}\\n]<|user|>\\n{user}\\n<|assistant|>\\n{prefix}``.

User content = the concatenated ``(kind, text)`` pieces (no separators added), then
``"\\n" + CONTEXT_ONLY_INSTRUCTION`` if ``context_only_instruction``, then ``" " + indicator`` if an indicator
(paper B's ``[IND]``) is given; both are part of the user turn.

The prompt text is tokenized once as a whole (``add_special_tokens=False``), so
``tokenizer(prompt.text, add_special_tokens=False).input_ids == prompt.input_ids``; token roles come from the
fast tokenizer's character offsets (a token overlapping user content is 'user', like ``Rendered.token_roles``).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
from transformers import PreTrainedTokenizerBase

from tunelens.errors import ConfigError

__all__ = ["VARIANTS", "PIECE_KINDS", "TRUNCATION_SIDES", "ALPACA_PREAMBLE", "CONTEXT_ONLY_INSTRUCTION", "Prompt",
           "adds_bos", "build_prompt", "observe_prompts", "truncate_prompt"]

VARIANTS = ("raw", "chat", "alpaca", "tulu")
PIECE_KINDS = ("context", "question", "other")
TRUNCATION_SIDES = ("middle", "start")
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
CONTEXT_ONLY_INSTRUCTION = "Answer the question based on the context above only."

UserParts = Union[str, Sequence[tuple[str, str]]]
# Role codes: a token takes the highest code among the characters it covers.
_ROLES = ("template", "prefix", "system", "user")
_CODE = {r: i for i, r in enumerate(_ROLES)}


@dataclass
class Prompt:
    """A built prompt: text, token ids, per-token roles and where the context lies (token range, end exclusive).

    ``token_roles``: 'bos' | 'system' | 'user' | 'template' | 'prefix' per token (context tokens are 'user').
    ``truncated``: number of context tokens removed by :func:`truncate_prompt` (0: none).
    """

    text: str
    input_ids: list[int]
    variant: str
    token_roles: list[str]
    context_token_span: tuple[int, int] | None = None
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


_OBSERVERS: ContextVar[tuple[Callable[["Prompt"], None], ...]] = ContextVar("tunelens_prompt_observers", default=())


@contextmanager
def observe_prompts(callback: Callable[["Prompt"], None]) -> Iterator[None]:
    """Call ``callback(prompt)`` on every prompt :func:`build_prompt` returns while active (e.g. steering
    registers each prompt's user-content tokens)."""
    token = _OBSERVERS.set(_OBSERVERS.get() + (callback,))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def _parts(user: UserParts) -> list[tuple[str, str]]:
    if isinstance(user, str):
        return [("other", user)]
    parts = []
    for i, piece in enumerate(user):
        if not (isinstance(piece, (tuple, list)) and len(piece) == 2 and isinstance(piece[1], str)):
            raise ConfigError(f"user[{i}]: expected a (kind, text) pair, got {piece!r}.")
        if piece[0] not in PIECE_KINDS:
            raise ConfigError(f"user[{i}]: kind {piece[0]!r} is not one of {PIECE_KINDS}.")
        parts.append((piece[0], piece[1]))
    ctx = [i for i, (k, _) in enumerate(parts) if k == "context"]
    if ctx and ctx != list(range(ctx[0], ctx[-1] + 1)):
        raise ConfigError("user: the 'context' pieces must be adjacent (one context span per prompt).")
    return parts


def _user_content(parts: list[tuple[str, str]], context_only_instruction: bool,
                  indicator: str | None) -> tuple[str, tuple[int, int] | None]:
    """The user content and the character range of its context pieces."""
    content, span = "", None
    for kind, text in parts:
        if kind == "context":
            span = (len(content) if span is None else span[0], len(content) + len(text))
        content += text
    if context_only_instruction:
        content += "\n" + CONTEXT_ONLY_INSTRUCTION
    if indicator:
        content += " " + indicator
    return content, span


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True if the tokenizer prepends its BOS when called with its default ``add_special_tokens=True``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special, plain = tokenizer("a").input_ids, tokenizer("a", add_special_tokens=False).input_ids
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def _segments(variant: str, content: str, tokenizer: PreTrainedTokenizerBase,
              system: str | None) -> tuple[str, list[tuple[int, int, str]], int]:
    """Render one variant (without the response prefix): text, (start, end, role) ranges, user content start."""
    if variant == "chat":
        from tunelens.chat import render_prompt

        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        r = render_prompt(messages, tokenizer)
        segs = [(s.char_start, s.char_end, s.role) for s in r.spans]
        user = next(s for s in r.spans if s.role == "user")
        shown = r.text[user.char_start:user.char_end]  # the template may have stripped the content
        return r.text, segs, user.char_start - (len(content) - len(content.lstrip()) if shown != content else 0)
    pieces: list[tuple[str, str]] = []
    if adds_bos(tokenizer):
        pieces.append(("template", tokenizer.bos_token))
    if variant == "raw":
        if system:
            pieces += [("system", system), ("template", "\n\n")]
        pieces += [("user", content), ("template", "" if content.endswith("\n") else "\n")]
    elif variant == "alpaca":
        pieces += [("system", system) if system else ("template", ALPACA_PREAMBLE),
                   ("template", "\n\n### Instruction:\n"), ("user", content), ("template", "\n\n### Response:\n")]
    else:  # tulu
        if system:
            pieces += [("template", "<|system|>\n"), ("system", system), ("template", "\n")]
        pieces += [("template", "<|user|>\n"), ("user", content), ("template", "\n<|assistant|>\n")]
    text, segs, user_start = "", [], 0
    for role, piece in pieces:
        if role == "user":
            user_start = len(text)
        segs.append((len(text), len(text) + len(piece), role))
        text += piece
    return text, segs, user_start


def build_prompt(variant: str, user: UserParts, tokenizer: PreTrainedTokenizerBase, *, system: str | None = None,
                 context_only_instruction: bool = False, indicator: str | None = None,
                 response_prefix: str = "") -> Prompt:
    """Build a prompt in one of :data:`VARIANTS` (formats in the module docstring).

    ``user`` is a string or a list of ``(kind, text)`` pieces, kind in :data:`PIECE_KINDS`; the pieces of
    kind 'context' (adjacent) give ``Prompt.context_token_span``.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown prompt variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("build_prompt needs a fast tokenizer (character offsets); this one is slow.")
    content, ctx_chars = _user_content(_parts(user), context_only_instruction, indicator)
    text, segs, user_start = _segments(variant, content, tokenizer, system)
    if response_prefix:
        segs.append((len(text), len(text) + len(response_prefix), "prefix"))
        text += response_prefix
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    codes = np.zeros(len(text) + 1, dtype=np.int8)
    for start, end, role in segs:
        codes[start:end] = np.maximum(codes[start:end], _CODE[role])
    roles = [_ROLES[int(codes[s:e].max())] if e > s else "template" for s, e in offsets]
    if ids and ids[0] == tokenizer.bos_token_id and roles[0] == "template":
        roles[0] = "bos"
    span = None
    if ctx_chars is not None and ctx_chars[1] > ctx_chars[0]:
        lo, hi = next((s, e) for s, e, role in segs if role == "user")  # the template may have trimmed the content
        a, b = max(lo, user_start + ctx_chars[0]), min(hi, user_start + ctx_chars[1])
        hit = [i for i, (s, e) in enumerate(offsets) if s < b and e > a]
        span = (hit[0], hit[-1] + 1) if hit else None
    prompt = Prompt(text=text, input_ids=ids, variant=variant, token_roles=roles, context_token_span=span)
    for observer in _OBSERVERS.get():
        observer(prompt)
    return prompt


def truncate_prompt(variant: str, user: UserParts, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int, *,
                    where: str = "middle", **build_kwargs) -> Prompt:
    """Build a prompt that fits ``max_prompt_tokens`` by cutting only the *context*.

    Policy: the template, system text, question, other pieces, instruction, indicator and response prefix are
    always kept; tokens are cut from the context — from its middle by default (``where="middle"``: keeps the
    context's opening and ending, as LongBench does; the two halves are joined without a marker), or from its
    start (``where="start"``: keeps the context's ending, nearest to the question). Cuts fall on token
    boundaries of the context tokenized on its own. The number of context tokens removed is returned in
    ``Prompt.truncated`` (0 if the prompt already fit). Raises ConfigError if even an empty context does not fit.
    """
    if where not in TRUNCATION_SIDES:
        raise ConfigError(f"Unknown truncation side {where!r}; choose one of {TRUNCATION_SIDES}.")
    parts = _parts(user)
    prompt = build_prompt(variant, parts, tokenizer, **build_kwargs)
    excess = len(prompt) - max_prompt_tokens
    if excess <= 0:
        return prompt
    idx = [i for i, (k, _) in enumerate(parts) if k == "context"]
    if not idx:
        raise ConfigError(f"The prompt has {len(prompt)} tokens (> {max_prompt_tokens}) and no context to cut; "
                          "pass the user text as (kind, text) pieces with a 'context' piece.")
    context = "".join(parts[i][1] for i in idx)
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    n = len(offsets)
    remove = excess
    while True:
        remove = min(remove, n)
        keep = n - remove
        if where == "start":
            kept = context[offsets[remove][0]:] if keep else ""
        else:
            head, tail = (keep + 1) // 2, keep // 2
            kept = (context[: offsets[head - 1][1]] if head else "") + (context[offsets[n - tail][0]:] if tail else "")
        new_parts = parts[: idx[0]] + [("context", kept)] + parts[idx[-1] + 1:]
        prompt = build_prompt(variant, new_parts, tokenizer, **build_kwargs)
        over = len(prompt) - max_prompt_tokens
        if over <= 0:
            prompt.truncated = remove
            return prompt
        if remove == n:
            raise ConfigError(f"Even without its context the prompt has {len(prompt)} tokens, more than "
                              f"max_prompt_tokens={max_prompt_tokens}; shorten the question or raise the limit.")
        remove += over  # joining the halves can merge tokens differently: cut a little more and retry
