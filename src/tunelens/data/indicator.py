"""Conditional fine-tuning with a context-dependency indicator (Wang et al. 2024, §3).

**Score.** For each assistant turn ``m`` of an example, rendered with the chat template, a seed model's attention
at one (middle) layer gives ``s_m = mean_{y in Y_m} max_h sum_{u in U_{<m}} A_h(y, u)``: ``Y_m`` are the turn's
response tokens (content tokens; template tokens, whitespace-only tokens and special tokens are left out), ``U``
the content tokens of every user turn before it (system and template tokens are not user tokens), ``A_h`` the
attention probabilities of head ``h`` (raw mass, not renormalised). Attention is read through
:func:`tunelens.probes.attention_capture.intercept_attention` (SDPA or eager models alike), only at the chosen
layer; the forward pass stops right after it.

**Indicator.** A turn with ``s_m > beta`` gets ``" [IND]"`` appended to the user turn before it: exactly the
user-turn suffix ``tunelens.probes.prompts.build_prompt(..., indicator="[IND]")`` adds at evaluation time
(:data:`INDICATOR_SEPARATOR` + token). :func:`add_indicator_token` adds the token to the tokenizer as a special
token and grows the model's embeddings (and an untied output head) by one initialised row.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelens.data.context import example_id
from tunelens.data.schemas import Example
from tunelens.errors import ConfigError, DataError

__all__ = ["INDICATOR_SEPARATOR", "INDICATOR_TOKEN", "ExampleDependency", "IndicatorReport", "TurnScore",
           "add_indicator_token", "append_indicator", "apply_indicator", "context_dependency_scores",
           "default_layer", "indicate"]

INDICATOR_TOKEN = "[IND]"
INDICATOR_SEPARATOR = " "  # tunelens.probes.prompts appends " " + indicator to the user content


@dataclass
class TurnScore:
    """One assistant turn's context-dependency score; ``user_index`` is where the indicator would go."""

    assistant_index: int
    user_index: int | None
    score: float  # NaN when the turn has no response tokens or no user tokens precede it
    n_response_tokens: int
    n_user_tokens: int
    flagged: bool = False


@dataclass
class ExampleDependency:
    """Per-turn scores of one example (``index``: its position in the input)."""

    index: int
    source: str
    id: Any
    turns: list[TurnScore]

    @property
    def flagged(self) -> bool:
        return any(t.flagged for t in self.turns)


