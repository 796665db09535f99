"""Highlighted prompt tokens: from chat turns (content only, template tokens excluded), substrings or character spans.

Two forms reach :func:`tunelens.steer.steer`:

* :class:`Highlight` — a bool mask ``[batch, width]`` aligned with the input ids the model will get (padded
  coordinates, left padding for generation). Built by :func:`encode_highlighted` / :func:`encode_chat`, which
  return the model inputs too.
* :class:`PromptHighlights` — masks keyed by the prompt's (unpadded) token ids; rows are matched by content when
  the prompt runs, so any batching, sorting or padding the caller does is fine (the probes use this).

A substring or span that matches no token, or a prompt with nothing highlighted, is an error: steering that
would silently do nothing is never returned.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from tunelens.errors import ConfigError

__all__ = [
    "USER_ROLES",
    "Highlight",
    "PromptHighlights",
    "chat_user_mask",
    "encode_chat",
    "encode_highlighted",
    "find_substring",
    "tokens_in_char_spans",
]

USER_ROLES = ("user",)
CharSpan = tuple[int, int]


@dataclass
class Highlight:
    """Highlighted key positions per batch row, ``mask`` bool ``[batch, width]`` in the padded coordinates of the
    input ids the prompt runs with (``width`` = the prompt's padded length)."""

    mask: torch.Tensor

    def __post_init__(self) -> None:
        mask = torch.as_tensor(self.mask)
        if mask.dim() != 2:
            raise ConfigError(f"a highlight mask must be [batch, prompt_len], got shape {tuple(mask.shape)}.")
        self.mask = mask.to(torch.bool)
        empty = [i for i in range(mask.shape[0]) if not bool(self.mask[i].any())]
        if empty:
            raise ConfigError(f"highlight rows {empty} select no token: steering them would do nothing.")

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


@dataclass
class PromptHighlights:
    """Highlight masks keyed by prompt token ids (the prompt as the model gets it, without padding)."""

    by_ids: dict[tuple[int, ...], tuple[bool, ...]] = field(default_factory=dict)

    def add(self, input_ids: Sequence[int], mask: Sequence[bool], where: str = "prompt") -> None:
        ids, mask = tuple(int(i) for i in input_ids), tuple(bool(m) for m in mask)
        if len(ids) != len(mask):
            raise ConfigError(f"{where}: highlight mask has {len(mask)} entries for {len(ids)} tokens.")
        if not any(mask):
            raise ConfigError(f"{where}: nothing to highlight (no token selected); steering it would do nothing.")
        old = self.by_ids.get(ids)
        if old is not None and old != mask:
            raise ConfigError(f"{where}: the same prompt was registered twice with different highlights.")
        self.by_ids[ids] = mask

    def lookup(self, input_ids: Sequence[int]) -> tuple[bool, ...]:
        mask = self.by_ids.get(tuple(int(i) for i in input_ids))
        if mask is None:
            raise ConfigError(f"steering: a prompt of {len(input_ids)} tokens was not registered with a highlight "
                              "(PromptHighlights.add it before running it).")
        return mask

    def __len__(self) -> int:
        return len(self.by_ids)


def find_substring(text: str, substring: str, occurrence: int = 0) -> CharSpan:
    """Character span of the ``occurrence``-th (0-based) appearance of ``substring`` in ``text``."""
    if not substring:
        raise ConfigError("an empty substring cannot be highlighted.")
    start = -1
    for _ in range(occurrence + 1):
        start = text.find(substring, start + 1)
        if start < 0:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise ConfigError(f"highlight {substring!r} (occurrence {occurrence}) not found in the prompt {shown!r}.")
    return start, start + len(substring)


def tokens_in_char_spans(offsets: Sequence[tuple[int, int]], spans: Iterable[CharSpan], text_len: int) -> list[bool]:
    """Per token: does it overlap one of the character ``spans``? Each span must cover at least one token."""
    mask = [False] * len(offsets)
    for a, b in spans:
        if not (0 <= a < b <= text_len):
            raise ConfigError(f"character span ({a}, {b}) is empty or outside the prompt's {text_len} characters.")
        hit = [i for i, (s, e) in enumerate(offsets) if s < b and e > a]
        if not hit:
            raise ConfigError(f"character span ({a}, {b}) covers no token of the prompt.")
        for i in hit:
            mask[i] = True
    return mask


def _left_pad(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], pad_id: int,
              device: Any) -> tuple[dict[str, torch.Tensor], Highlight]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    hl = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        n = len(r)
        if n:
            ids[i, width - n:] = torch.tensor(list(r), dtype=torch.long)
            att[i, width - n:] = 1
            hl[i, width - n:] = torch.tensor(list(m), dtype=torch.bool)
    inputs = {"input_ids": ids.to(device), "attention_mask": att.to(device)}
    return inputs, Highlight(hl.to(device))


