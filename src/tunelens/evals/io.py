"""Reading evaluation data (JSONL with line-numbered errors) and writing results.json + per-item records."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from tunelens.errors import DataError
from tunelens.probes.items import shared_data_dir


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; a bad line raises DataError naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}, line {lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require(obj: dict[str, Any], field: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[field]`` if present and of type ``kind``, else DataError naming ``where`` and the field."""
    if field not in obj:
        raise DataError(f"{where}: missing field {field!r}")
    value = obj[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {field!r} must be {names}, got {type(value).__name__}")
    return value


def instructions_file(name: str, shared_dir: str | Path | None = None) -> Path:
    """A file of the shared ``instructions/`` data folder (see :func:`tunelens.probes.items.shared_data_dir`)."""
    return shared_data_dir(shared_dir) / "instructions" / name


def save_results(out: str | Path, results: dict[str, Any], records: dict[str, Iterable[dict[str, Any]]]) -> Path:
    """Write ``out/results.json`` and ``out/records/<name>.jsonl`` (each written to a temp file, then renamed)."""
    out = Path(out)
    (out / "records").mkdir(parents=True, exist_ok=True)
    for name, rows in records.items():
        _atomic_write(out / "records" / f"{name}.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    path = out / "results.json"
    _atomic_write(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
