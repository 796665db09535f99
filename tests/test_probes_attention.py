"""probes.attention_capture and the attention suite.

Captured probabilities (SDPA or eager underneath, left-padded batches, sliding windows, KV-cache steps) equal the
eager ``output_attentions=True`` rows; capturing leaves logits unchanged and restores the implementation; a model
whose attention bypasses ``AttentionInterface`` raises a ConfigError; suite masses partition the prompt.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch

from attention_models import PRESETS, BypassConfig, BypassLM, left_padded_batch, widened_model
from tunelens.errors import ConfigError
from tunelens.models import load_model
from tunelens.probes.attention_capture import capture_attention, intercept_attention
from tunelens.probes.items import load_conflicts
from tunelens.probes.runner import run
from tunelens.probes.settings import ProbeSettings
from tunelens.probes.suites.attention import SPANS, attention_heatmap, prompt_spans, span_masses
from tunelens.probes.suites.conflicts import _parts, _prefix
from tunelens.probes.prompts import build_prompt

@lru_cache(maxsize=None)
def _models(preset: str):
    """(sdpa model, eager copy, tokenizer), weights redrawn wider so attention is far from uniform."""
    model, tok = widened_model(preset)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return model, eager, tok


def _batch(lengths=(23, 5, 16), seed=0, pad_id=3):
    return left_padded_batch(lengths, seed, pad_id)


def _close_on_real_rows(captured: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> None:
    """captured/reference: [layers, batch, heads, q, kv]; compare rows of real (unpadded) query tokens."""
    for b in range(mask.shape[0]):
        rows = mask[b].bool().nonzero().squeeze(-1)
        torch.testing.assert_close(captured[:, b][:, :, rows], reference[:, b][:, :, rows].float(),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("preset", PRESETS)
def test_capture_equals_eager_attentions_and_keeps_logits(preset, impl):
    sdpa, eager, _ = _models(preset)
    model = sdpa if impl == "sdpa" else eager
    batch = _batch()
    with torch.no_grad():
        ref = eager(**batch, output_attentions=True)
        plain = model(**batch).logits
        with capture_attention(model, "all") as cap:
            captured_logits = model(**batch).logits
    assert model.config._attn_implementation == impl
    reference = torch.stack(ref.attentions)
    assert reference.max() > 0.5  # peaked attention: the comparison is sensitive to mask/scale errors
    stacked = cap.stacked()
    assert stacked.shape == reference.shape and stacked.dtype == torch.float32
    assert len(cap.attentions) == model.config.num_hidden_layers
    _close_on_real_rows(stacked, reference, batch["attention_mask"])
    torch.testing.assert_close(captured_logits, plain, atol=1e-6, rtol=0)

    # "last" (the default) and explicit positions pick the same rows as "all"
    with torch.no_grad(), capture_attention(model) as last, capture_attention(model, [0, -1, 7]) as some:
        model(**batch)
    torch.testing.assert_close(last.stacked(), stacked[:, :, :, -1:])
    torch.testing.assert_close(some.stacked(), stacked[:, :, :, [0, -1, 7]])


@pytest.mark.parametrize("preset", ["tiny-llama", "gemma3-window"])
def test_capture_unpadded_and_cached_decoding(preset):
    """No padding (SDPA gets no mask: is_causal) and one KV-cache decoding step (q_len 1) match eager too."""
    sdpa, eager, _ = _models(preset)
    full = _batch((12, 12), seed=3)
    with torch.no_grad():
        reference = torch.stack(eager(**full, output_attentions=True).attentions)
        with capture_attention(sdpa, "all") as cap:
            sdpa(**full)
        _close_on_real_rows(cap.stacked(), reference, full["attention_mask"])

        padded = _batch((12, 7), seed=4)
        reference = torch.stack(eager(**padded, output_attentions=True).attentions)
        head = {k: v[:, :-1] for k, v in padded.items()}
        cache = sdpa(**head, use_cache=True).past_key_values
        with capture_attention(sdpa, "last") as step:
            sdpa(input_ids=padded["input_ids"][:, -1:], attention_mask=padded["attention_mask"],
                 position_ids=padded["position_ids"][:, -1:], past_key_values=cache, use_cache=True)
    for layer, probs in enumerate(step.attentions):  # a sliding layer's cache keeps only its window of keys
        kv = probs.shape[-1]
        last = reference[layer, :, :, -1:].float()
        torch.testing.assert_close(probs, last[..., -kv:], atol=1e-5, rtol=0)
        assert last[..., :last.shape[-1] - kv].sum() < 1e-6
    assert {p.shape[-1] for p in step.attentions} == ({12} if preset == "tiny-llama" else {6, 12})


def test_capture_restores_implementation_even_on_error():
    sdpa, eager, _ = _models("tiny-llama")
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(sdpa):
            assert sdpa.config._attn_implementation.startswith("tunelens_")
            raise RuntimeError("boom")
    assert sdpa.config._attn_implementation == "sdpa"
    assert sdpa.model.config._attn_implementation == "sdpa"
    with capture_attention(eager):
        pass
    assert eager.config._attn_implementation == "eager"

    seen = []
    with capture_attention(sdpa) as cap, intercept_attention(sdpa, lambda call: seen.append(call.layer)):
        with torch.no_grad():
            sdpa(**_batch())
    assert seen == [0, 1, 2, 3] and len(cap.attentions) == 4  # nested handlers both see every layer


def test_model_bypassing_the_interface_raises_clear_error():
    model = BypassLM(BypassConfig()).eval()
    ids = torch.randint(0, 32, (1, 5))
    with pytest.raises(ConfigError, match="BypassLM.*AttentionInterface"):
        with capture_attention(model):
            model(ids)
    assert model.config._attn_implementation == "sdpa"


def test_forward_that_never_reaches_the_interface_raises(monkeypatch):
    """A model that switches implementation but whose layers look their function up elsewhere."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama import modeling_llama

    class FixedLookup:
        def get_interface(self, name, default):
            return sdpa_attention_forward

    sdpa, _, _ = _models("tiny-llama")
    monkeypatch.setattr(modeling_llama, "ALL_ATTENTION_FUNCTIONS", FixedLookup())
    with pytest.raises(ConfigError, match="LlamaForCausalLM.*forward pass finished without"):
        with torch.no_grad(), capture_attention(sdpa):
            sdpa(**_batch())
    assert sdpa.config._attn_implementation == "sdpa"


