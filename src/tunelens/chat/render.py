"""``render(messages, tokenizer) -> Rendered``: token ids and the assistant-only loss mask, for any template.

How spans are found without ``{% generation %}`` markers: the conversation is rendered twice, once
as is and once with every message content replaced by a unique sentinel. The sentinel rendering
splits into template pieces; walking the real text piece by piece locates each content exactly
(allowing the template to strip/trim it). Token ↔ span membership then comes from the fast
tokenizer's offsets over the real text, so ids are exactly what ``apply_chat_template`` produces.

End of turn: an assistant turn is trained up to and including the first special token the template
emits after its content (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ``<end_of_turn>``, ...), skipping
special tokens that open a turn (those in the generation prompt). If the template emits none after a
turn (e.g. SOLAR, or Qwen1.5 on the last turn), tunelens inserts the template's own end-of-turn token
(learnt from a two-turn probe rendering) or else the tokenizer's EOS, and trains it, so the model
learns to stop.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from tunelens.chat.templates import apply_template, template_for, validate_messages
from tunelens.errors import TemplateError

TRAIN_ON = ("assistant", "last", "all")
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
_ROLE_WORDS = ("user", "assistant", "system", "model", "human", "gpt", "bot")


@dataclass
class Span:
    """Where one message's content sits in the rendered text and tokens (end exclusive)."""

    role: str
    message_index: int
    char_start: int
    char_end: int
    token_start: int = 0
    token_end: int = 0
    end_marker_end: int = -1  # assistant turns: char end of the trained end-of-turn marker (-1: none)
    eot_appended: bool = False  # the marker was inserted by tunelens, not emitted by the template


@dataclass
class Rendered:
    """A rendered conversation: text, token ids, offsets, trained mask and per-message spans."""

    text: str
    input_ids: list[int]
    trained_mask: list[int]
    offsets: list[tuple[int, int]]
    spans: list[Span]
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def token_roles(self, bos_token_id: int | None = None) -> list[str]:
        """Per token: 'system' | 'user' | 'assistant' (message content), 'bos', or 'template'."""
        roles = ["template"] * len(self.input_ids)
        for s in self.spans:
            for t in range(s.token_start, s.token_end):
                roles[t] = s.role
        if bos_token_id is not None and self.input_ids and self.input_ids[0] == bos_token_id:
            roles[0] = "bos"
        return roles

    def trained_runs(self) -> list[tuple[int, int]]:
        """Maximal [start, end) token ranges whose mask is 1."""
        runs, start = [], None
        for i, m in enumerate(self.trained_mask + [0]):
            if m and start is None:
                start = i
            elif not m and start is not None:
                runs.append((start, i))
                start = None
        return runs


def render(
    messages: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    train_on: str = "assistant",
    chat_template: str | None = None,
    add_generation_prompt: bool = False,
) -> Rendered:
    """Render a conversation with the tokenizer's chat template (or ``chat_template``).

    ``train_on``: "assistant" trains every assistant turn (content + end-of-turn marker), "last"
    only the last assistant turn, "all" every token.
    """
    if train_on not in TRAIN_ON:
        raise TemplateError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}.")
    messages = validate_messages(messages)
    template = template_for(tokenizer, chat_template)
    text, spans = locate_contents(messages, tokenizer, template, add_generation_prompt)
    warnings: list[str] = []
    text, spans = _attach_end_markers(text, spans, tokenizer, template, warnings)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    _assign_tokens(spans, offsets)
    mask = _trained_mask(spans, offsets, train_on, len(ids))
    return Rendered(text=text, input_ids=ids, trained_mask=mask, offsets=offsets, spans=spans, warnings=warnings)


def render_prompt(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase,
                  chat_template: str | None = None) -> Rendered:
    """Render a prompt that ends with a user turn and opens the assistant turn (nothing trained)."""
    r = render(messages, tokenizer, train_on="assistant", chat_template=chat_template, add_generation_prompt=True)
    r.trained_mask = [0] * len(r.input_ids)
    return r


