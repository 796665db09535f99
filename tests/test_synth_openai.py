"""The OpenAI-compatible teacher against a REAL server process on localhost (tunelens' mini server, tiny-llama),
through the official ``openai`` client: timeouts, retries, malformed/empty answers, bounded concurrency, the API
key never on disk or in logs, and a killed run that resumes without repeating a finished request."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tunelens.config import load_config
from tunelens.data.synth import SynthConfig, TeacherRequest, run_synth
from tunelens.data.synth.serve import free_port, start_server, stop_server, wait_ready
from tunelens.data.synth.teachers import SamplingParams
from tunelens.data.synth.teachers.openai_api import OpenAITeacher

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "TUNELENS_TEST_MINI_KEY"
SECRET = "sk-test-9f3b2c71d0e84a6b-never-on-disk"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A mini server (tiny-llama) that requires ``Authorization: Bearer $TUNELENS_TEST_MINI_KEY``."""
    port = free_port()
    log = tmp_path_factory.mktemp("mini") / "server.log"
    env = {KEY_ENV: SECRET, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = start_server([sys.executable, "-m", "tunelens.data.synth.mini_server", "--model", "tiny-llama",
                         "--port", str(port), "--served-name", "mini", "--api-key-env", KEY_ENV], log, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, timeout_s=180, log_path=log)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.replace("/v1", "/stats"), timeout=10) as r:
        return json.loads(r.read())


