"""Probe items and their loaders: knowledge conflicts, MemoTrap and context QA.

Three item types, each a plain dataclass (``dataclasses.asdict`` gives JSON):

* :class:`ConflictItem` -- a counterfactual ``context`` whose ``answer`` contradicts the
  real-world (parametric) ``memory_answer`` ([A]'s CF_World_Facts, CF_Capitals, CF_Bio);
* :class:`MemoTrapItem` -- a prompt and two continuations, ``classes[answer_index]`` follows
  the instruction, the other is the memorised ending ([A]'s CF_Quotes);
* :class:`ContextQAItem` -- a passage, a question and gold answers (SQuAD / XQuAD, BoolQ).

Every loader takes a ``spec``: a built-in name from :data:`BUILTIN_SUITES` (files under the
shared data directory, see :func:`shared_data_dir`) or the path of a user file (JSON list,
JSONL or CSV; SQuAD JSON for context QA) with an optional field mapping
``{our_field: field_in_file}``; dotted names reach into nested objects. Items come in file
order, with stable ids ``<name>:<key>`` where ``<name>`` is the built-in name (or the file's
stem) and ``<key>`` the record's own ``id`` field when it has one, else its 0-based position.

Every problem raises :class:`~tunelens.errors.DataError` naming the file, the place in it
(``line N`` -- the physical line where a JSONL/CSV record starts -- or ``record N (0-based
record index)`` for JSON lists and SQuAD files) and the field as spelled in the file.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tunelens.data.readers import RawRecord
from tunelens.data.schemas import MISSING, get_path
from tunelens.errors import DataError
from tunelens.probes.builtin_suites import (
    BUILTIN_SUITES,
    SHARED_DATA_ENV,
    builtin_path,
    shared_data_dir,
    suite_kind,
)
from tunelens.probes.item_reading import (
    _err,
    _Ids,
    _item_id,
    _label,
    _norm_key,
    _records,
    _resolve,
    _Source,
    _text,
)

__all__ = [
    "BUILTIN_SUITES",
    "SHARED_DATA_ENV",
    "ConflictItem",
    "ContextQAItem",
    "MemoTrapItem",
    "builtin_path",
    "load_conflicts",
    "load_contextqa",
    "load_memotrap",
    "shared_data_dir",
    "suite_kind",
]



# --------------------------------------------------------------------------- items

@dataclass(frozen=True)
class ConflictItem:
    """A context that contradicts memory: ``answer`` is the context's, ``memory_answer`` the world's."""

    id: str
    context: str
    question: str
    answer: str
    memory_answer: str
    source: str


@dataclass(frozen=True)
class MemoTrapItem:
    """A MemoTrap prompt; ``classes[answer_index]`` follows the instruction, the other is memorised."""

    id: str
    prompt: str
    classes: list[str]
    answer_index: int
    source: str

    @property
    def answer(self) -> str:
        """The instruction-following continuation (as stored, leading space included)."""
        return self.classes[self.answer_index]

    @property
    def memory_answers(self) -> list[str]:
        """The other continuation(s): the memorised ending(s)."""
        return [c for i, c in enumerate(self.classes) if i != self.answer_index]

    def to_conflict(self) -> ConflictItem:
        """This item in the conflict schema: context = prompt, question = "", answers stripped.

        Only for two-class items; the memorised class becomes ``memory_answer``.
        """
        if len(self.classes) != 2:
            raise DataError(f"{self.source}: item {self.id} has {len(self.classes)} classes; "
                            f"the conflict schema needs exactly two")
        return ConflictItem(self.id, self.prompt, "", self.answer.strip(), self.memory_answers[0].strip(),
                            self.source)


@dataclass(frozen=True)
class ContextQAItem:
    """A passage, a question about it and the accepted answers (never empty)."""

    id: str
    context: str
    question: str
    answers: list[str]
    source: str


# --------------------------------------------------------------------------- conflicts

_CONFLICT_FIELDS = ("id", "context", "question", "answer", "memory_answer")


def load_conflicts(spec: str | Path, *, fields: Mapping[str, str] | None = None, limit: int | None = None,
                   shared_dir: str | Path | None = None) -> list[ConflictItem]:
    """Knowledge-conflict items from a built-in (``world_facts``, ``capitals``) or a user file.

    ``fields`` maps our field names (``context``, ``question``, ``answer``, ``memory_answer``,
    ``id``) onto the file's, e.g. ``{"memory_answer": "parametric_answer"}``; without a
    mapping, a missing ``memory_answer`` falls back to ``parametric_answer`` ([A]'s CF_Bio
    spelling). Answers must be non-empty after SQuAD normalisation (not only articles or
    punctuation), and the two answers must differ after it, or containment cannot tell them apart.
    ``limit`` keeps the first N items.
    """
    src = _resolve(spec, "conflict", fields, _CONFLICT_FIELDS, shared_dir)
    ids, out = _Ids(), []
    for index, raw in _records(src, limit):
        context = _text(src, raw, "context")
        question = _text(src, raw, "question")
        answer = _text(src, raw, "answer")
        memory = _text(src, raw, "memory_answer", aliases=("parametric_answer",))
        na, nm = _norm_key(answer), _norm_key(memory)
        for ours, value, norm in (("answer", answer, na), ("memory_answer", memory, nm)):
            if not norm:
                raise _err(raw.loc, _label(src, ours),
                           f"{value!r} is empty after normalisation (only articles/punctuation); "
                           f"containment scoring cannot use it")
        if na == nm:
            raise _err(raw.loc, _label(src, "memory_answer"),
                       f"{memory!r} equals the context answer {answer!r} after normalisation; "
                       f"a conflict item needs two different answers")
        item_id = ids.add(_item_id(src, raw, index), raw.loc, src)
        out.append(ConflictItem(item_id, context, question, answer, memory, src.source))
    return out


# --------------------------------------------------------------------------- MemoTrap

_MEMOTRAP_FIELDS = ("id", "prompt", "classes", "answer_index")
_MAX_LITERAL_CHARS = 100_000


def _parse_classes(src: _Source, raw: RawRecord) -> list[str]:
    name = _label(src, "classes")
    value = get_path(raw.value, name)
    if value is MISSING:
        raise _err(raw.loc, name, f"missing; the record has fields {sorted(str(k) for k in raw.value)}")
    if isinstance(value, str):
        if len(value) > _MAX_LITERAL_CHARS:
            raise _err(raw.loc, name, f"literal is too long ({len(value)} characters)")
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            reason = getattr(e, "msg", None) or type(e).__name__
            raise _err(raw.loc, name, f"not a Python/JSON list literal of strings ({reason}): "
                                      f"{value!r:.80}") from None
    if not isinstance(value, (list, tuple)):
        raise _err(raw.loc, name, f"must be a list of strings, got {type(value).__name__}")
    if len(value) < 2:
        raise _err(raw.loc, name, f"needs at least two classes, got {len(value)}")
    for i, c in enumerate(value):
        if not isinstance(c, str):
            raise _err(raw.loc, f"{name}[{i}]", f"must be a string, got {type(c).__name__}")
        if not c.strip():
            raise _err(raw.loc, f"{name}[{i}]", "is empty")
    if len(set(value)) != len(value):
        raise _err(raw.loc, name, f"classes are not distinct: {list(value)!r}")
    return list(value)


def _parse_index(src: _Source, raw: RawRecord, n_classes: int) -> int:
    name = _label(src, "answer_index")
    value = get_path(raw.value, name)
    if value is MISSING:
        raise _err(raw.loc, name, f"missing; the record has fields {sorted(str(k) for k in raw.value)}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(raw.loc, name, f"must be an integer, got {value!r}")
    if not 0 <= value < n_classes:
        raise _err(raw.loc, name, f"{value} is out of range for {n_classes} classes")
    return value


def load_memotrap(spec: str | Path = "memotrap", *, fields: Mapping[str, str] | None = None,
                  limit: int | None = None, shared_dir: str | Path | None = None) -> list[MemoTrapItem]:
    """MemoTrap items: built-ins ``memotrap`` (936-row prize release), ``memotrap_proverb_ending``,
    ``memotrap_proverb_translation``, ``memotrap_hate_speech_ending``,
    ``memotrap_history_of_science_qa``, or a user file with ``prompt``, ``classes`` (a list,
    or its Python literal as in the CSVs; parsed with :func:`ast.literal_eval`) and
    ``answer_index`` (our names; map others with ``fields``).
    """
    src = _resolve(spec, "memotrap", fields, _MEMOTRAP_FIELDS, shared_dir)
    ids, out = _Ids(), []
    for index, raw in _records(src, limit):
        prompt = _text(src, raw, "prompt")
        classes = _parse_classes(src, raw)
        answer_index = _parse_index(src, raw, len(classes))
        item_id = ids.add(_item_id(src, raw, index), raw.loc, src)
        out.append(MemoTrapItem(item_id, prompt, classes, answer_index, src.source))
    return out


# --------------------------------------------------------------------------- context QA

_CONTEXTQA_FIELDS = ("id", "context", "question", "answers", "answer")


def _answers(src: _Source, raw: RawRecord) -> list[str]:
    """Gold answers from ``answers`` (list of strings / SQuAD ``{text}`` objects / HF
    ``{"text": [...]}``) or ``answer`` (string, list, or a bool -> "yes"/"no")."""
    chosen = None
    for ours in ("answers", "answer"):
        name = _label(src, ours)
        value = get_path(raw.value, name)
        if value is not MISSING and (value is not None or ours in src.fields):
            chosen = (name, value)
            break
        if ours in src.fields:
            raise _err(raw.loc, name, f"missing (mapped to {ours!r}); the record has fields "
                                      f"{sorted(str(k) for k in raw.value)}")
    if chosen is None:
        raise _err(raw.loc, "answers", f"missing (neither 'answers' nor 'answer'); the record has fields "
                                       f"{sorted(str(k) for k in raw.value)}; map one with fields=")
    name, value = chosen
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, Mapping):  # HF squad: {"text": [...], "answer_start": [...]}
        if "text" not in value:
            raise _err(raw.loc, name, "an answers object needs a 'text' key")
        name, value = f"{name}.text", value["text"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        got = "null" if items is None else type(items).__name__
        raise _err(raw.loc, name, f"must be a string, a bool or a list of answers, got {got}")
    if not items:
        raise _err(raw.loc, name, "no answers (empty list)")
    out: list[str] = []
    for i, a in enumerate(items):
        label = name if isinstance(value, str) else f"{name}[{i}]"
        if isinstance(a, Mapping):
            a, label = a.get("text", MISSING), f"{label}.text"
            if a is MISSING:
                raise _err(raw.loc, label, "missing")
        if isinstance(a, bool):
            a = "yes" if a else "no"
        if not isinstance(a, str):
            raise _err(raw.loc, label, f"must be a string, got {'null' if a is None else type(a).__name__}")
        if not a.strip():
            raise _err(raw.loc, label, "is empty")
        if a not in out:
            out.append(a)
    return out


def load_contextqa(spec: str | Path, *, fields: Mapping[str, str] | None = None, limit: int | None = None,
                   shared_dir: str | Path | None = None) -> list[ContextQAItem]:
    """Context-QA items: built-ins ``xquad`` (SQuAD v1.1 format, ids are the SQuAD ids) and
    ``boolq`` (``passage``/``question``/bool ``answer`` -> ``["yes"]``/``["no"]``), or a user
    file: SQuAD JSON, or records with ``context``, ``question`` and ``answers``/``answer``
    (our names; map others with ``fields``, e.g. ``{"context": "passage"}``).
    Duplicate gold answers are dropped, order kept.
    """
    src = _resolve(spec, "contextqa", fields, _CONTEXTQA_FIELDS, shared_dir)
    ids, out = _Ids(), []
    for index, raw in _records(src, limit):
        context = _text(src, raw, "context")
        question = _text(src, raw, "question")
        answers = _answers(src, raw)
        item_id = ids.add(_item_id(src, raw, index), raw.loc, src)
        out.append(ContextQAItem(item_id, context, question, answers, src.source))
    return out
