"""Show what a rendering trains: rich text with trained tokens highlighted, or a JSON record."""
from __future__ import annotations

from typing import Any

from rich.text import Text
from transformers import PreTrainedTokenizerBase

from tunelens.chat.render import Rendered


def to_record(r: Rendered, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """``{"text", "tokens", "trained", "trained_text"}``: one JSON-ready record per rendered example."""
    return {
        "text": r.text,
        "tokens": tokenizer.convert_ids_to_tokens(r.input_ids),
        "trained": list(r.trained_mask),
        "trained_text": [tokenizer.decode(r.input_ids[a:b]) for a, b in r.trained_runs()],
    }


def highlight(r: Rendered, style: str = "bold black on green") -> Text:
    """The rendered text with the characters of trained tokens highlighted (template whitespace shown)."""
    out = Text()
    cursor = 0
    for (start, end), trained in zip(r.offsets, r.trained_mask):
        if start > cursor:
            out.append(r.text[cursor:start])
        piece = r.text[max(start, cursor):end]
        out.append(piece, style=style if trained else "")
        cursor = max(cursor, end)
    out.append(r.text[cursor:])
    return out
