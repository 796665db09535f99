"""Any OpenAI-compatible endpoint (vLLM, llama.cpp server, a hosted API) as teacher, via the official client.

* Bounded concurrency: at most ``concurrency`` requests in flight (a thread pool around the sync client).
* Timeouts: ``timeout_s`` per attempt (the client's own timeout); a request that times out on every attempt
  is a result with ``finish_reason="timeout"``.
* Retries with exponential backoff and jitter on timeouts, connection errors, 408/409/429 and 5xx answers and
  malformed responses (no choices, no text); 4xx answers such as 400/401/404 fail at once.
* The API key is read from the environment variable ``api_key_env`` when the client is built, held only by
  the client object, and scrubbed from every error message; it is never part of ``identity()``, the config,
  the cache or a log line.
"""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

from tunelens.data.synth.teachers.base import OnResult, SamplingParams, TeacherRequest, TeacherResult, request_messages
from tunelens.errors import ConfigError

__all__ = ["OpenAITeacher"]

_RETRY_STATUS = {408, 409, 429}


class _Malformed(Exception):
    """The endpoint answered 2xx, but not with a usable completion."""


class OpenAITeacher:
    """Teacher for an OpenAI-compatible server. ``prompt_format``: ``completion`` (``/v1/completions``) or
    ``chat`` (``/v1/chat/completions``, the passage wrapped by ``template`` as the user message)."""

    name = "openai"

    def __init__(self, model: str, base_url: str, params: SamplingParams | None = None, *,
                 api_key_env: str = "OPENAI_API_KEY", prompt_format: str = "chat", template: str = "{text}",
                 system: str | None = None, concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 4,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0, batch_size: int | None = None):
        if prompt_format not in ("completion", "chat"):
            raise ConfigError(f"teacher.prompt_format must be 'completion' or 'chat', got {prompt_format!r}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError("teacher: concurrency must be >= 1, max_retries >= 0 and timeout_s > 0")
        import openai

        params = params or SamplingParams()
        self.model, self.base_url, self.params, self.prompt_format = model, base_url, params, prompt_format
        self.template, self.system, self.concurrency = template, system, concurrency
        self.timeout_s, self.max_retries, self.backoff_s, self.max_backoff_s = timeout_s, max_retries, backoff_s, \
            max_backoff_s
        self.api_key_env = api_key_env
        self.batch_size = batch_size or 4 * concurrency
        key = os.environ.get(api_key_env) if api_key_env else None
        self._secret = key or None
        # local servers (vLLM, llama.cpp) accept any key; a hosted API answers 401, reported per request
        self._client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout_s, max_retries=0)
        self._openai = openai
        self._rng = random.Random(params.seed)

    def identity(self) -> dict[str, Any]:
        return {"kind": "openai", "model": self.model, "base_url": self.base_url,
                "prompt_format": self.prompt_format, "template": self.template if self.prompt_format == "chat"
                else None, "system": self.system, "params": self.params.to_dict()}

    def complete(self, requests: Sequence[TeacherRequest], on_result: OnResult = None) -> list[TeacherResult]:
        out: list[TeacherResult | None] = [None] * len(requests)
        if not requests:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)))
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if on_result is not None:
                    on_result(i, out[i])  # type: ignore[arg-type]
        except BaseException:  # Ctrl-C or a failing callback: send nothing more (at most `concurrency` in flight)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return out  # type: ignore[return-value]

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _one(self, req: TeacherRequest) -> TeacherResult:
        last_err, last_kind = "", "error"
        for attempt in range(1, self.max_retries + 2):
            try:
                text, finish, usage = self._call(req)
                return TeacherResult(text, finish, usage=usage, attempts=attempt)
            except Exception as exc:  # classified below; anything unexpected is an error result
                retry, last_kind = self._classify(exc)
                bad_body = isinstance(exc, ValueError) and not isinstance(exc, _Malformed)
                prefix = "malformed response: " if bad_body else ""
                last_err = self._scrub(f"{prefix}{type(exc).__name__}: {exc}")[:500]
                if not retry or attempt > self.max_retries:
                    return TeacherResult("", last_kind, error=last_err, attempts=attempt)
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + self._rng.random() / 2))
        return TeacherResult("", last_kind, error=last_err, attempts=self.max_retries + 1)  # pragma: no cover

    def _classify(self, exc: Exception) -> tuple[bool, str]:
        """(retry?, finish_reason) for an exception raised by one attempt."""
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            return True, "timeout"
        if isinstance(exc, (o.APIConnectionError, _Malformed, o.APIResponseValidationError, ValueError)):
            return True, "error"  # ValueError: a body that is not JSON (json.JSONDecodeError)
        if isinstance(exc, o.APIStatusError):
            return exc.status_code in _RETRY_STATUS or exc.status_code >= 500, "error"
        return False, "error"

    def _sampling_kwargs(self, req: TeacherRequest) -> dict[str, Any]:
        p = self.params
        kw: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens or p.max_tokens,
                              "temperature": p.temperature, "seed": p.seed}
        if not p.greedy:
            kw["top_p"] = p.top_p
        if p.stop:
            kw["stop"] = list(p.stop)
        return kw

    def _call(self, req: TeacherRequest) -> tuple[str, str, dict[str, int]]:
        if self.prompt_format == "chat" or req.messages:
            resp = self._client.chat.completions.create(
                messages=request_messages(req, self.template, self.system), **self._sampling_kwargs(req))
            choice = _first_choice(resp)
            text = getattr(getattr(choice, "message", None), "content", None)
        else:
            resp = self._client.completions.create(prompt=req.prompt, **self._sampling_kwargs(req))
            choice = _first_choice(resp)
            text = getattr(choice, "text", None)
        if not isinstance(text, str):
            raise _Malformed(f"malformed response: the first choice has no text (got {type(text).__name__})")
        finish = getattr(choice, "finish_reason", None)
        finish = "length" if finish == "length" else "stop"
        usage = getattr(resp, "usage", None)
        counts = {k: int(getattr(usage, k)) for k in ("prompt_tokens", "completion_tokens")
                  if isinstance(getattr(usage, k, None), int)}
        return text, finish, counts

    def close(self) -> None:
        self._client.close()


def _first_choice(resp: Any) -> Any:
    choices = getattr(resp, "choices", None)
    if isinstance(resp, str) or not choices:
        raise _Malformed(f"malformed response: no choices ({str(resp)[:120]!r})")
    return choices[0]
