"""Record schemas: turn one raw record (a dict) into chat messages.

Four schemas are understood, named by the canonical fields they need:

* ``messages``: ``messages`` (list of ``{role, content}``) or ShareGPT ``conversations``
  (list of ``{from, value}`` with ``human``/``gpt``/``system``);
* ``prompt_completion``: ``prompt`` and ``completion``, each a string or a list of messages;
* ``alpaca``: ``instruction``, optional ``input``, ``output``;
* ``context_qa``: ``context``, ``question``, ``answer`` (or SQuAD-style ``answers``).

A field mapping ``{canonical_name: name_in_file}`` (dotted names reach into nested dicts)
renames a file's fields onto the canonical ones. Problems raise :class:`RecordError`
naming the field as it is spelled in the file; the loader adds the file and line.
"""
from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunelens.data.validate import RecordError, check_has_assistant, check_messages, check_string
from tunelens.errors import DataError

__all__ = [
    "CANONICAL_FIELDS",
    "DEFAULT_CONTEXT_TEMPLATE",
    "SCHEMAS",
    "Example",
    "FieldMap",
    "RecordError",
    "detect_schema",
    "record_to_example_parts",
    "resolve_schema_name",
]

DEFAULT_CONTEXT_TEMPLATE = "{context}\n\n{question}"

#: schema name -> (required canonical fields, alternatives: any one of them is enough)
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "messages": ((), ("messages", "conversations")),
    "prompt_completion": (("prompt", "completion"), ()),
    "alpaca": (("instruction", "output"), ()),
    "context_qa": (("context", "question"), ("answer", "answers")),
}
_ALIASES = {"sharegpt": "messages", "conversations": "messages", "instruction": "alpaca",
            "cqa": "context_qa", "squad": "context_qa"}
CANONICAL_FIELDS = ("messages", "conversations", "prompt", "completion", "instruction", "input",
                    "output", "context", "question", "answer", "answers", "role", "content")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "system": "system"}
MISSING = object()  # returned by get_path for an absent field