def settled_total(url: str, timeout: float = 30.0) -> int:
    """The server's request total once nothing is in flight (requests abandoned by a client still finish)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = stats(url)
        if s["in_flight"] == 0:
            time.sleep(0.3)
            if stats(url) == s:
                return s["total"]
        time.sleep(0.2)
    raise AssertionError("the server never settled")


def teacher(url: str, fmt: str = "completion", **kw) -> OpenAITeacher:
    opts = dict(api_key_env=KEY_ENV, prompt_format=fmt, timeout_s=2.0, max_retries=2, backoff_s=0.05,
                concurrency=4)
    opts.update(kw)
    return OpenAITeacher("mini", url, SamplingParams(max_tokens=6), **opts)


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_faults_are_results_not_exceptions(server, fmt):
    t = teacher(server, fmt)
    tag = f"{fmt}-{time.time_ns()}"  # fresh prompts: the server counts failures per prompt
    prompts = [f"Once upon a time {tag}", f"{tag} [[slow:5]]", f"{tag} [[fail:1]]", f"{tag} [[fail:99]]",
               f"{tag} [[malformed]]", f"{tag} [[badjson]]", f"{tag} [[empty]]"]
    ok, slow, flaky, broken, malformed, badjson, empty = t.complete([TeacherRequest(prompt=p) for p in prompts])
    t.close()
    assert ok.ok and ok.text and ok.usage["completion_tokens"] == 6 and ok.finish_reason == "length"
    assert slow.finish_reason == "timeout" and "Timeout" in slow.error and slow.attempts == 3
    assert flaky.ok and flaky.attempts == 2 and flaky.text  # an error first, then the answer
    assert broken.finish_reason == "error" and "500" in broken.error and broken.attempts == 3
    assert "malformed response" in malformed.error and malformed.attempts == 3
    assert "malformed response" in badjson.error
    assert empty.ok and empty.text == ""


def test_unauthorised_is_not_retried_and_not_fatal(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-1234567890")
    res = teacher(server).complete([TeacherRequest(prompt="hello")])[0]
    assert res.finish_reason == "error" and "401" in res.error and res.attempts == 1
    assert "sk-wrong-key" not in res.error


def test_concurrency_is_bounded(server):
    deadline = time.time() + 30
    while stats(server)["in_flight"] and time.time() < deadline:  # timed-out requests of other tests still sleep
        time.sleep(0.2)
    req = urllib.request.Request(server.replace("/v1", "/stats/reset_max"), data=b"{}", method="POST")
    assert json.loads(urllib.request.urlopen(req, timeout=10).read())["max_in_flight"] == 0
    t = teacher(server, concurrency=2, timeout_s=10)
    got = t.complete([TeacherRequest(prompt=f"c{i} {time.time_ns()} [[slow:0.4]]") for i in range(6)])
    assert all(r.ok for r in got)
    assert stats(server)["max_in_flight"] == 2


def _marker_docs(path: Path, markers: list[str]) -> Path:
    words = ("the old clock in the hall struck nine as rain fell on the roof and the dog slept by the fire "
             "while the children read their books in the warm kitchen").split()
    import random

    rng = random.Random(len(markers))
    with open(path, "w") as f:
        for i, m in enumerate(markers):
            body = " ".join(rng.choice(words) for _ in range(60))  # distinct docs: no near-duplicates
            f.write(json.dumps({"text": f"{m} Doc {i}. {body}."}) + "\n")
    return path


def _cfg(src: Path, url: str, *extra: str) -> SynthConfig:
    return load_config(SynthConfig, None, [
        f"sources=[{{path: {src}}}]", "chunk.tokenizer=tiny-llama", "chunk.passage_tokens=200", "chunk.min_tokens=8",
        "split.min_prompt=4", "split.min_continuation=4", "filters.min_response_words=1",
        "filters.drop_repetitive=false",
        "teacher.kind=openai", f"teacher.base_url={url}", "teacher.model=mini", f"teacher.api_key_env={KEY_ENV}",
        "teacher.prompt_format=completion", "teacher.max_tokens=6", "teacher.timeout_s=2", "teacher.max_retries=1",
        "teacher.backoff_s=0.05", "teacher.concurrency=4", *extra])


def test_pipeline_counts_bad_responses(server, tmp_path):
    markers = ["", "", "[[fail:1]]", "[[fail:99]]", "[[malformed]]", "[[badjson]]", "[[empty]]", "[[slow:5]]"]
    src = _marker_docs(tmp_path / "docs.jsonl", markers)
    res = run_synth(_cfg(src, server), tmp_path / "out")
    c = res.report["counts"]
    assert c["pairs_to_complete"] == 8 and c["requests_sent"] == 8
    assert c["teacher_errors"] == 3 and c["teacher_malformed"] == 2 and c["teacher_timeouts"] == 1
    # 4 answered (2 plain, fail:1 after a retry, [[empty]]); the random tiny model may also answer whitespace
    assert c["empty_outputs"] >= 1 and res.report["written"] + c["empty_outputs"] == 4
    assert c["teacher_attempts"] == 2 + 2 + 3 * 2 + 1 + 2  # ok x2, fail:1 twice, 3 errors x2, empty, timeout x2
    rejected = [json.loads(line) for line in open(tmp_path / "out" / "rejected.jsonl")]
    by_line = {r["source_id"].rsplit(":", 1)[1]: r["reason"] for r in rejected}
    assert {k: v for k, v in by_line.items() if k not in "123"} == {
        "4": "teacher_error", "5": "teacher_error", "6": "teacher_error", "7": "empty_output", "8": "teacher_timeout"}
    assert "500" in next(r["detail"] for r in rejected if r["source_id"].endswith(":4"))
    prov = [json.loads(line)["provenance"] for line in open(res.pairs_path)]
    assert {p["teacher"]["base_url"] for p in prov} == {server}
    assert all(p["teacher"]["params"]["max_tokens"] == 6 for p in prov)


def test_api_key_never_on_disk_or_in_logs(server, tmp_path, caplog):
    src = _marker_docs(tmp_path / "docs.jsonl", ["", "", "[[fail:1]]", "[[fail:99]]"])
    with caplog.at_level(logging.DEBUG):
        res = run_synth(_cfg(src, server), tmp_path / "out")
    assert res.report["written"] == 3  # the server demands the key: it was sent
    assert caplog.records  # the client logged at DEBUG, and still no key
    assert SECRET not in caplog.text
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "pairs.jsonl", "report.json", "teacher_cache.jsonl"}
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    assert KEY_ENV in (tmp_path / "out" / "config.yaml").read_text()  # the variable's name only


class _InterruptAfter:
    """The real OpenAI teacher, interrupted (KeyboardInterrupt, like Ctrl-C) after ``k`` finished requests."""

    def __init__(self, inner: OpenAITeacher, k: int):
        self.inner, self.k, self.name, self.batch_size = inner, k, inner.name, inner.batch_size
        self.seen = 0

    def identity(self):
        return self.inner.identity()

    def complete(self, requests, on_result=None):
        def cb(i, r):
            on_result(i, r)
            self.seen += 1
            if self.seen >= self.k:
                raise KeyboardInterrupt

        return self.inner.complete(requests, on_result=cb)

    def close(self):
        self.inner.close()


def test_interrupted_run_resumes_without_repeating_requests(server, tmp_path):
    n = 8
    src = _marker_docs(tmp_path / "docs.jsonl", [f"[[r{i}]]" for i in range(n)])
    cfg = _cfg(src, server, "teacher.concurrency=1", "request_batch=8")
    base = settled_total(server)
    with pytest.raises(KeyboardInterrupt):
        run_synth(cfg, tmp_path / "out", teacher=_InterruptAfter(teacher(server, concurrency=1), 3))
    sent = settled_total(server) - base
    assert sent in (3, 4)  # queued requests were cancelled; the one in flight (concurrency 1) may have gone out
    cache = tmp_path / "out" / "teacher_cache.jsonl"
    cached = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(cached) == 3  # each result was stored as it arrived
    res = run_synth(cfg, tmp_path / "out")
    assert res.report["counts"]["cache_hits"] == 3 and res.report["counts"]["requests_sent"] == n - 3
    assert settled_total(server) - base == sent + n - 3  # nothing already cached was requested again
    by_prompt = stats(server)["by_prompt"]
    import hashlib

    rows = [json.loads(line) for line in open(res.pairs_path)]
    counts = [by_prompt[hashlib.sha256(r["messages"][0]["content"].encode()).hexdigest()] for r in rows]
    assert all(c == 1 for r, c in zip(rows, counts) if r["provenance"]["key"] in cached)
    assert max(counts) <= 2 and len(rows) + res.report["counts"]["empty_outputs"] == n


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_requests(server, tmp_path, start_cli, run_cli):
    n = 10
    src = _marker_docs(tmp_path / "docs.jsonl", ["[[slow:0.6]]"] * n)
    out = tmp_path / "run"
    args = ["synth", "configs/synth-openai.yaml", "--out", out, f"sources=[{{path: {src}}}]",
            "chunk.tokenizer=tiny-llama", "chunk.passage_tokens=200", "chunk.min_tokens=8", "split.min_prompt=4",
            "split.min_continuation=4", "filters.min_response_words=1", "filters.drop_repetitive=false",
            f"teacher.base_url={server}", "teacher.model=mini", f"teacher.api_key_env={KEY_ENV}",
            "teacher.max_tokens=4", "teacher.concurrency=1", "request_batch=4", "max_pairs=null"]
    base = settled_total(server)
    proc = start_cli(*args, env={KEY_ENV: SECRET})
    cache = out / "teacher_cache.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    cached = len([line for line in cache.read_text().splitlines() if line.strip()])
    assert 3 <= cached < n
    sent_before = settled_total(server) - base
    assert sent_before in (cached, cached + 1)  # at most one request was in flight (concurrency 1)
    r = run_cli(*args, env={KEY_ENV: SECRET})
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["cache_hits"] == cached and report["counts"]["requests_sent"] == n - cached
    assert settled_total(server) - base - sent_before == n - cached  # counted on the server
    assert report["written"] == n
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines() if line.strip()]
    assert len(keys) == len(set(keys)) == n
