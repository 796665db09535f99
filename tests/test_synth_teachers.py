"""Teachers in-process: the local HF teacher (tiny-llama), gold, the factory, and the judge through the interface."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunelens.config import load_config
from tunelens.data.synth import (GoldTeacher, SamplingParams, SynthConfig, Teacher, TeacherConfig, TeacherRequest,
                                 TeacherResult, make_teacher, run_synth)
from tunelens.data.synth.filters import judge_instruction_like
from tunelens.data.synth.teachers.hf import HFTeacher
from tunelens.errors import ConfigError


@pytest.fixture(scope="module")
def loaded():
    from tunelens.models import load_model

    return load_model("tiny-llama")


PROMPTS = ["The river ran past the old mill and", "Once upon a time", "She opened the door, looked outside, and"]


def test_hf_greedy_is_batched_deterministic_and_bounded(loaded):
    t = HFTeacher("tiny-llama", SamplingParams(max_tokens=7), batch_size=2, loaded=loaded)
    reqs = [TeacherRequest(prompt=p) for p in PROMPTS]
    a, b = t.complete(reqs), HFTeacher("tiny-llama", SamplingParams(max_tokens=7), batch_size=3,
                                       loaded=loaded).complete(reqs)
    assert [r.text for r in a] == [r.text for r in b]  # batch composition does not change greedy outputs
    for req, r in zip(reqs, a):
        assert r.ok and r.usage["completion_tokens"] <= 7
        assert r.usage["prompt_tokens"] == len(t.encode(req))
        assert r.finish_reason in ("stop", "length")
    assert a[0].finish_reason == "length" or a[0].usage["completion_tokens"] < 7
    short = t.complete([TeacherRequest(prompt=PROMPTS[0], max_tokens=2)])[0]
    assert short.usage["completion_tokens"] <= 2 and a[0].text.startswith(short.text.rstrip()[:3])
    ident = t.identity()
    assert ident["kind"] == "hf" and ident["params"]["max_tokens"] == 7 and ident["bf16"] is True


def test_hf_sampling_is_seeded(loaded):
    def run(seed: int) -> list[str]:
        t = HFTeacher("tiny-llama", SamplingParams(max_tokens=8, temperature=1.0, seed=seed), batch_size=3,
                      loaded=loaded)
        return [r.text for r in t.complete([TeacherRequest(prompt=p) for p in PROMPTS])]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_hf_chat_format_and_callbacks(loaded):
    t = HFTeacher("tiny-llama", SamplingParams(max_tokens=4), prompt_format="chat", template="Continue: {text}",
                  system="Be brief.", loaded=loaded)
    ids = t.encode(TeacherRequest(prompt="hello there"))
    rendered = loaded[1].decode(ids)
    assert "Continue: hello there" in rendered and "Be brief." in rendered
    seen: list[int] = []
    got = t.complete([TeacherRequest(prompt="a"), TeacherRequest(prompt="b")], on_result=lambda i, r: seen.append(i))
    assert seen == [0, 1] and all(r.ok for r in got)
    with pytest.raises(ConfigError, match="prompt_format"):
        HFTeacher("tiny-llama", prompt_format="xml", loaded=loaded)


def test_hf_failed_batch_becomes_error_results(loaded, monkeypatch):
    t = HFTeacher("tiny-llama", SamplingParams(max_tokens=4), batch_size=2, loaded=loaded)
    calls = {"n": 0}
    real = t._greedy

    def flaky(prompts, max_new):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(prompts, max_new)

    monkeypatch.setattr(t, "_greedy", flaky)
    got = t.complete([TeacherRequest(prompt=p) for p in PROMPTS])
    assert [r.ok for r in got] == [False, False, True]
    assert "out of memory" in got[0].error and got[0].finish_reason == "error"


def test_factory_and_protocol(loaded):
    gold = make_teacher(TeacherConfig(kind="gold"))
    assert isinstance(gold, Teacher) and isinstance(gold, GoldTeacher)
    assert gold.complete([TeacherRequest(prompt="x", reference="y"), TeacherRequest(prompt="x")])[1].error
    hf = make_teacher(TeacherConfig(kind="hf", model="tiny-llama", max_tokens=3), loaded=loaded)
    assert isinstance(hf, Teacher) and hf.params.max_tokens == 3
    with pytest.raises(ConfigError):
        make_teacher(TeacherConfig(kind="nope"))


class _Judge:
    """Says YES to texts mentioning 'poem', fails on 'crash', answers gibberish on 'mumble'."""

    name, batch_size = "judge", 8

    def identity(self):
        return {"kind": "rule-judge"}

    def complete(self, requests):
        out = []
        for r in requests:
            text = r.prompt.split('"""')[1]
            if "crash" in text:
                out.append(TeacherResult("", "error", error="boom"))
            else:
                out.append(TeacherResult("mmm" if "mumble" in text else " YES." if "poem" in text else "No", "stop"))
        return out

    def close(self):
        pass


def test_judge_verdicts_and_share(tmp_path: Path):
    assert judge_instruction_like(_Judge(), ["write a poem", "a story", "crash", "mumble"]) == [True, False, None,
                                                                                                None]
    src = tmp_path / "docs.jsonl"
    import json

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(src, "w") as f:
        for i in range(6):
            extra = " poem" if i < 2 else ""
            f.write(json.dumps({"text": " ".join(words[(i * 5 + j) % 12] + str(j) for j in range(30)) + extra}) + "\n")
    cfg = load_config(SynthConfig, None, [f"sources=[{{path: {src}}}]", "chunk.tokenizer=tiny-llama",
                                          "chunk.min_tokens=8", "split.min_prompt=4", "split.min_continuation=4",
                                          "teacher.kind=gold", "filters.judge=true", "judge={kind: gold}"])
    res = run_synth(cfg, tmp_path / "out", judge=_Judge())
    ic = res.report["instruction_check"]
    assert ic["judged"] == 6 and ic["flagged"] == 2 and ic["flagged_share"] == pytest.approx(2 / 6)
    rows = [json.loads(line) for line in open(res.pairs_path)]
    assert sum(r["provenance"]["judge_instruction_like"] is True for r in rows) == 2
