"""``gold``: the document's real continuation as the response -- the no-teacher control."""
from __future__ import annotations

from typing import Any, Sequence

from tunelens.data.synth.teachers.base import OnResult, TeacherRequest, TeacherResult

__all__ = ["GoldTeacher"]


class GoldTeacher:
    """Returns each request's ``reference`` (an error result when a request has none)."""

    name = "gold"

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def identity(self) -> dict[str, Any]:
        return {"kind": "gold"}

    def complete(self, requests: Sequence[TeacherRequest], on_result: OnResult = None) -> list[TeacherResult]:
        out: list[TeacherResult] = []
        for req in requests:
            if req.reference is None:
                out.append(TeacherResult("", "error", error="gold teacher: the request has no reference text"))
            else:
                n = len(req.reference.split())
                out.append(TeacherResult(req.reference, "stop", usage={"completion_words": n}))
            if on_result is not None:
                on_result(len(out) - 1, out[-1])
        return out

    def close(self) -> None:
        pass
