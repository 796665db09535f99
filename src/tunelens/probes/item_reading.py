"""Reading probe records: resolve a suite spec to a file, validate UTF-8, fields and ids with errors that
name file, line and field. Shared by the item loaders in :mod:`tunelens.probes.items`."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelens.data.readers import FORMATS, Location, RawRecord, read_records
from tunelens.data.schemas import MISSING, get_path
from tunelens.errors import DataError
from tunelens.probes.builtin_suites import _BUILTINS, builtin_path


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
    from tunelens.probes.metrics import (
        normalize_answer,  # metrics has no dependency on items
    )

    return normalize_answer(s)
