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
import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelens.data.schemas import MISSING, get_path
from tunelens.data.readers import FORMATS, Location, RawRecord, read_records
from tunelens.errors import DataError

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

#: Environment variable naming the shared data directory (the folder holding ``conflicts/`` ...).
SHARED_DATA_ENV = "TUNELENS_SHARED_DATA"


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


# --------------------------------------------------------------------------- built-ins

@dataclass(frozen=True)
class _Builtin:
    kind: str  # "conflict" | "memotrap" | "contextqa" | "haystack"
    path: str  # relative to the shared data directory
    description: str
    fields: Mapping[str, str] = field(default_factory=dict)


_BUILTINS: dict[str, _Builtin] = {
    "world_facts": _Builtin(
        "conflict", "conflicts/world_facts.json",
        "CF_World_Facts [A]: 313 counterfactual world-fact passages (answer vs memory_answer); "
        "its first 196 items are exactly 'capitals'"),
    "capitals": _Builtin(
        "conflict", "conflicts/country_capitals_only.json",
        "CF_Capitals [A]: 196 counterfactual capital-city passages (= the first 196 of 'world_facts')"),
    "memotrap": _Builtin(
        "memotrap", "conflicts/memo_trap_prize_release.jsonl",
        "MemoTrap / CF_Quotes [A]: the 936-item Inverse Scaling Prize release (proverb ending + "
        "hate-speech ending)"),
    "memotrap_proverb_ending": _Builtin(
        "memotrap", "conflicts/memo_trap_proverb_ending.csv", "MemoTrap part 1, proverb ending (860 rows)"),
    "memotrap_proverb_translation": _Builtin(
        "memotrap", "conflicts/memo_trap_proverb_translation.csv",
        "MemoTrap part 2, proverb translation (843 rows)"),
    "memotrap_hate_speech_ending": _Builtin(
        "memotrap", "conflicts/memo_trap_hate_speech_ending.csv",
        "MemoTrap part 3, hate-speech ending (100 rows; offensive phrases by design)"),
    "memotrap_history_of_science_qa": _Builtin(
        "memotrap", "conflicts/memo_trap_history_of_science_qa.csv",
        "MemoTrap part 4, history-of-science multiple choice (736 rows)"),
    "xquad": _Builtin(
        "contextqa", "contextqa/xquad_en_squad_v1.1_dev_subset.json",
        "XQuAD-en: 1,190 SQuAD v1.1 dev questions over 240 paragraphs (EM/F1, containment)"),
    "boolq": _Builtin(
        "contextqa", "contextqa/boolq_dev.jsonl",
        "BoolQ dev: 3,270 yes/no questions with a Wikipedia passage (answers 'yes'/'no')",
        {"context": "passage"}),
    "haystack": _Builtin(
        "haystack", "haystack",
        "Needle in a haystack [B]: Paul Graham essays + the San Francisco needle, keyword recall "
        "over a length x depth grid"),
}

#: Built-in suite name -> one-line description (for ``tunelens probe --list`` and docs).
BUILTIN_SUITES: dict[str, str] = {name: b.description for name, b in _BUILTINS.items()}


def suite_kind(name: str) -> str:
    """``"conflict"``, ``"memotrap"``, ``"contextqa"`` or ``"haystack"`` for a built-in name."""
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in suite {name!r}; built-ins: {sorted(_BUILTINS)}")
    return _BUILTINS[name].kind


def _default_shared_candidates() -> list[Path]:
    """``<repo>/../shared/data`` for a source checkout, then ``../shared/data`` and
    ``shared/data`` relative to the working directory (the installed case)."""
    out: list[Path] = []
    pkg = Path(__file__).resolve().parents[1]  # .../tunelens
    if pkg.parent.name == "src":  # editable / source checkout: <repo>/src/tunelens
        out.append(pkg.parent.parent.parent / "shared" / "data")
    cwd = Path.cwd()
    for cand in (cwd.parent / "shared" / "data", cwd / "shared" / "data"):
        if cand not in out:
            out.append(cand)
    return out