@dataclass
class IndicatorReport:
    """Indicated examples (input order), every score, and the flagged shares."""

    examples: list[Example]
    scores: list[ExampleDependency]
    beta: float
    token: str
    layer: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged_turn_share(self) -> float:
        turns = [t for s in self.scores for t in s.turns if not math.isnan(t.score)]
        return sum(t.flagged for t in turns) / len(turns) if turns else 0.0

    @property
    def flagged_example_share(self) -> float:
        return sum(s.flagged for s in self.scores) / len(self.scores) if self.scores else 0.0

    def to_dict(self) -> dict[str, Any]:
        vals = sorted(t.score for s in self.scores for t in s.turns if not math.isnan(t.score))
        return {
            "step": "indicate", "beta": self.beta, "token": self.token, "layer": self.layer,
            "n_examples": len(self.scores), "n_turns": sum(len(s.turns) for s in self.scores),
            "n_unscored_turns": sum(math.isnan(t.score) for s in self.scores for t in s.turns),
            "n_flagged_turns": sum(t.flagged for s in self.scores for t in s.turns),
            "n_flagged_examples": sum(s.flagged for s in self.scores),
            "flagged_turn_share": self.flagged_turn_share, "flagged_example_share": self.flagged_example_share,
            "score_mean": sum(vals) / len(vals) if vals else None,
            "score_median": vals[len(vals) // 2] if vals else None,
            "settings": self.settings,
            "flagged": [{"index": s.index, "id": s.id, "source": s.source,
                         "turns": [t.assistant_index for t in s.turns if t.flagged]} for s in self.scores if s.flagged],
            "scores": [{"index": s.index, "id": s.id, "source": s.source, "turns": [_json_turn(t) for t in s.turns]}
                       for s in self.scores],
        }

    def summary(self) -> str:
        return (f"indicated {len(self.scores)} examples at layer {self.layer}, beta={self.beta}: "
                f"{self.flagged_turn_share:.1%} of turns ({self.flagged_example_share:.1%} of examples) "
                f"got {self.token}")


def _json_turn(t: TurnScore) -> dict[str, Any]:
    d = asdict(t)
    d["score"] = None if math.isnan(t.score) else t.score  # strict JSON has no NaN
    return d


# --------------------------------------------------------------------------- the token

def add_indicator_token(model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
                        token: str = INDICATOR_TOKEN, *, init_from: str | None = None) -> int:
    """Add ``token`` as a special token and give the model an embedding row for it; returns its id.

    The new input-embedding row is the mean of the existing rows (``init_from=None``), or the mean of the
    rows of ``init_from``'s tokens (e.g. ``"context"``); an untied output head gets the same treatment on its
    own rows (and bias). Rows of other tokens are unchanged; tied weights stay tied. Idempotent: if the
    tokenizer already has the token, its id is returned and the model is only grown if it lacks the row.
    ``model=None`` changes only the tokenizer.
    """
    from tokenizers import AddedToken

    if not token or token != token.strip():
        raise ConfigError(f"indicator token must be non-empty without surrounding spaces, got {token!r}")
    had = token in tokenizer.get_vocab()
    if not had:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False)],
                             special_tokens=True)
    tid = tokenizer.convert_tokens_to_ids(token)
    if tokenizer(token, add_special_tokens=False).input_ids != [tid]:
        raise ConfigError(f"the tokenizer does not encode {token!r} as the single token {tid}")
    if model is None:
        return tid
    emb = model.get_input_embeddings()
    n_old = emb.weight.shape[0]
    if had and tid < n_old:
        return tid
    init_ids = None
    if init_from is not None:
        init_ids = [i for i in tokenizer(init_from, add_special_tokens=False).input_ids if i < n_old]
        if not init_ids:
            raise ConfigError(f"init_from={init_from!r} encodes to no existing token")
    if tid >= n_old:
        model.resize_token_embeddings(tid + 1, mean_resizing=False)
    _init_row(model.get_input_embeddings().weight, tid, n_old, init_ids)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        _init_row(out.weight, tid, n_old, init_ids)
        bias = getattr(out, "bias", None)
        if bias is not None:
            _init_row(bias, tid, n_old, init_ids)
    return tid


@torch.no_grad()
def _init_row(weight: torch.Tensor, tid: int, n_old: int, init_ids: list[int] | None) -> None:
    src = [i for i in range(n_old) if i != tid] if init_ids is None else init_ids
    weight[tid] = weight[torch.tensor(src, device=weight.device)].float().mean(0).to(weight.dtype)


def append_indicator(content: str, token: str = INDICATOR_TOKEN) -> str:
    """User content with the indicator suffix, as the probes build it (``content + " " + token``)."""
    return content + INDICATOR_SEPARATOR + token


# --------------------------------------------------------------------------- the score