def test_span_masses_partition_each_head():
    model, tok = load_model("tiny-llama")
    items = load_conflicts("world_facts", limit=3)
    settings = ProbeSettings(batch_size=2, progress=False, system="Be brief.")
    for variant in ("raw", "chat", "tulu"):
        prompts = [build_prompt(variant, _parts(it), tok, system=settings.system,
                                response_prefix=_prefix(variant, it)) for it in items]
        spans = prompt_spans(prompts[0])
        assert "context" in spans and "user_rest" in spans and "system" in spans
        masses = span_masses(model, prompts, settings)
        assert masses.shape == (3, 4, 4, len(SPANS))
        assert (masses >= 0).all()
        assert abs(masses.sum(-1) - 1).max() < 1e-5


def test_runner_attention_suite(tmp_path):
    model, tok = load_model("tiny-llama")
    report = run(model, tok, "attention", "raw,chat", ProbeSettings(limit=3, progress=False))
    assert model.config._attn_implementation == "sdpa"
    assert [(r.suite, r.variant) for r in report.results] == [("attention:world_facts", "raw"),
                                                              ("attention:world_facts", "chat")]
    for r in report.results:
        m = r.metrics
        assert r.n == 3 and m["n"] == 3.0
        assert all(isinstance(v, float) for v in m.values())
        for key, value in m.items():
            if key not in ("n", "best_layer", "best_head"):
                assert 0.0 <= value <= 1.0 + 1e-9, (key, value)
        total = m["user_mass"] + m["template_mass"] + m["bos_mass"] + m["system_mass"] + m["prefix_mass"]
        assert abs(total - 1) < 1e-5
        assert abs(m["context_mass"] + m["user_rest_mass"] - m["user_mass"]) < 1e-9
        assert m["user_mass_renorm"] >= m["user_mass"]
        assert m["best_layer"] == 2.0 and 0 <= m["best_head"] < 4
        mean = r.records[0]
        assert mean["id"] == "__mean__"
        grid = mean["per_layer_head"]
        assert len(grid["mass"]) == 4 and len(grid["mass"][0]) == 4 and len(grid["mass"][0][0]) == len(SPANS)
        assert grid["user_mass"][2][int(m["best_head"])] == pytest.approx(m["user_mass_best_head"])
        assert [rec["id"] for rec in r.records[1:]] == [f"world_facts:{i}" for i in range(3)]
        assert len(r.records[1]["per_layer"]["context"]) == 4
    raw, chat = report.results
    assert raw.metrics["prefix_mass"] > 0 and chat.metrics["prefix_mass"] == 0  # raw opens the answer: "Answer:"
    assert chat.metrics["template_mass"] > raw.metrics["template_mass"]
    png = attention_heatmap(chat, tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.save(tmp_path / "out")
    assert (tmp_path / "out" / "records" / "attention_world_facts__chat.jsonl").is_file()