def shared_data_dir(shared_dir: str | Path | None = None) -> Path:
    """The shared data directory: ``shared_dir``, else ``$TUNELENS_SHARED_DATA``, else the default.

    The default is ``<repo>/../shared/data`` (``<repo>`` being the checkout holding
    ``src/tunelens``); for an installed package, ``../shared/data`` or ``shared/data`` relative
    to the working directory. Raises :class:`DataError` naming what was tried.
    """
    if shared_dir is not None:
        tried = [("the shared_dir argument", Path(shared_dir))]
    elif os.environ.get(SHARED_DATA_ENV):
        tried = [(f"${SHARED_DATA_ENV}", Path(os.environ[SHARED_DATA_ENV]))]
    else:
        tried = [("default", p) for p in _default_shared_candidates()]
    for _, path in tried:
        if path.is_dir():
            return path
    where = "; ".join(f"{p} (from {how})" for how, p in tried)
    raise DataError(f"shared data directory not found: {where}. Pass shared_dir=..., or set "
                    f"${SHARED_DATA_ENV} to the folder that holds conflicts/, contextqa/ and haystack/")


def builtin_path(name: str, shared_dir: str | Path | None = None) -> Path:
    """The file (or folder) of a built-in suite; :class:`DataError` if it is missing."""
    kind = suite_kind(name)  # raises for unknown names
    base = shared_data_dir(shared_dir)
    path = base / _BUILTINS[name].path
    if not path.exists():
        raise DataError(f"{path}: file of the built-in {kind} suite {name!r} not found in the shared "
                        f"data directory {base}")
    return path


@dataclass
class _Source:
    path: Path
    prefix: str  # id prefix
    source: str  # value of item.source
    fields: dict[str, str]


def _resolve(spec: str | Path, kind: str, fields: Mapping[str, str] | None, allowed: tuple[str, ...],
             shared_dir: str | Path | None) -> _Source:
    if fields is not None:
        if not isinstance(fields, Mapping):
            raise DataError(f"fields must be a mapping {{our_field: field_in_file}}, got {type(fields).__name__}")
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise DataError(f"fields: unknown field name(s) {unknown}; the mapping is "
                            f"{{our_field: field_in_file}} with our fields {list(allowed)}")
        for ours, theirs in fields.items():
            if not isinstance(theirs, str) or not theirs:
                raise DataError(f"fields[{ours!r}] must be a non-empty string, got {theirs!r}")
    name = str(spec)
    if name in _BUILTINS:
        b = _BUILTINS[name]
        if b.kind != kind:
            wanted = [n for n, x in _BUILTINS.items() if x.kind == kind]
            raise DataError(f"{name!r} is a built-in {b.kind} suite, not a {kind} suite; "
                            f"{kind} built-ins: {wanted}")
        return _Source(builtin_path(name, shared_dir), name, name, {**b.fields, **(fields or {})})
    path = Path(spec)
    if not path.exists():
        looks_like_name = not path.suffix and len(path.parts) == 1
        wanted = [n for n, x in _BUILTINS.items() if x.kind == kind]
        if looks_like_name:
            raise DataError(f"unknown {kind} suite {name!r}: not a built-in ({wanted}) and no such file")
        raise DataError(f"{name}: file not found (built-in {kind} suites: {wanted})")
    if path.is_dir():
        raise DataError(f"{name}: is a directory; give a JSON, JSONL or CSV file")
    return _Source(path, path.stem, str(path), dict(fields or {}))


# --------------------------------------------------------------------------- reading

def _err(loc: Location, fld: str | None, reason: str) -> DataError:
    where = loc.describe()
    return DataError(f"{where}, field {fld!r}: {reason}" if fld else f"{where}: {reason}")


def _has_surrogate(value: Any) -> str | None:
    """Dotted path of the first string holding an undecodable byte (surrogate escape)."""
    if isinstance(value, str):
        return "" if any("\udc80" <= ch <= "\udcff" for ch in value) else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            sub = _has_surrogate(v)
            if sub is not None:
                return f"{k}.{sub}" if sub else str(k)
            if _has_surrogate(k) is not None:
                return str(k)
    if isinstance(value, list):
        for i, v in enumerate(value):
            sub = _has_surrogate(v)
            if sub is not None:
                return f"{i}.{sub}" if sub else str(i)
    return None


