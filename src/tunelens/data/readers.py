"""File readers: yield raw records with their location, in file order.

File-level problems (missing, empty, unknown format, undecodable JSON/CSV document) raise
:class:`DataError` at once. Record-level problems (a malformed JSONL line, a CSV row with
the wrong number of cells, a record that is not an object) are yielded as
``RawRecord(error=...)`` so the loader can skip or fail according to its policy.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelens.errors import DataError

__all__ = ["FORMATS", "Location", "RawRecord", "read_records", "split_selector"]

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
           ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class Location:
    """Where a record lives: a 1-based physical ``line`` or a 0-based ``record`` index."""

    file: str
    index: int
    unit: str = "line"  # "line" | "record"
    detail: str = ""  # e.g. the JSON path of a SQuAD question

    @property
    def source(self) -> str:
        """Short id for :attr:`Example.source`: ``path:line`` or ``path:#index``."""
        return f"{self.file}:{self.index}" if self.unit == "line" else f"{self.file}:#{self.index}"

    def describe(self) -> str:
        """Human text: ``path, line 5`` or ``path, record 3 (0-based record index)``."""
        if self.unit == "line":
            return f"{self.file}, line {self.index}"
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.file}, record {self.index} (0-based record index{extra})"


@dataclass
class RawRecord:
    """A record as read (``value``), or why it could not be read (``error``)."""

    loc: Location
    value: Any = None
    error: str | None = None


def split_selector(path: str | Path) -> tuple[Path, str | None]:
    """``"dir::validation"`` -> (Path("dir"), "validation"); no ``::`` -> (path, None)."""
    text = str(path)
    if "::" in text:
        base, sel = text.rsplit("::", 1)
        return Path(base), sel or None
    return Path(path), None


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = _line_of(data, e.start)
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{name}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column "
                        f"{col}); re-save the file as UTF-8") from None