def _pad_id(tokenizer: Any) -> int:
    for pid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(pid, int):
            return pid
    return 0


Spec = Union[str, CharSpan, Sequence[str | CharSpan]]


def _char_spans(text: str, spec: Spec, occurrence: int) -> list[CharSpan]:
    items = [spec] if isinstance(spec, str) or (isinstance(spec, tuple) and len(spec) == 2
                                                 and all(isinstance(x, int) for x in spec)) else list(spec)
    if not items:
        raise ConfigError("no highlight given for a prompt (empty list of substrings/spans).")
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(find_substring(text, it, occurrence))
        elif isinstance(it, (tuple, list)) and len(it) == 2 and all(isinstance(x, int) for x in it):
            out.append((int(it[0]), int(it[1])))
        else:
            raise ConfigError(f"a highlight is a substring or a (start, end) character span, got {it!r}.")
    return out


def encode_highlighted(tokenizer: Any, texts: str | Sequence[str], highlights: Sequence[Spec], *,
                       occurrence: int = 0, add_special_tokens: bool = True,
                       device: Any = "cpu") -> tuple[dict[str, torch.Tensor], Highlight]:
    """Tokenize ``texts`` (left-padded batch) and highlight, per text, substrings and/or ``(start, end)`` character
    spans (a token overlapping one is highlighted). Returns ``(inputs, Highlight)`` for ``steer``/``generate``."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(highlights) != len(texts):
        raise ConfigError(f"got {len(texts)} prompts but {len(highlights)} highlights; give one per prompt.")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("highlighting substrings needs a fast tokenizer (character offsets).")
    rows, masks = [], []
    for i, (text, spec) in enumerate(zip(texts, highlights)):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        try:
            mask = tokens_in_char_spans(offsets, _char_spans(text, spec, occurrence), len(text))
        except ConfigError as exc:
            raise ConfigError(f"prompt {i}: {exc}") from None
        rows.append(list(enc["input_ids"]))
        masks.append(mask)
    return _left_pad(rows, masks, _pad_id(tokenizer), device)


def chat_user_mask(rendered: Any, bos_token_id: int | None = None, turns: str = "all") -> list[bool]:
    """Tokens of user-turn *contents* in a :class:`tunelens.chat.Rendered` (template tokens excluded);
    ``turns``: ``"all"`` user turns or only the ``"last"`` one."""
    if turns not in ("all", "last"):
        raise ConfigError(f"turns must be 'all' or 'last', got {turns!r}.")
    user = [s for s in rendered.spans if s.role in USER_ROLES and s.token_end > s.token_start]
    if not user:
        raise ConfigError("the conversation has no non-empty user turn to highlight.")
    if turns == "last":
        user = user[-1:]
    mask = [False] * len(rendered.input_ids)
    for s in user:
        for t in range(s.token_start, s.token_end):
            mask[t] = True
    return mask


def encode_chat(tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]], *, turns: str = "all",
                chat_template: str | None = None,
                device: Any = "cpu") -> tuple[dict[str, torch.Tensor], Highlight]:
    """Render each conversation with its chat template, assistant turn opened (:func:`tunelens.chat.render_prompt`),
    and highlight the user turns' content tokens. Returns left-padded ``(inputs, Highlight)``."""
    from tunelens.chat import render_prompt

    rows, masks = [], []
    for i, messages in enumerate(conversations):
        r = render_prompt([dict(m) for m in messages], tokenizer, chat_template=chat_template)
        try:
            masks.append(chat_user_mask(r, turns=turns))
        except ConfigError as exc:
            raise ConfigError(f"conversation {i}: {exc}") from None
        rows.append(r.input_ids)
    return _left_pad(rows, masks, _pad_id(tokenizer), device)
