"""A small, real OpenAI-compatible HTTP server around a local model, with fault injection for tests.

``python -m tunelens.data.synth.mini_server --model tiny-llama --port 8011`` serves ``GET /v1/models``,
``POST /v1/completions`` and ``POST /v1/chat/completions`` (non-streaming) over a socket; generation runs
through :class:`~tunelens.data.synth.teachers.hf.HFTeacher` (one request at a time). It is what the test suite
starts to exercise the OpenAI teacher through the official client when vLLM is not installed.

Faults, chosen per request by a marker in the prompt (so one server covers every case):
``[[slow:S]]`` sleep S seconds first; ``[[fail:N]]`` answer 500 to the first N requests with that prompt;
``[[malformed]]`` answer 200 with ``{"choices": []}``; ``[[badjson]]`` answer 200 with a body that is not
JSON; ``[[empty]]`` answer with empty text. ``--delay S`` delays every request; ``--api-key-env VAR``
requires ``Authorization: Bearer $VAR``. ``GET /stats`` returns request counts (total, per path, per prompt
sha256) and the most requests ever in flight at once (``POST /stats/reset_max`` restarts that count).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["make_server", "main"]

_SLOW = re.compile(r"\[\[slow:([0-9.]+)\]\]")
_FAIL = re.compile(r"\[\[fail:(\d+)\]\]")


class _State:
    def __init__(self, teacher: Any, served_name: str, delay: float, api_key: str | None):
        self.teacher, self.served_name, self.delay, self.api_key = teacher, served_name, delay, api_key
        self.lock = threading.Lock()  # one generation at a time
        self.stats_lock = threading.Lock()
        self.by_path: Counter = Counter()
        self.by_prompt: Counter = Counter()
        self.total = 0
        self.in_flight = 0
        self.max_in_flight = 0


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])
    p = body.get("prompt", "")
    return p if isinstance(p, str) else json.dumps(p)


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, payload: Any, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": state.served_name, "object": "model"}]})
            elif self.path.rstrip("/") == "/stats":
                with state.stats_lock:
                    self._send(200, {"total": state.total, "by_path": dict(state.by_path),
                                     "by_prompt": dict(state.by_prompt), "in_flight": state.in_flight,
                                     "max_in_flight": state.max_in_flight})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") == "/stats/reset_max":  # max_in_flight := requests in flight now
                with state.stats_lock:
                    state.max_in_flight = state.in_flight
                    self._send(200, {"max_in_flight": state.max_in_flight})
                return
            with state.stats_lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self._post()
            finally:
                with state.stats_lock:
                    state.in_flight -= 1

        def _post(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            path = self.path.rstrip("/")
            if path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            prompt = _prompt_text(body)
            key = hashlib.sha256(prompt.encode()).hexdigest()
            with state.stats_lock:
                state.total += 1
                state.by_path[path] += 1
                state.by_prompt[key] += 1
                seen = state.by_prompt[key]
            if state.api_key and self.headers.get("Authorization") != f"Bearer {state.api_key}":
                self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return
            slow = _SLOW.search(prompt)
            time.sleep(state.delay + (float(slow.group(1)) if slow else 0.0))
            fail = _FAIL.search(prompt)
            if fail and seen <= int(fail.group(1)):
                self._send(500, {"error": {"message": f"injected failure {seen}", "type": "server_error"}})
                return
            if "[[badjson]]" in prompt:
                self._send(200, None, raw=b"<html>this is not json</html>")
                return
            if "[[malformed]]" in prompt:
                self._send(200, {"id": "x", "object": "text_completion", "choices": []})
                return
            try:
                text, finish, usage = ("", "stop", {"prompt_tokens": 0, "completion_tokens": 0}) \
                    if "[[empty]]" in prompt else self._generate(body, path)
            except Exception as exc:  # a generation failure is a 500, like a real server's
                self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}})
                return
            self._send(200, self._payload(path, text, finish, usage))

        def _generate(self, body: dict[str, Any], path: str) -> tuple[str, str, dict[str, int]]:
            from tunelens.data.synth.teachers.base import SamplingParams, TeacherRequest

            stop = body.get("stop") or ()
            params = SamplingParams(max_tokens=int(body.get("max_tokens") or 16),
                                    temperature=float(body.get("temperature") or 0.0),
                                    top_p=float(body.get("top_p") or 1.0), seed=int(body.get("seed") or 0),
                                    stop=tuple([stop] if isinstance(stop, str) else stop))
            req = TeacherRequest(messages=tuple(body["messages"])) if "messages" in body else \
                TeacherRequest(prompt=str(body.get("prompt", "")))
            with state.lock:
                state.teacher.params = params
                res = state.teacher.complete([req])[0]
            if not res.ok:
                raise RuntimeError(res.error)
            return res.text, res.finish_reason, {**res.usage, "total_tokens": sum(res.usage.values())}

        def _payload(self, path: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
            base = {"id": f"cmpl-{state.total}", "created": int(time.time()), "model": state.served_name,
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, **usage}}
            if path == "/v1/completions":
                return {**base, "object": "text_completion",
                        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
            return {**base, "object": "chat.completion",
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": text}}]}

    return Handler


def make_server(model: str, port: int, served_name: str = "mini", delay: float = 0.0,
                api_key: str | None = None, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A ready-to-serve server (call ``serve_forever``) around ``model`` (a tunelens model spec)."""
    from tunelens.data.synth.teachers.hf import HFTeacher

    teacher = HFTeacher(model, prompt_format="completion", batch_size=1, bf16=True)
    if getattr(teacher.tokenizer, "chat_template", None):
        teacher.prompt_format = "chat"  # used only for requests with messages; completion requests have none
    server = ThreadingHTTPServer((host, port), _handler(_State(teacher, served_name, delay, api_key)))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--served-name", default="mini")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--api-key-env", default=None, help="require the key held by this environment variable")
    a = ap.parse_args(argv)
    key = os.environ.get(a.api_key_env) if a.api_key_env else None
    server = make_server(a.model, a.port, a.served_name, a.delay, key, a.host)
    print(f"serving {a.model} as {a.served_name!r} on http://{a.host}:{a.port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