def default_layer(model: PreTrainedModel) -> int:
    """The middle layer: ``num_hidden_layers // 2``."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(cfg, "num_hidden_layers", None)
    if not n:
        raise ConfigError(f"{type(model).__name__}: config has no num_hidden_layers; pass layer=...")
    return n // 2


@dataclass
class _Turn:
    assistant_index: int
    user_index: int | None
    response: list[int]  # token positions
    user: list[int]


def _turns(example: Example, tokenizer: PreTrainedTokenizerBase, chat_template: str | None,
           max_length: int | None) -> tuple[list[int], list[_Turn]]:
    from tunelens.chat import render
    from tunelens.chat.render import _special_tokens

    try:
        r = render(example.messages, tokenizer, train_on="assistant", chat_template=chat_template)
    except Exception as e:
        raise DataError(f"{example.source}: cannot render the example: {e}") from e
    special_ids = set(tokenizer.convert_tokens_to_ids(sorted(_special_tokens(tokenizer))))
    ids = list(r.input_ids)
    n = len(ids) if max_length is None else min(len(ids), max_length)
    turns, user_pos, last_user = [], [], None
    for s in sorted(r.spans, key=lambda s: s.token_start):
        pos = [t for t in range(s.token_start, min(s.token_end, n))]
        if s.role == "user":
            user_pos += pos
            last_user = s.message_index
        elif s.role == "assistant":
            resp = [t for t in pos if ids[t] not in special_ids
                    and r.text[r.offsets[t][0]:r.offsets[t][1]].strip()]
            turns.append(_Turn(s.message_index, last_user, resp, [p for p in user_pos if p < n]))
    return ids[:n], turns


class _StopForward(Exception):
    """Raised by the handler once the chosen layer was read: the rest of the forward pass is not needed."""


class _UserMass:
    """Attention handler: at one layer, per query row, the max over heads of the attention mass on user keys."""

    def __init__(self, layer: int, user_mask: torch.Tensor, row_chunk: int = 128):
        self.layer, self.user_mask, self.row_chunk = layer, user_mask, row_chunk
        self.calls = 0
        self.result: torch.Tensor | None = None

    def reset(self) -> None:
        self.calls = 0

    def __call__(self, call: Any) -> None:
        from tunelens.probes.attention_capture import attention_probs

        idx = call.layer if call.layer is not None else self.calls
        self.calls += 1
        if idx != self.layer:
            return
        q = call.query_len
        mask = self.user_mask.to(call.query.device)[:, None, None, :call.kv_len]  # [B, 1, 1, K]
        parts = []
        for lo in range(0, q, self.row_chunk):
            rows = torch.arange(lo, min(q, lo + self.row_chunk), device=call.query.device)
            probs = attention_probs(call, rows)  # [B, H, r, K]
            parts.append((probs * mask).sum(-1).amax(1))  # [B, r]
        self.result = torch.cat(parts, dim=1)
        raise _StopForward


def _user_mass(model: PreTrainedModel, batch: list[list[int]], users: list[list[int]], layer: int,
               bf16: bool) -> tuple[torch.Tensor, list[int]]:
    """[B, width] per-position user mass and each row's left-pad offset."""
    from tunelens.probes.attention_capture import intercept_attention
    from tunelens.probes.engine import autocast_context, left_pad, model_device, pad_token_id

    device = model_device(model)
    ids, mask, pos = left_pad(batch, pad_token_id(model), device)
    width = ids.shape[1]
    offsets = [width - len(s) for s in batch]
    umask = torch.zeros((len(batch), width))
    for b, (off, u) in enumerate(zip(offsets, users)):
        if u:
            umask[b, torch.tensor(u) + off] = 1.0
    handler = _UserMass(layer, umask)
    with intercept_attention(model, handler), autocast_context(device, bf16), torch.inference_mode():
        try:
            model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        except _StopForward:
            pass
    if handler.result is None:
        raise ConfigError(f"{type(model).__name__}: no attention call at layer {layer} (the model has fewer "
                          f"layers, or its attention calls carry no layer index)")
    return handler.result.float().cpu(), offsets


