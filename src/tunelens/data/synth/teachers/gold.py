"""``gold``: the document's real continuation as the response -- the no-teacher control."""
from __future__ import annotations

from typing import Any, Sequence

from tunelens.data.synth.teachers.base import TeacherRequest, TeacherResult

__all__ = ["GoldTeacher"]


class GoldTeacher:
    """Returns each request's ``reference`` (an error result when a request has none)."""

    name = "gold"

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def identity(self) -> dict[str, Any]:
        return {"kind": "gold"}

    def complete(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        out = []
        for req in requests:
            if req.reference is None:
                out.append(TeacherResult("", "error", error="gold teacher: the request has no reference text"))
            else:
                n = len(req.reference.split())
                out.append(TeacherResult(req.reference, "stop", usage={"completion_words": n}))
        return out

    def close(self) -> None:
        pass
