"""Attention steering toward highlighted prompt tokens (PASTA, Zhang et al. 2023; user-turn steering, Wang et al.
2024) through transformers' ``AttentionInterface`` — SDPA or eager, any model that uses the interface.

``with steer(model, highlight, heads="all", alpha=0.9): model.generate(**inputs)``; highlights from chat turns
(:func:`encode_chat`), substrings or character spans (:func:`encode_highlighted`), or keyed by prompt ids
(:class:`PromptHighlights`); heads from "all", a ``{"layer": [heads]}`` file, profiling (:func:`profile_heads`) or
one-pass attribution (:func:`select_heads`).
"""
from tunelens.steer.context import Steering, check_alpha, steer
from tunelens.steer.heads import HeadSet, model_shape, resolve_heads
from tunelens.steer.spans import (
                                  Highlight,
                                  PromptHighlights,
                                  chat_user_mask,
                                  encode_chat,
                                  encode_highlighted,
                                  find_substring,
                                  tokens_in_char_spans,
)

__all__ = ["HeadSet", "Highlight", "PromptHighlights", "Steering", "chat_user_mask", "check_alpha", "encode_chat",
           "encode_highlighted", "find_substring", "model_shape", "resolve_heads", "steer", "tokens_in_char_spans"]
