"""Documents from text files, folders, JSONL (a text field) and local ``datasets`` directories.

Every document carries a ``source_id`` (``path`` for a text file, ``path:LINE`` for JSONL, ``path:#INDEX``
for a datasets directory). Files or records that give no usable text are not errors: each becomes a
:class:`SourceIssue` (``empty``, ``binary``, ``unreadable``, ``malformed``, ``missing_text``) with its source id,
so a run reports them and goes on.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tunelens.errors import ConfigError, DataError

__all__ = ["Document", "SourceIssue", "SourceSpec", "iter_documents", "read_text_file"]

_JSONL = {".jsonl", ".ndjson"}
_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass
class SourceSpec:
    """One source: a file, a folder (files matching ``glob``), a ``.jsonl`` or a saved ``datasets`` directory."""

    path: str = ""
    text_field: str = "text"  # JSONL / datasets: the field holding the document (dotted for nested)
    split: Optional[str] = None  # datasets DatasetDict split (default "train")
    glob: str = "**/*"  # folders: which files; hidden files are skipped
    kind: str = "auto"  # auto | text | jsonl | datasets


@dataclass(frozen=True)
class Document:
    source_id: str
    text: str


@dataclass(frozen=True)
class SourceIssue:
    """A file or record that gave no document, and why (``kind``: empty/binary/unreadable/malformed/missing_text)."""

    source_id: str
    kind: str
    detail: str = ""


@dataclass
class _Sink:
    issues: list[SourceIssue] = field(default_factory=list)


def read_text_file(path: Path) -> tuple[str | None, SourceIssue | None]:
    """(text, None) for a UTF-8 (or Latin-1) text file; (None, issue) for an empty, binary or unreadable one."""
    sid = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, SourceIssue(sid, "unreadable", str(exc))
    if not data.strip():
        return None, SourceIssue(sid, "empty", f"{len(data)} bytes, no text")
    if b"\x00" in data[:8192]:
        return None, SourceIssue(sid, "binary", "NUL bytes in the first 8 KiB")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        sample = data[:8192]
        controls = sum(b < 9 or 13 < b < 32 for b in sample)
        if controls > len(sample) // 100:
            return None, SourceIssue(sid, "binary", f"not UTF-8 (byte {exc.start}) and {controls} control bytes")
        return data.decode("latin-1"), None


def _kind_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        return "datasets" if any((path / m).exists() for m in _DATASET_MARKERS) else "folder"
    return "jsonl" if path.suffix.lower() in _JSONL else "text"


def _get(record: dict, dotted: str) -> object:
    value: object = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _records(spec: SourceSpec, path: Path, issues: list[SourceIssue]) -> Iterator[Document]:
    from tunelens.data.readers import read_records

    sel = f"{path}::{spec.split}" if spec.split and path.is_dir() else str(path)
    try:
        for raw in read_records(sel):
            sid = raw.loc.source
            if raw.error is not None:
                issues.append(SourceIssue(sid, "malformed", raw.error))
                continue
            text = _get(raw.value, spec.text_field) if isinstance(raw.value, dict) else None
            if not isinstance(text, str):
                issues.append(SourceIssue(sid, "missing_text", f"no string field {spec.text_field!r}"))
            elif not text.strip():
                issues.append(SourceIssue(sid, "empty", f"field {spec.text_field!r} is empty"))
            else:
                yield Document(sid, text)
    except DataError as exc:
        msg = str(exc)
        kind = "empty" if "empty" in msg or "no rows" in msg else "binary" if "UTF-8" in msg else "unreadable"
        issues.append(SourceIssue(str(path), kind, msg))


def _one_path(spec: SourceSpec, path: Path, kind: str, issues: list[SourceIssue]) -> Iterator[Document]:
    if kind in ("jsonl", "datasets"):
        yield from _records(spec, path, issues)
        return
    text, issue = read_text_file(path)
    if issue is not None:
        issues.append(issue)
    else:
        yield Document(str(path), text)  # type: ignore[arg-type]


def iter_documents(specs: list[SourceSpec], issues: list[SourceIssue]) -> Iterator[Document]:
    """Documents of every source, in order (folders sorted by path); problems go to ``issues``.

    A source path that does not exist is a :class:`ConfigError` (a typo, not bad data).
    """
    for spec in specs:
        root = Path(spec.path)
        if not root.exists():
            raise ConfigError(f"source not found: {spec.path}")
        kind = _kind_of(root, spec.kind)
        if kind != "folder":
            yield from _one_path(spec, root, kind, issues)
            continue
        files = sorted(p for p in root.glob(spec.glob)
                       if not any(part.startswith(".") for part in p.relative_to(root).parts)
                       and (p.is_file() or (p.is_dir() and _kind_of(p, "auto") == "datasets")))
        if not files:
            issues.append(SourceIssue(str(root), "empty", f"no files match {spec.glob!r}"))
        for p in files:
            if any(parent in files for parent in p.parents):
                continue  # inside a datasets directory already listed
            yield from _one_path(spec, p, _kind_of(p, "auto"), issues)