@dataclass
class Example:
    """One training conversation.

    ``source`` locates the record (``"path:line"`` for JSONL/CSV, ``"path:#index"`` for
    record-indexed formats). ``meta`` holds the record's fields that were not used to build
    the messages; for ``context_qa`` it also holds the resolved ``context``, ``question`` and
    ``answer`` strings, and for ``alpaca`` records with a non-empty ``input`` the ``context`` (= input)
    and ``question`` (= instruction) (curation needs them; see :mod:`tunelens.data.context`).
    """

    messages: list[dict[str, str]]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_schema_name(name: str) -> str:
    """Canonical schema name for ``name`` (aliases accepted); ``ValueError`` if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SCHEMAS and key != "auto":
        raise ValueError(f"unknown schema {name!r}; expected 'auto' or one of {sorted(SCHEMAS)}")
    return key


def get_path(record: Mapping[str, Any], name: str) -> Any:
    """Value at ``name`` in ``record``; dotted names descend dicts (and lists by index)."""
    if name in record:
        return record[name]
    cur: Any = record
    for part in name.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return MISSING
    return cur


class FieldMap:
    """Maps canonical field names onto the names used in a file (``{"output": "response"}``)."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        self.fields = dict(fields or {})
        unknown = sorted(set(self.fields) - set(CANONICAL_FIELDS))
        if unknown:
            raise DataError(f"fields: unknown canonical name(s) {unknown}; "
                            f"the mapping is {{canonical_name: name_in_file}} with canonical names "
                            f"{list(CANONICAL_FIELDS)}")
        for canon, src in self.fields.items():
            if not isinstance(src, str) or not src:
                raise DataError(f"fields[{canon!r}] must be a non-empty string, got {src!r}")

    def label(self, canon: str) -> str:
        """The field's name as spelled in the file (for error messages)."""
        return self.fields.get(canon, canon)

    def apply(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Record with the canonical names filled in from the mapped ones."""
        out = dict(record)
        for canon, src in self.fields.items():
            if canon in ("role", "content"):
                continue
            value = get_path(record, src)
            if value is not MISSING:
                out[canon] = value
            elif canon in out and canon != src:
                del out[canon]  # a mapped name that is absent must not fall back to a same-named key
        return out

    def consumed(self, canon_names: list[str], record: Mapping[str, Any]) -> set[str]:
        """Top-level keys of ``record`` that the given canonical fields were read from."""
        return {self.fields.get(c, c) for c in canon_names} & set(record)


def _missing_for(keys: set[str], schema: str) -> list[str]:
    required, any_of = SCHEMAS[schema]
    missing = [k for k in required if k not in keys]
    if any_of and not any(k in keys for k in any_of):
        missing.append("|".join(any_of))
    return missing


def detect_schema(mapped: Mapping[str, Any]) -> str:
    """Schema whose fields ``mapped`` (a record after field mapping) has; DataError-ready
    ``RecordError`` listing the keys seen and the schemas expected otherwise."""
    keys = set(mapped)
    for name in SCHEMAS:  # dict order is the precedence order
        if not _missing_for(keys, name):
            return name
    closest = max(SCHEMAS, key=lambda s: _n_present(keys, s))
    hint = (f" Closest: {closest} (missing {_missing_for(keys, closest)})."
            if _n_present(keys, closest) else "")
    expected = "; ".join(f"{name} ({_describe(name)})" for name in SCHEMAS)
    raise RecordError(
        None,
        f"cannot detect the schema: keys seen {sorted(keys)}; expected one of: {expected}.{hint} "
        f"Map your names with fields={{canonical_name: name_in_file}} "
        f"(e.g. fields={{'context': 'passage'}}) or pass schema=... explicitly",
    )


def _n_present(keys: set[str], schema: str) -> int:
    required, any_of = SCHEMAS[schema]
    return sum(k in keys for k in required) + any(k in keys for k in any_of)


def _describe(schema: str) -> str:
    required, any_of = SCHEMAS[schema]
    parts = list(required) + (["|".join(any_of)] if any_of else [])
    if schema == "alpaca":
        parts.append("[input]")
    return ", ".join(parts)


def _as_answer(value: Any, label: str) -> str:
    """Answer text from a string, bool (yes/no), number, list (first) or ``{"text": ...}``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, Mapping):
        if "text" not in value:
            raise RecordError(label, f"answer object has no 'text' key (keys: {sorted(value)})")
        return _as_answer(value["text"], f"{label}.text")
    if isinstance(value, (list, tuple)):
        if not value:
            raise RecordError(label, "answer list is empty")
        return _as_answer(value[0], f"{label}[0]")
    raise RecordError(label, f"must be a string, a list of strings or {{'text': [...]}}, "
                             f"got {type(value).__name__}")


def _convert_message_list(value: Any, label: str, fmap: FieldMap, *,
                          system_allowed: bool = True) -> list[dict[str, str]]:
    """``[{role, content}]`` or ShareGPT ``[{from, value}]`` -> validated canonical messages."""
    if not isinstance(value, list):
        raise RecordError(label, f"must be a list of messages, got {type(value).__name__}")
    out: list[dict[str, str]] = []
    labels: list[tuple[str, str]] = []
    for i, msg in enumerate(value):
        where = f"{label}[{i}]"
        if not isinstance(msg, Mapping):
            raise RecordError(where, f"must be an object with role and content, got {type(msg).__name__}")
        rk = fmap.fields.get("role") or ("from" if "from" in msg and "role" not in msg else "role")
        ck = fmap.fields.get("content") or ("value" if "value" in msg and "content" not in msg else "content")
        for key in (rk, ck):
            if key not in msg:
                raise RecordError(f"{where}.{key}", f"missing (keys: {sorted(msg)})")
        role = msg[rk]
        if not isinstance(role, str):
            raise RecordError(f"{where}.{rk}", f"must be a string, got {type(role).__name__}")
        if rk != "role":  # ShareGPT speakers (human/gpt/system) or a mapped role field
            if role.lower() not in _SHAREGPT_ROLES:
                raise RecordError(f"{where}.{rk}", f"unknown speaker {role!r}; expected one of "
                                                   f"{sorted(_SHAREGPT_ROLES)}")
            role = _SHAREGPT_ROLES[role.lower()]
        out.append({"role": role, "content": msg[ck]})
        labels.append((f"{where}.{rk}", f"{where}.{ck}"))
    check_messages(out, labels, label, system_allowed=system_allowed)
    return out