def _read_jsonl(path: Path, name: str) -> Iterator[RawRecord]:
    seen = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            seen = True
            loc = Location(name, lineno)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(loc, error=f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield RawRecord(loc, error=f"malformed JSON: {e.msg} (column {e.colno})")
                continue
            yield _object_or_error(loc, value)
    if not seen:
        raise DataError(f"{name}: file is empty (no JSON lines)")


def _object_or_error(loc: Location, value: Any) -> RawRecord:
    if isinstance(value, dict):
        return RawRecord(loc, value)
    return RawRecord(loc, error=f"record is a JSON {type(value).__name__}, expected an object")


def _is_squad(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(a, dict) and "paragraphs" in a for a in items)


def _flatten_squad(articles: list[dict[str, Any]], name: str) -> Iterator[RawRecord]:
    """SQuAD v1.1/v2 JSON -> one record per question (context, question, answers, id, title)."""
    idx = 0
    for ai, article in enumerate(articles):
        for pi, para in enumerate(article.get("paragraphs") or []):
            qas = para.get("qas") if isinstance(para, dict) else None
            if not isinstance(qas, list):
                yield RawRecord(Location(name, idx, "record", f"data[{ai}].paragraphs[{pi}]"),
                                error="SQuAD paragraph without a 'qas' list")
                idx += 1
                continue
            for qi, qa in enumerate(qas):
                loc = Location(name, idx, "record", f"data[{ai}].paragraphs[{pi}].qas[{qi}]")
                idx += 1
                if not isinstance(qa, dict):
                    yield RawRecord(loc, error="SQuAD question is not an object")
                    continue
                rec = {k: v for k, v in qa.items() if k not in ("question", "answers")}
                rec.update(title=article.get("title"), context=para.get("context"),
                           question=qa.get("question"), answers=qa.get("answers"))
                yield RawRecord(loc, rec)


def _read_json(path: Path, name: str, key: str | None) -> Iterator[RawRecord]:
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{name}: file is empty")
    text = _decode(data, name)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and key is None:  # JSON Lines saved with a .json extension
            yield from _read_jsonl(path, name)
            return
        raise DataError(f"{name}, line {e.lineno}, column {e.colno}: malformed JSON: {e.msg}") from None
    if isinstance(doc, dict):
        doc = _pick_list(doc, name, key)
    elif key is not None:
        raise DataError(f"{name}: '::{key}' selects a key, but the file holds a JSON {type(doc).__name__}")
    if not isinstance(doc, list):
        raise DataError(f"{name}: expected a JSON list of records (or an object holding one), "
                        f"got a JSON {type(doc).__name__}")
    if not doc:
        raise DataError(f"{name}: the JSON list is empty (no records)")
    if _is_squad(doc):
        yield from _flatten_squad(doc, name)
        return
    for i, value in enumerate(doc):
        yield _object_or_error(Location(name, i, "record"), value)


def _pick_list(doc: dict[str, Any], name: str, key: str | None) -> Any:
    if key is not None:
        if key not in doc:
            raise DataError(f"{name}: no key {key!r} in the JSON object (keys: {sorted(doc)})")
        return doc[key]
    lists = [k for k, v in doc.items() if isinstance(v, list)]
    if len(lists) == 1:
        return doc[lists[0]]
    if "data" in lists:
        return doc["data"]
    raise DataError(f"{name}: a JSON object must hold exactly one list of records; list-valued keys: "
                    f"{lists or 'none'} (keys: {sorted(doc)}). Pick one with 'path::key'")


def _read_csv(path: Path, name: str, delimiter: str) -> Iterator[RawRecord]:
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{name}: file is empty")
    reader = csv.reader(io.StringIO(_decode(data, name), newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        n = len(header)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            if not row:
                continue
            loc = Location(name, start)
            if len(row) != n:
                yield RawRecord(loc, error=f"row has {len(row)} cells, the header has {n}")
            else:
                yield RawRecord(loc, dict(zip(header, row)))
    except csv.Error as e:
        raise DataError(f"{name}, line {reader.line_num}: malformed CSV: {e}") from None


def _read_parquet(path: Path, name: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None
    if pf.metadata.num_rows == 0:
        raise DataError(f"{name}: the Parquet file has no rows")
    i = 0
    for batch in pf.iter_batches():
        for value in batch.to_pylist():
            yield RawRecord(Location(name, i, "record"), value)
            i += 1


def _read_dataset_dir(path: Path, name: str, split: str | None, default_split: str) -> Iterator[RawRecord]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{name}: a directory, but not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        chosen = split or default_split
        if chosen not in ds:
            raise DataError(f"{name}: no split {chosen!r} in the DatasetDict (splits: {sorted(ds)}); "
                            f"pick one with 'path::split' or split=...")
        ds, name = ds[chosen], f"{name}::{chosen}"
    elif split is not None:
        raise DataError(f"{name}: '::{split}' selects a split, but this is a single Dataset, not a DatasetDict")
    if len(ds) == 0:
        raise DataError(f"{name}: the dataset has no rows")
    for i, value in enumerate(ds):
        yield RawRecord(Location(name, i, "record"), value)


def read_records(path: str | Path, *, split: str | None = None) -> Iterator[RawRecord]:
    """Raw records of one file or saved dataset directory, in order.

    ``path`` may end in ``::name`` to pick a split of a saved ``DatasetDict`` or a key of a
    JSON object; ``split`` is the DatasetDict split used otherwise (default ``"train"``).
    """
    base, selector = split_selector(path)
    name = str(path) if selector is None else str(base)
    if not base.exists():
        raise DataError(f"{name}: file not found")
    if base.is_dir():
        yield from _read_dataset_dir(base, name, selector, split or "train")
        return
    fmt = FORMATS.get(base.suffix.lower())
    if fmt is None:
        raise DataError(f"{name}: unknown file extension {base.suffix!r}; supported: "
                        f"{sorted(FORMATS)} or a directory saved with datasets' save_to_disk")
    if selector is not None and fmt != "json":
        raise DataError(f"{name}: '::{selector}' is only understood for JSON objects and DatasetDict directories")
    if fmt == "jsonl":
        yield from _read_jsonl(base, name)
    elif fmt == "json":
        yield from _read_json(base, name, selector)
    elif fmt in ("csv", "tsv"):
        yield from _read_csv(base, name, "," if fmt == "csv" else "\t")
    else:
        yield from _read_parquet(base, name)