def locate_contents(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, template: str,
                    add_generation_prompt: bool) -> tuple[str, list[Span]]:
    """Render ``messages`` and find each non-empty content's character span in the text."""
    real = apply_template(messages, tokenizer, template, add_generation_prompt)
    masked = [dict(m, content=_SENTINEL.format(i) if m["content"] else "") for i, m in enumerate(messages)]
    skeleton = apply_template(masked, tokenizer, template, add_generation_prompt)
    hits = list(_SENTINEL_RE.finditer(skeleton))
    pieces = [skeleton[: hits[0].start()] if hits else skeleton]
    pieces += [skeleton[a.end(): b.start()] for a, b in zip(hits, hits[1:])]
    if hits:
        pieces.append(skeleton[hits[-1].end():])
    if not real.startswith(pieces[0]):
        raise _align_error(messages, None, "the text before the first message differs between renderings")
    pos, spans = len(pieces[0]), []
    for k, hit in enumerate(hits):
        idx = int(hit.group(1))
        content, after = messages[idx]["content"], pieces[k + 1]
        for cand in _content_candidates(content):
            end = pos + len(cand)
            if real.startswith(cand, pos) and real.startswith(after, end) and (k + 1 < len(hits) or
                                                                                end + len(after) == len(real)):
                break
        else:
            raise _align_error(messages, idx, "the template changes the content in a way tunelens cannot align")
        spans.append(Span(messages[idx]["role"], idx, pos, end))
        pos = end + len(after)
    _check_assistant_spans(messages, spans)
    return real, spans


def _content_candidates(content: str) -> list[str]:
    """The content as a template may print it: verbatim or trimmed on either side (longest first)."""
    cands = {content, content.strip(), content.lstrip(), content.rstrip()}
    return sorted(cands, key=len, reverse=True)


def _align_error(messages, idx, why: str) -> TemplateError:
    where = f"message {idx} ({messages[idx]['role']})" if idx is not None else "the conversation"
    return TemplateError(f"Could not align {where} with the chat template's output: {why}. "
                         "Check the template, or pass --chat-template with one that prints contents verbatim.")


def _check_assistant_spans(messages, spans: list[Span]) -> None:
    seen: dict[int, int] = {}
    for s in spans:
        seen[s.message_index] = seen.get(s.message_index, 0) + 1
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m["content"]:
            continue
        if seen.get(i, 0) == 0:
            raise TemplateError(f"messages[{i}] (assistant) does not appear in the rendered text; the template "
                                "drops it, so it cannot be trained.")
        if seen[i] > 1:
            raise TemplateError(f"messages[{i}] (assistant) appears {seen[i]} times in the rendered text; "
                                "tunelens cannot tell which copy to train.")


def _attach_end_markers(text: str, spans: list[Span], tok: PreTrainedTokenizerBase, template: str,
                        warnings: list[str]) -> tuple[str, list[Span]]:
    """Set each assistant span's end-of-turn marker, inserting one where the template emits none."""
    starts = _turn_start_tokens(tok, template)
    special = _special_tokens(tok) - starts
    inserted = 0
    for i, s in enumerate(spans):
        s.char_start += inserted
        s.char_end += inserted
        if s.role != "assistant":
            continue
        limit = spans[i + 1].char_start + inserted if i + 1 < len(spans) else len(text)
        marker_end = _first_special_end(text, s.char_end, limit, special)
        if marker_end is None:
            eot = _template_end_token(tok, template) or tok.eos_token
            if not eot:
                warnings.append(f"messages[{s.message_index}]: no end-of-turn token and no EOS to append; "
                                "the model will not learn to stop.")
                continue
            text = text[: s.char_end] + eot + text[s.char_end:]
            inserted += len(eot)
            marker_end, s.eot_appended = s.char_end + len(eot), True
        s.end_marker_end = marker_end
    return text, spans