def _check_utf8(path: Path) -> None:
    """Raise a :class:`DataError` naming line, record and field of the first non-UTF-8 byte."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt not in ("jsonl", "json", "csv", "tsv"):
        return  # binary (Parquet) or unknown: read_records reports it
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError as e:
        bad = e.start
    line = data.count(b"\n", 0, bad) + 1
    col = bad - (data.rfind(b"\n", 0, bad) + 1) + 1
    what = f"not valid UTF-8 (byte 0x{data[bad]:02x} at column {col}); re-save the file as UTF-8"
    where, fld = f"{path}, line {line}", None
    try:
        text = data.decode("utf-8", errors="surrogateescape")
        if text.startswith("\ufeff"):
            text = text[1:]
        if fmt == "jsonl":
            fld = _has_surrogate(json.loads(text.splitlines()[line - 1]))
        elif fmt in ("csv", "tsv"):
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
            start = 2
            for row in reader:
                end = reader.line_num
                if start <= line <= end:
                    fld = _has_surrogate({k: v for k, v in row.items() if k is not None})
                    where = f"{path}, line {line} (row starting at line {start})" if start != line else where
                    break
                start = end + 1
        elif fmt == "json":
            doc = json.loads(text)
            records = doc.get("data", doc) if isinstance(doc, dict) else doc
            if isinstance(records, list):
                for i, rec in enumerate(records):
                    sub = _has_surrogate(rec)
                    if sub is not None:
                        where = f"{path}, line {line}, record {i} (0-based record index)"
                        fld = sub
                        break
    except Exception:  # noqa: BLE001 - best effort: the field is a hint, the line is certain
        fld = None
    if fld:
        raise DataError(f"{where}, field {fld!r}: {what}")
    raise DataError(f"{where}: {what}")


def _records(src: _Source, limit: int | None) -> Iterator[tuple[int, RawRecord]]:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit must be a non-negative integer or None, got {limit!r}")
    _check_utf8(src.path)
    if limit == 0:
        return
    n = 0
    for raw in read_records(src.path):
        if raw.error is not None:
            raise _err(raw.loc, None, raw.error)
        yield n, raw
        n += 1
        if limit is not None and n >= limit:
            return


def _label(src: _Source, ours: str) -> str:
    return src.fields.get(ours, ours)


def _text(src: _Source, raw: RawRecord, ours: str, *, aliases: tuple[str, ...] = (),
          nonempty: bool = True) -> str:
    """The string at our field ``ours`` (mapped, or an alias when unmapped), validated."""
    name = _label(src, ours)
    value = get_path(raw.value, name)
    if value is MISSING and ours not in src.fields:
        for alt in aliases:
            value = get_path(raw.value, alt)
            if value is not MISSING:
                name = alt
                break
    if value is MISSING:
        have = sorted(str(k) for k in raw.value)
        if ours in src.fields:
            raise _err(raw.loc, name, f"missing (mapped to {ours!r}); the record has fields {have}")
        also = f" (nor {', '.join(repr(a) for a in aliases)})" if aliases else ""
        raise _err(raw.loc, name, f"missing{also}; the record has fields {have}; "
                                  f"map it with fields={{{ours!r}: '<name in file>'}}")
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise _err(raw.loc, name, f"must be a string, got {got}")
    if nonempty and not value.strip():
        raise _err(raw.loc, name, "is empty")
    return value


def _item_id(src: _Source, raw: RawRecord, index: int) -> str:
    value = get_path(raw.value, _label(src, "id"))
    if value is MISSING or value is None:
        if "id" in src.fields:
            raise _err(raw.loc, src.fields["id"], "missing (mapped to 'id')")
        return f"{src.prefix}:{index}"
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise _err(raw.loc, _label(src, "id"), f"must be a non-empty string or an integer, got {value!r}")
    return f"{src.prefix}:{value}"


class _Ids:
    def __init__(self) -> None:
        self.seen: dict[str, Location] = {}

    def add(self, item_id: str, loc: Location, src: _Source) -> str:
        if item_id in self.seen:
            raise _err(loc, _label(src, "id"), f"duplicate id {item_id!r} (first at {self.seen[item_id].describe()})")
        self.seen[item_id] = loc
        return item_id


def _norm_key(s: str) -> str:
    from tunelens.probes.metrics import normalize_answer  # metrics has no dependency on items

    return normalize_answer(s)


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
