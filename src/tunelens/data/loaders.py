"""``load_examples``: read files, map fields, detect the schema, validate, report."""
from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelens.data.readers import Location, read_records
from tunelens.data.schemas import (
    DEFAULT_CONTEXT_TEMPLATE,
    Example,
    FieldMap,
    detect_schema,
    record_to_example_parts,
    resolve_schema_name,
)
from tunelens.data.validate import RecordError
from tunelens.errors import DataError

__all__ = ["LoadReport", "Rejected", "load_examples"]

log = logging.getLogger(__name__)


@dataclass
class Rejected:
    """A record that was skipped. ``line`` is a 1-based physical line when ``unit == "line"``
    (JSONL, CSV) and a 0-based record index when ``unit == "record"`` (JSON, Parquet, datasets)."""

    file: str
    line: int
    field: str | None
    reason: str
    unit: str = "line"

    def __str__(self) -> str:
        where = (f"{self.file}, line {self.line}" if self.unit == "line"
                 else f"{self.file}, record {self.line} (0-based record index)")
        return f"{where}, field {self.field!r}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass
class LoadReport:
    """What :func:`load_examples` produced: examples, rejected records and counts."""

    examples: list[Example]
    rejected: list[Rejected] = field(default_factory=list)
    n_read: int = 0
    schemas: dict[str, str] = field(default_factory=dict)  # file -> detected/forced schema

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self, max_rejected: int = 5) -> str:
        """A few lines for a log: counts, schema per file, the most common rejection reasons."""
        files = ", ".join(f"{f} ({s})" for f, s in self.schemas.items())
        lines = [f"loaded {len(self.examples)} examples from {self.n_read} records read; "
                 f"rejected {len(self.rejected)}; files: {files}"]
        if self.rejected:
            reasons = Counter((r.field or "(record)", r.reason.split(";")[0].split(" (")[0])
                              for r in self.rejected)
            for (fld, reason), n in reasons.most_common(max_rejected):
                lines.append(f"  {n} x {fld}: {reason}")
            lines.append(f"  first rejected: {self.rejected[0]}")
        return "\n".join(lines)


def _error_text(loc: Location, fld: str | None, reason: str) -> str:
    where = loc.describe()
    return f"{where}, field {fld!r}: {reason}" if fld else f"{where}: {reason}"


def _check_template(template: str) -> None:
    try:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
    except ValueError as e:
        raise DataError(f"context_template {template!r} is not a valid format string: {e}") from None
    if not {"context", "question"} <= names:
        raise DataError(f"context_template {template!r} must contain both {{context}} and {{question}}")


def _as_paths(path: str | Path | Sequence[str | Path]) -> list[str | Path]:
    if isinstance(path, (str, Path)):
        return [path]
    paths = list(path)
    if not paths:
        raise DataError("load_examples: no paths given")
    return paths


def load_examples(
    path: str | Path | Sequence[str | Path],
    schema: str = "auto",
    fields: Mapping[str, str] | None = None,
    on_error: Literal["skip", "fail"] = "skip",
    system: str | None = None,
    limit: int | None = None,
    context_template: str = DEFAULT_CONTEXT_TEMPLATE,
    split: str | None = None,
) -> LoadReport:
    """Load and validate examples from JSONL, JSON, Parquet, CSV/TSV or a saved ``datasets`` dir.

    ``path`` may be a list (concatenated in order) and may end in ``::split`` (DatasetDict
    split, default ``split`` or ``"train"``) or ``::key`` (list-valued key of a JSON object).
    ``schema="auto"`` detects each file's schema from its first readable record.
    ``fields`` maps canonical names onto the file's (``{"output": "response"}``, dotted for
    nested fields). ``on_error="fail"`` raises :class:`DataError` at the first bad record;
    ``"skip"`` collects it in :attr:`LoadReport.rejected`. ``system`` is prepended to every
    example that has no system message. ``limit`` caps the number of examples kept.
    Raises :class:`DataError` if no example at all is valid.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    forced = resolve_schema_name(schema)
    fmap = FieldMap(fields)
    _check_template(context_template)
    report = LoadReport(examples=[])
    for p in _as_paths(path):
        if _load_one(p, forced, fmap, on_error, system, limit, context_template, split, report):
            break
    if not report.examples:
        first = f"; first: {report.rejected[0]}" if report.rejected else ""
        raise DataError(f"no valid examples in {[str(p) for p in _as_paths(path)]}: "
                        f"{report.n_read} records read, {len(report.rejected)} rejected{first}")
    if report.rejected:
        log.warning("skipped %d invalid records (%s)", len(report.rejected), report.rejected[0])
    return report


def _load_one(path: str | Path, forced: str, fmap: FieldMap, on_error: str, system: str | None,
              limit: int | None, template: str, split: str | None, report: LoadReport) -> bool:
    """Append one file's examples to ``report``; True once ``limit`` is reached."""
    file_schema = None if forced == "auto" else forced
    for raw in read_records(path, split=split):
        report.n_read += 1
        loc = raw.loc
        try:
            if raw.error is not None:
                raise RecordError(None, raw.error)
            mapped = fmap.apply(raw.value)
            if file_schema is None:
                try:
                    file_schema = detect_schema(mapped)
                except RecordError as e:  # a wrong guess is a configuration problem: always fail
                    raise DataError(_error_text(loc, None, e.reason)) from None
            report.schemas.setdefault(loc.file, file_schema)
            messages, used, extra = record_to_example_parts(mapped, file_schema, fmap, system=system,
                                                            context_template=template)
        except RecordError as e:
            if on_error == "fail":
                raise DataError(_error_text(loc, e.field, e.reason)) from None
            report.rejected.append(Rejected(loc.file, loc.index, e.field, e.reason, loc.unit))
            continue
        consumed = fmap.consumed(used, raw.value)
        meta: dict[str, Any] = {k: v for k, v in raw.value.items() if k not in consumed}
        meta.update(extra)
        report.examples.append(Example(messages=messages, source=loc.source, meta=meta))
        if limit is not None and len(report.examples) >= limit:
            return True
    return False