def _first_special_end(text: str, start: int, limit: int, special: frozenset[str]) -> int | None:
    """Char end of the earliest special token string in text[start:limit], or None."""
    best = None
    for tok_str in special:
        j = text.find(tok_str, start, limit)
        if j >= 0 and (best is None or j < best[0] or (j == best[0] and len(tok_str) > best[1])):
            best = (j, len(tok_str))
    return None if best is None else best[0] + best[1]


def _special_tokens(tok: PreTrainedTokenizerBase) -> frozenset[str]:
    names = set(tok.all_special_tokens)
    names.update(t.content for t in tok.added_tokens_decoder.values() if t.special)
    # a separate pad token never closes a turn; when pad doubles as EOS/BOS (a common fallback) it stays
    pad = tok.pad_token if tok.pad_token not in (tok.eos_token, tok.bos_token) else None
    return frozenset(n for n in names if n and n != pad and n != getattr(tok, "unk_token", None))




def _turn_start_tokens(tok: PreTrainedTokenizerBase, template: str) -> frozenset[str]:
    """Special tokens that open a turn, never end-of-turn markers.

    A special token opens a turn if it names a role (``<|user|>``, ``<|assistant|>``), or if it is
    one of several special tokens between a user turn and the assistant's reply other than the first
    (the first closes the user turn: ``<|im_end|>`` in ``<|im_end|>\n<|im_start|>assistant\n``).
    """
    return _cached_turn_starts(id(tok), template, _special_tokens(tok), tok)


@lru_cache(maxsize=64)
def _cached_turn_starts(_tok_id: int, template: str, special: frozenset[str], tok) -> frozenset[str]:
    starts = {s for s in special if any(w in s.lower() for w in _ROLE_WORDS)}
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    try:
        text, spans = locate_contents(probe, tok, template, False)
    except TemplateError:
        return frozenset(starts)
    between = text[spans[0].char_end: spans[1].char_start]
    found = sorted((between.find(s), s) for s in special if s in between)
    if len(found) >= 2:
        starts.update(s for _, s in found[1:])
    return frozenset(starts)


def _template_end_token(tok: PreTrainedTokenizerBase, template: str) -> str | None:
    """The special token a template closes a non-final assistant turn with, from a two-turn probe."""
    return _cached_end_token(id(tok), template, tok)


@lru_cache(maxsize=64)
def _cached_end_token(_tok_id: int, template: str, tok) -> str | None:
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    try:
        text, spans = locate_contents(probe, tok, template, False)
    except TemplateError:
        return None
    special = _special_tokens(tok) - _turn_start_tokens(tok, template)
    first = next(s for s in spans if s.role == "assistant")
    nxt = next(s for s in spans if s.message_index == 2)
    end = _first_special_end(text, first.char_end, nxt.char_start, special)
    if end is None:
        return None
    return next(t for t in sorted(special, key=len, reverse=True) if text.endswith(t, 0, end))


def _assign_tokens(spans: list[Span], offsets: list[tuple[int, int]]) -> None:
    """Token ranges of each span: tokens overlapping its characters (a token may straddle a boundary)."""
    ends = [e for _, e in offsets]
    for s in spans:
        s.token_start = bisect.bisect_right(ends, s.char_start)
        t = s.token_start
        while t < len(offsets) and offsets[t][0] < s.char_end:
            t += 1
        s.token_end = t


def _trained_mask(spans: list[Span], offsets: list[tuple[int, int]], train_on: str, n: int) -> list[int]:
    if train_on == "all":
        return [1] * n
    assistant = [s for s in spans if s.role == "assistant"]
    if train_on == "last":
        assistant = assistant[-1:]
    mask = [0] * n
    for s in assistant:
        end_char = max(s.char_end, s.end_marker_end)
        t = s.token_start
        while t < n and offsets[t][0] < end_char:
            mask[t] = 1
            t += 1
    return mask
