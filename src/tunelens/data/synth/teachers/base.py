"""The teacher interface: one batched call, ``complete(requests) -> list[TeacherResult]``, for every teacher.

A teacher turns requests (a text to continue, or chat messages) into results (text, why it stopped, an
error if it failed, token usage). Teachers never raise for a failed request: the failure is a result with
``error`` set, so a run counts it and goes on. ``identity()`` is everything that determines the output
(kind, model, prompt format, sampling parameters, never a secret); it keys the cache and is recorded in
every output record.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

__all__ = ["OnResult", "SamplingParams", "TeacherRequest", "TeacherResult", "Teacher", "FINISH_REASONS",
           "request_messages", "content_hash"]

#: ``on_result(index, result)``: called as each request of a ``complete`` call finishes.
OnResult = Optional[Callable[[int, "TeacherResult"], None]]

#: ``stop``: natural end (EOS or a stop string); ``length``: hit max_tokens; ``timeout``/``error``: failed.
FINISH_REASONS = ("stop", "length", "timeout", "error")


@dataclass(frozen=True)
class SamplingParams:
    """How a teacher samples. ``temperature == 0`` means greedy decoding (``top_p`` and ``seed`` unused)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class TeacherRequest:
    """One request. ``prompt`` is the text to continue (completion format) or the user message (chat format);
    ``messages`` (a full chat, list of ``{role, content}``) replaces it when given. ``reference`` is the
    document's real continuation (what the ``gold`` teacher returns). ``max_tokens`` overrides the teacher's.
    """

    prompt: str = ""
    messages: tuple[Mapping[str, str], ...] | None = None
    system: str | None = None
    reference: str | None = None
    max_tokens: int | None = None

    def key_fields(self) -> dict[str, Any]:
        """The request's content as a JSON-able dict (part of the cache key)."""
        return {"prompt": self.prompt, "messages": [dict(m) for m in self.messages] if self.messages else None,
                "system": self.system, "reference": self.reference, "max_tokens": self.max_tokens}


@dataclass
class TeacherResult:
    """What a teacher returned for one request. ``error`` is None on success (``text`` may still be empty)."""

    text: str
    finish_reason: str
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TeacherResult":
        return cls(text=d["text"], finish_reason=d["finish_reason"], error=d.get("error"),
                   usage=dict(d.get("usage") or {}), attempts=int(d.get("attempts", 1)))


@runtime_checkable
class Teacher(Protocol):
    """Anything with a name, an identity and a batched ``complete``; see :mod:`tunelens.data.synth.teachers`."""

    name: str
    batch_size: int  # how many requests one ``complete`` call should get for good throughput

    def identity(self) -> dict[str, Any]:
        """JSON-able description of everything that determines outputs (no secrets)."""
        ...

    def complete(self, requests: Sequence[TeacherRequest]) -> list[TeacherResult]:
        """One result per request, in order; failures are results with ``error`` set, never exceptions.

        Built-in teachers also take ``on_result=callback``: ``callback(index, result)`` is called (in the calling
        thread) as soon as each request finishes, so a caller can persist results before the batch ends.
        """
        ...

    def close(self) -> None:
        ...


def request_messages(req: TeacherRequest, template: str = "{text}",
                     default_system: str | None = None) -> list[dict[str, str]]:
    """The chat form of a request: its ``messages``, else [system] + user(``template`` filled with the prompt)."""
    if req.messages:
        return [dict(m) for m in req.messages]
    system = req.system if req.system is not None else default_system
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": template.replace("{text}", req.prompt)}]


def content_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (sorted keys): the cache key of a request."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