def context_dependency_scores(examples: Sequence[Example], model: PreTrainedModel,
                              tokenizer: PreTrainedTokenizerBase, *, layer: int | None = None,
                              batch_size: int = 4, bf16: bool = False, chat_template: str | None = None,
                              max_length: int | None = None, progress: bool = True) -> list[ExampleDependency]:
    """Per example (input order), per assistant turn, the context-dependency score ``s_m`` (module docstring).

    ``layer`` defaults to :func:`default_layer`; sequences longer than ``max_length`` (default: the model's
    ``max_position_embeddings``) are cut, and only the tokens kept count.
    """
    from tunelens.progress import progress_bar

    if not examples:
        raise DataError("no examples to score")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    layer = default_layer(model) if layer is None else layer
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    built = [_turns(ex, tokenizer, chat_template, max_length) for ex in examples]
    out: list[ExampleDependency | None] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: (-len(built[i][0]), i))
    was_training = model.training
    model.eval()
    try:
        with progress_bar(len(examples), "context dependency", enabled=progress) as bar:
            for lo in range(0, len(order), batch_size):
                idx = order[lo:lo + batch_size]
                users = [sorted({p for t in built[i][1] for p in t.user}) for i in idx]
                mass, offs = _user_mass(model, [built[i][0] for i in idx], users, layer, bf16)
                for b, i in enumerate(idx):
                    out[i] = _example_scores(examples[i], i, built[i][1], mass[b], offs[b])
                bar.advance(len(idx))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _example_scores(ex: Example, index: int, turns: list[_Turn], mass: torch.Tensor, off: int) -> ExampleDependency:
    scores = []
    for t in turns:
        # only user tokens before the turn's first response token count (later ones are masked anyway)
        n_user = sum(p < (t.response[0] if t.response else 0) for p in t.user)
        ok = bool(t.response) and n_user > 0
        val = float(mass[torch.tensor(t.response) + off].mean()) if ok else float("nan")
        scores.append(TurnScore(t.assistant_index, t.user_index, val, len(t.response), n_user))
    return ExampleDependency(index, ex.source, example_id(ex), scores)


# --------------------------------------------------------------------------- flag and insert

def apply_indicator(examples: Sequence[Example], scores: Sequence[ExampleDependency], beta: float,
                    token: str = INDICATOR_TOKEN) -> list[Example]:
    """Copies of ``examples`` where each turn with ``score > beta`` has the indicator appended to its user turn.

    Sets ``TurnScore.flagged``; flagged examples get ``meta['indicator'] = True`` (False otherwise).
    """
    if len(scores) != len(examples):
        raise DataError(f"{len(scores)} scores for {len(examples)} examples")
    out = []
    for ex, dep in zip(examples, scores):
        msgs = [dict(m) for m in ex.messages]
        for t in dep.turns:
            t.flagged = (not math.isnan(t.score)) and t.score > beta and t.user_index is not None
            if t.flagged and not msgs[t.user_index]["content"].endswith(INDICATOR_SEPARATOR + token):
                msgs[t.user_index]["content"] = append_indicator(msgs[t.user_index]["content"], token)
        out.append(Example(msgs, ex.source, {**ex.meta, "indicator": dep.flagged}))
    return out


def indicate(examples: Sequence[Example], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
             beta: float = 0.6, *, token: str = INDICATOR_TOKEN, layer: int | None = None, batch_size: int = 4,
             bf16: bool = False, chat_template: str | None = None, max_length: int | None = None,
             progress: bool = True) -> IndicatorReport:
    """Score ``examples`` with the seed ``model`` and append ``token`` to the user turns scoring above ``beta``.

    The seed model and tokenizer are not changed; call :func:`add_indicator_token` on the model to fine-tune.
    """
    layer = default_layer(model) if layer is None else layer
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    scores = context_dependency_scores(examples, model, tokenizer, layer=layer, batch_size=batch_size, bf16=bf16,
                                       chat_template=chat_template, max_length=max_length, progress=progress)
    indicated = apply_indicator(examples, scores, beta, token)
    settings = {"batch_size": batch_size, "bf16": bf16, "max_length": max_length,
                "model": getattr(model.config, "_name_or_path", "") or type(model).__name__}
    return IndicatorReport(indicated, scores, beta, token, layer, settings)