def _text_or_messages(value: Any, label: str, role: str, fmap: FieldMap) -> list[dict[str, str]]:
    if isinstance(value, str):
        if role == "assistant" and not value.strip():
            raise RecordError(label, "is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _convert_message_list(value, label, fmap, system_allowed=role != "assistant")
    raise RecordError(label, f"must be a string or a list of messages, got {type(value).__name__}")


def _fill_template(template: str, mapped: Mapping[str, Any], values: dict[str, str]) -> str:
    kwargs = dict(values)
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in kwargs:
            extra = mapped.get(name, MISSING)
            if extra is MISSING:
                raise RecordError(name, "used by context_template but missing from the record")
            kwargs[name] = "" if extra is None else str(extra)
    return template.format(**kwargs)


_Parts = tuple[list[dict[str, str]], list[str], dict[str, Any]]


def _from_messages(mapped: Mapping[str, Any], fmap: FieldMap, template: str) -> _Parts:
    key = "messages" if "messages" in mapped else "conversations"
    return _convert_message_list(mapped[key], fmap.label(key), fmap), [key], {}


def _from_prompt_completion(mapped: Mapping[str, Any], fmap: FieldMap, template: str) -> _Parts:
    messages = (_text_or_messages(mapped["prompt"], fmap.label("prompt"), "user", fmap)
                + _text_or_messages(mapped["completion"], fmap.label("completion"), "assistant", fmap))
    check_has_assistant(messages, fmap.label("completion"))
    return messages, ["prompt", "completion"], {}


def _from_alpaca(mapped: Mapping[str, Any], fmap: FieldMap, template: str) -> _Parts:
    instruction = check_string(mapped["instruction"], fmap.label("instruction"))
    inp = mapped.get("input")
    inp = "" if inp is None else check_string(inp, fmap.label("input"))
    output = check_string(mapped["output"], fmap.label("output"), nonempty=True)
    user = instruction + ("\n\n" + inp if inp.strip() else "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    extra = {"context": inp, "question": instruction} if inp.strip() else {}  # curation's context rule
    return messages, ["instruction", "input", "output"], extra


def _from_context_qa(mapped: Mapping[str, Any], fmap: FieldMap, template: str) -> _Parts:
    ctx = check_string(mapped["context"], fmap.label("context"))
    question = check_string(mapped["question"], fmap.label("question"))
    akey = "answer" if "answer" in mapped else "answers"
    answer = _as_answer(mapped[akey], fmap.label(akey))
    if not answer.strip():
        raise RecordError(fmap.label(akey), "answer is empty")
    user = _fill_template(template, mapped, {"context": ctx, "question": question})
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages, ["context", "question", akey], {"context": ctx, "question": question, "answer": answer}


_CONVERTERS = {"messages": _from_messages, "prompt_completion": _from_prompt_completion,
               "alpaca": _from_alpaca, "context_qa": _from_context_qa}


def record_to_example_parts(
    mapped: Mapping[str, Any], schema: str, fmap: FieldMap, *,
    system: str | None = None, context_template: str = DEFAULT_CONTEXT_TEMPLATE,
) -> _Parts:
    """(messages, canonical fields used, extra meta) for one mapped record.

    Raises :class:`RecordError` naming the offending field as spelled in the file.
    """
    missing = _missing_for(set(mapped), schema)
    if missing:
        label = "|".join(fmap.label(x) for x in missing[0].split("|"))
        raise RecordError(label, f"missing (schema {schema} needs {_describe(schema)}; keys: {sorted(mapped)})")
    messages, used, extra = _CONVERTERS[schema](mapped, fmap, context_template)
    check_has_assistant(messages, fmap.label(used[0]))
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages, used, extra
