"""Validation of converted records. Errors name the field as spelled in the file."""
from __future__ import annotations

from typing import Any

__all__ = ["ROLES", "RecordError", "check_has_assistant", "check_messages", "check_string"]

ROLES = ("system", "user", "assistant")


class RecordError(Exception):
    """One record is invalid. ``field`` is the offending field (``messages[2].content``) or
    ``None`` for the record as a whole; the loader adds the file and line."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def check_string(value: Any, label: str, *, nonempty: bool = False) -> str:
    """``value`` if it is a string (non-blank when ``nonempty``), else :class:`RecordError`."""
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise RecordError(label, f"must be a string, got {got}")
    if nonempty and not value.strip():
        raise RecordError(label, "is empty")
    return value


def check_messages(messages: list[dict[str, Any]], labels: list[tuple[str, str]], container: str,
                   *, system_allowed: bool = True) -> None:
    """Check roles, content types, system placement and non-empty assistant turns.

    ``labels[i]`` is the (role field, content field) of message ``i`` as named in the file.
    """
    if not messages:
        raise RecordError(container, "is empty: expected at least one message")
    for i, msg in enumerate(messages):
        role_label, content_label = labels[i]
        role = msg["role"]
        if role not in ROLES:
            raise RecordError(role_label, f"unknown role {role!r}; expected one of {list(ROLES)}")
        if role == "system" and (i > 0 or not system_allowed):
            raise RecordError(role_label, "a system message is only allowed as the first message")
        content = msg["content"]
        if not isinstance(content, str):
            got = "null" if content is None else type(content).__name__
            raise RecordError(content_label, f"content must be a string, got {got}")
        if role == "assistant" and not content.strip():
            raise RecordError(content_label, "assistant content is empty")


def check_has_assistant(messages: list[dict[str, str]], label: str) -> None:
    """At least one assistant turn, else there is nothing to train on."""
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(label, "no assistant turn: there is nothing to train on")
