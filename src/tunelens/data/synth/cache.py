"""The teacher cache: every finished response, keyed by a content hash, in an append-only JSONL file.

The key is ``sha256(request content, teacher identity)`` -- the passage's user turn, its real continuation,
the split, the teacher's model, prompt format and sampling parameters -- so any change to one of them is a
new request, and the same request is never paid for twice. Each response is one line written with a single
``os.write`` on an ``O_APPEND`` descriptor and ``fsync``-ed per batch: a crash leaves at most one torn last
line, which :meth:`TeacherCache.open` skips (and counts). Failed requests (``error`` set) are not cached, so
a rerun retries them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from tunelens.data.synth.teachers.base import TeacherRequest, TeacherResult, content_hash

__all__ = ["TeacherCache", "request_key"]


def request_key(request: TeacherRequest, identity: dict[str, Any]) -> str:
    """The content hash of a request for a given teacher identity."""
    return content_hash(request.key_fields(), identity)


class TeacherCache:
    """Append-only ``key -> TeacherResult`` store in ``path`` (JSONL). Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, TeacherResult] = {}
        self.torn_lines = 0
        self._fd: int | None = None

    def open(self) -> "TeacherCache":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def _load(self) -> None:
        data = self.path.read_bytes()
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.entries[row["key"]] = TeacherResult.from_dict(row["result"])
            except (ValueError, KeyError, TypeError):
                self.torn_lines += 1
        if data and not data.endswith(b"\n"):  # a torn last line: start the next append on a fresh line
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def __enter__(self) -> "TeacherCache":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> TeacherResult | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, key: str, result: TeacherResult, extra: dict[str, Any] | None = None) -> bool:
        """Append one successful result (one ``write``: it survives a killed process); False if not stored."""
        if self._fd is None:
            raise RuntimeError("TeacherCache is not open")
        if not result.ok or key in self.entries:
            return False
        line = json.dumps({"key": key, "result": result.to_dict(), **(extra or {})}, ensure_ascii=False) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        self.entries[key] = result
        return True

    def sync(self) -> None:
        """fsync the file (durability across a power loss, not only a killed process)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def put_many(self, items: Iterable[tuple[str, TeacherResult, dict[str, Any]]]) -> int:
        """Append successful results (``(key, result, extra)``; ``extra`` is stored for humans) and fsync."""
        n = sum(self.put(key, result, extra) for key, result, extra in items)
        if n:
            self.sync()
        return n

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
