"""Cleaning: Project Gutenberg header/footer removal and whitespace normalisation."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["CleanConfig", "clean_text", "normalize_whitespace", "strip_gutenberg"]

_START = re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.I | re.M)
_END = re.compile(r"^\s*(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*"
                  r"|End of (?:the )?Project Gutenberg'?s? .*)$", re.I | re.M)
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_SOFT_BREAK = re.compile(r"(?<=\S)\n(?=\S)")


@dataclass
class CleanConfig:
    gutenberg: bool = True  # keep only the text between the START and END markers (when both are there)
    normalize_whitespace: bool = True  # CRLF -> LF, NFC, no trailing spaces, runs of spaces -> one, <= 1 blank line
    unwrap_lines: bool = False  # join hard-wrapped lines inside paragraphs (prose; not verse)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """(text between the Gutenberg START and END marker lines, True) or (text, False) if no START marker."""
    start = _START.search(text)
    if start is None:
        return text, False
    body = text[start.end():]
    end = _END.search(body)
    return (body[:end.start()] if end else body), True


def normalize_whitespace(text: str, unwrap_lines: bool = False) -> str:
    """LF line ends, NFC, no BOM/zero-width chars, single spaces, at most one blank line, stripped ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "").replace("\u200b", "")
    text = unicodedata.normalize("NFC", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = _MANY_NEWLINES.sub("\n\n", "\n".join(lines))
    if unwrap_lines:
        text = _SOFT_BREAK.sub(" ", text)
    return text.strip()


def clean_text(text: str, cfg: CleanConfig) -> str:
    """Apply the configured cleaning steps in order (Gutenberg first: its markers need the raw lines)."""
    if cfg.gutenberg:
        text, _ = strip_gutenberg(text.replace("\r\n", "\n"))
    if cfg.normalize_whitespace:
        text = normalize_whitespace(text, cfg.unwrap_lines)
    return text
