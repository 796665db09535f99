"""Write examples back as ``messages`` JSONL that :func:`tunelens.data.load_examples` reads again.

One JSON object per line: ``{"messages": [...], <meta fields>..., "provenance": [...]}``. The example's
``meta`` fields sit at the top level, so reloading puts them back into ``meta`` (a ``context_qa`` example
keeps its ``context``/``question``/``answer``, and the next data-prep step still finds them).
``provenance`` is a list with one entry per data-prep step, oldest first: ``{"step": ..., "source": ...,
...}`` where ``source`` is where the example was read from (``path:line``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunelens.data.schemas import Example
from tunelens.errors import DataError

__all__ = ["PROVENANCE_KEY", "example_record", "write_examples_jsonl", "write_json"]

PROVENANCE_KEY = "provenance"
_RESERVED = ("messages", "conversations", PROVENANCE_KEY)


def example_record(example: Example, step: str, **info: Any) -> dict[str, Any]:
    """The JSON record of ``example`` with a provenance entry for ``step`` (plus ``info``) appended."""
    history = example.meta.get(PROVENANCE_KEY)
    history = list(history) if isinstance(history, list) else []
    history.append({"step": step, "source": example.source, **info})
    record: dict[str, Any] = {"messages": [dict(m) for m in example.messages]}
    record.update({k: v for k, v in example.meta.items() if k not in _RESERVED})
    record[PROVENANCE_KEY] = history
    return record


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_examples_jsonl(path: str | Path, examples: Sequence[Example], step: str,
                         info: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write ``examples`` (atomically) as messages JSONL; ``info[i]`` is added to example i's provenance."""
    if info is not None and len(info) != len(examples):
        raise DataError(f"write_examples_jsonl: {len(info)} info entries for {len(examples)} examples")
    lines = [json.dumps(example_record(ex, step, **(dict(info[i]) if info else {})), ensure_ascii=False)
             for i, ex in enumerate(examples)]
    out = Path(path)
    _atomic_text(out, "".join(line + "\n" for line in lines))
    return out


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (atomically)."""
    out = Path(path)
    _atomic_text(out, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    return out
