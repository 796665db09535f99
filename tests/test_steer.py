"""tunelens.steer: attention steering through AttentionInterface.

Steering equals an independent eager reference (post-softmax scaling of non-highlighted keys by α, then row
renormalisation, per head) on GQA Llama, GPT-2 and Gemma-3 (sliding windows), SDPA and eager; only steered heads
change; α=1 is bit-identical; KV-cache generation equals full-recompute steering; batch rows keep their highlight
when generation drops finished rows; chat highlights exclude template tokens; bad input raises clear errors.
"""
from __future__ import annotations

import copy
import json
import math
from functools import cache

import numpy as np
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from attention_models import PRESETS, BypassConfig, BypassLM, left_padded_batch, widened_model
from tunelens.errors import ConfigError
from tunelens.probes.attention_capture import AttentionCall, attention_bias
from tunelens.steer import (
    HeadSet,
    Highlight,
    PromptHighlights,
    encode_chat,
    encode_highlighted,
    resolve_heads,
    steer,
)

@cache
def _model(preset: str):
    """An sdpa model with weights redrawn wider, so attention is far from uniform and steering shows."""
    model, tok = widened_model(preset)
    return model.eval(), tok


def _batch(lengths=(19, 7, 13), seed=0, pad_id=3):
    inputs = left_padded_batch(lengths, seed, pad_id)
    width = max(lengths)
    hl = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, n in enumerate(lengths):
        start = width - n + 1 + i % 2  # a different span per row
        hl[i, start:start + max(2, n // 3)] = True
    return inputs, hl


# --------------------------------------------------------------------------- independent reference
_REF = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                         **kwargs):
    """Eager attention, then PASTA's rule on the probabilities: A_ij*α (j not highlighted, j < prompt) for steered
    heads, rows renormalised. State (rows, heads, alpha, prompt_len) comes from _REF."""
    call = AttentionCall(module, "", module.layer_idx, "eager", query, key, value, attention_mask, scaling, dropout,
                         dict(kwargs, softcap=softcap))
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, 1).double()
    v = value.repeat_interleave(groups, 1).double()
    scores = query.double() @ k.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores + attention_bias(call).double(), dim=-1).nan_to_num(0.0)
    heads = _REF["heads"].get(module.layer_idx, ())
    if heads:
        kv = key.shape[-2]
        rows = _REF["rows"]  # [B, P]
        factor = torch.ones(probs.shape[0], kv, dtype=torch.float64)
        p = min(rows.shape[1], kv)
        factor[:, :p] = torch.where(rows[:, :p], 1.0, _REF["alpha"])
        scaled = probs[:, list(heads)] * factor[:, None, None, :]
        probs[:, list(heads)] = scaled / scaled.sum(-1, keepdim=True).clamp_min(1e-300)
    out = (probs @ v).to(query.dtype).transpose(1, 2).contiguous()
    return out, None


AttentionInterface.register("tunelens_test_reference", _reference_attention)
AttentionMaskInterface.register("tunelens_test_reference", AttentionMaskInterface._global_mapping["eager"])


def _reference_logits(model, inputs, rows, heads: HeadSet, alpha):
    _REF.update(rows=rows, heads=heads.heads, alpha=alpha)
    previous = model.config._attn_implementation
    model.set_attn_implementation("tunelens_test_reference")
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        model.set_attn_implementation(previous)


def _real_rows_close(a, b, mask, atol=2e-5):
    for i in range(mask.shape[0]):
        keep = mask[i].bool()
        torch.testing.assert_close(a[i][keep], b[i][keep], atol=atol, rtol=0)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("preset", PRESETS)
def test_steering_equals_eager_reference(preset, impl):
    model, _ = _model(preset)
    model = copy.deepcopy(model) if impl == "eager" else model
    model.set_attn_implementation(impl)
    inputs, hl = _batch()
    heads = resolve_heads(model, {0: [1], 1: [0, 3] if model.config.num_attention_heads > 3 else [0], 3: [2]})
    with torch.no_grad():
        base = model(**inputs).logits
        with steer(model, Highlight(hl), heads=heads, alpha=0.3) as st:
            out = model(**inputs).logits
    ref = _reference_logits(model, inputs, hl, heads, 0.3)
    _real_rows_close(out, ref, inputs["attention_mask"])
    assert (out - base).abs().max() > 1e-3  # steering changed the distribution
    assert st.steered_calls == 3 and model.config._attn_implementation == impl


@pytest.mark.parametrize("preset", PRESETS)
def test_alpha_one_is_bit_identical_and_context_restores(preset):
    model, _ = _model(preset)
    inputs, hl = _batch()
    with torch.no_grad():
        base = model(**inputs).logits
        with steer(model, Highlight(hl), heads="all", alpha=1.0):
            same = model(**inputs).logits
        after = model(**inputs).logits
    assert torch.equal(base, same) and torch.equal(base, after)
    assert model.config._attn_implementation == "sdpa"


def test_only_steered_heads_change():
    """Per-head outputs (input of o_proj) change for the steered heads only."""
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    layer = model.model.layers[1].self_attn
    n, d = model.config.num_attention_heads, model.config.head_dim

    captured = []
    hook = layer.o_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().clone()))
    try:
        with torch.no_grad():
            model(**inputs)
            with steer(model, Highlight(hl), heads={1: [2]}, alpha=0.2):
                model(**inputs)
    finally:
        hook.remove()
    real = inputs["attention_mask"].bool()  # padded query rows are garbage either way (fully masked)
    base, steered = (c.view(*c.shape[:2], n, d)[real] for c in captured)
    diff = (base - steered).abs().amax(dim=(0, 2))
    assert diff[2] > 1e-3 and float(diff[[0, 1, 3]].max()) == 0.0


@pytest.mark.parametrize("preset", PRESETS)
def test_kv_cache_generation_matches_full_recompute(preset):
    """Greedy decode with the cache == argmax of full (no cache) steered forwards over the growing sequence; the
    generated keys are not scaled, the prompt keys still are at every decode step."""
    model, _ = _model(preset)
    inputs, hl = _batch()
    new = 6
    kw = dict(max_new_tokens=new, do_sample=False, min_new_tokens=new, pad_token_id=3, output_scores=True,
              return_dict_in_generate=True)
    with torch.no_grad(), steer(model, Highlight(hl), heads="all", alpha=0.25):
        res = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kw)
        gen = res.sequences
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(new):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    # full recompute: the highlight covers only the prompt width, so generated keys are untouched there too
    assert torch.equal(gen, ids)
    with torch.no_grad():
        plain = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kw)
    assert (plain.scores[-1] - res.scores[-1]).nan_to_num(0.0).abs().max() > 1e-3  # the last decode step is still steered


def test_decode_step_logits_equal_reference_on_full_sequence():
    """The last position's logits of a cached decode step equal the eager reference on the whole sequence."""
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    heads = resolve_heads(model, "all")
    with torch.no_grad(), steer(model, Highlight(hl), heads=heads, alpha=0.4):
        out = model(**inputs, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], 1)
        pos = inputs["attention_mask"].sum(-1, keepdim=True)
        step = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values)
    full = dict(input_ids=torch.cat([inputs["input_ids"], nxt], 1), attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    ref = _reference_logits(model, full, hl, heads, 0.4)
    torch.testing.assert_close(step.logits[:, -1], ref[:, -1], atol=2e-5, rtol=0)


def test_scale_generated_scales_keys_beyond_the_prompt():
    """scale_generated=True: a decode step also down-weights the generated key (reference: highlight extended with
    non-highlighted positions); default: it does not."""
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    heads = resolve_heads(model, "all")
    logits = {}
    for flag in (False, True):
        with torch.no_grad(), steer(model, Highlight(hl), heads=heads, alpha=0.4, scale_generated=flag):
            out = model(**inputs, use_cache=True)
            nxt = torch.full((3, 1), 77)
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], 1)
            pos = inputs["attention_mask"].sum(-1, keepdim=True)
            logits[flag] = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                                 past_key_values=out.past_key_values).logits[:, -1]
    full = dict(input_ids=torch.cat([inputs["input_ids"], nxt], 1), attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    wide = torch.cat([hl, torch.zeros(3, 1, dtype=torch.bool)], 1)
    torch.testing.assert_close(logits[True], _reference_logits(model, full, wide, heads, 0.4)[:, -1], atol=2e-5,
                               rtol=0)
    torch.testing.assert_close(logits[False], _reference_logits(model, full, hl, heads, 0.4)[:, -1], atol=2e-5,
                               rtol=0)
    assert (logits[True] - logits[False]).abs().max() > 1e-4


def test_chat_highlight_drives_generate():
    """encode_chat -> steer -> generate end to end; α=1 reproduces plain generation token for token."""
    model, tok = _model("tiny-llama")
    convs = [[{"role": "user", "content": "Context: Paris is in Italy. Question: where is Paris?"}],
             [{"role": "user", "content": "Say hi"}]]
    inputs, hl = encode_chat(tok, convs)
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id,
              output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(**inputs, **kw)
        with steer(model, hl, alpha=1.0):
            same = model.generate(**inputs, **kw)
        with steer(model, hl, alpha=0.05) as st:
            steered = model.generate(**inputs, **kw)
    assert torch.equal(plain.sequences, same.sequences)
    assert (plain.scores[0] - steered.scores[0]).nan_to_num(0.0).abs().max() > 1e-3
    assert st.forwards == 5 and st.settings()["n_heads"] == 16


def test_rows_keep_their_highlight_when_the_batch_shrinks():
    """Rows dropped from the cache (finished sequences) leave the others steered with their own spans."""
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    with torch.no_grad(), steer(model, Highlight(hl), heads="all", alpha=0.3):
        out = model(**inputs, use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(torch.tensor([2, 0]))
        nxt = out.logits[[2, 0], -1].argmax(-1, keepdim=True)
        mask = torch.cat([inputs["attention_mask"][[2, 0]], torch.ones_like(nxt)], 1)
        pos = inputs["attention_mask"][[2, 0]].sum(-1, keepdim=True)
        step = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache).logits[:, -1]
    full = dict(input_ids=torch.cat([inputs["input_ids"][[2, 0]], nxt], 1), attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    ref = _reference_logits(model, full, hl[[2, 0]], resolve_heads(model, "all"), 0.3)
    torch.testing.assert_close(step, ref[:, -1], atol=2e-5, rtol=0)


def test_prompt_highlights_match_rows_by_content():
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    ph = PromptHighlights()
    for i in range(3):
        keep = inputs["attention_mask"][i].bool()
        ph.add(inputs["input_ids"][i][keep].tolist(), hl[i][keep].tolist())
    with torch.no_grad():
        with steer(model, Highlight(hl), alpha=0.3):
            a = model(**inputs).logits
        with steer(model, ph, alpha=0.3):
            b = model(**inputs).logits
    assert torch.equal(a, b)
    other, _ = _batch(seed=5)
    with pytest.raises(ConfigError, match="not registered"), steer(model, ph, alpha=0.3):
        model(**other)


def test_substring_and_char_span_highlights():
    _, tok = _model("tiny-llama")
    text = "Context: the capital of France is Rome. Question: what is the capital of France?"
    inputs, hl = encode_highlighted(tok, [text, "Rome is far."], ["capital of France is Rome", [(0, 4)]])
    enc = tok(text, return_offsets_mapping=True)
    start = text.index("capital of France is Rome")
    width = inputs["input_ids"].shape[1]
    expected = [s < start + 25 and e > start for s, e in enc["offset_mapping"]]
    assert hl.mask[0, width - len(expected):].tolist() == expected
    assert hl.mask[1].sum() >= 1 and not hl.mask[1, :width - int(inputs["attention_mask"][1].sum())].any()
    with pytest.raises(ConfigError, match="not found"):
        encode_highlighted(tok, [text], ["Paris"])
    with pytest.raises(ConfigError, match="outside"):
        encode_highlighted(tok, [text], [[(5, 500)]])


def test_chat_highlight_is_user_content_only():
    _, tok = _model("tiny-llama")
    convs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Rome?"}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Tell me about Paris"}]]
    inputs, hl = encode_chat(tok, convs)
    for i, conv in enumerate(convs):
        ids = inputs["input_ids"][i][hl.mask[i]]
        text = tok.decode(ids)
        users = "".join(m["content"] for m in conv if m["role"] == "user")
        assert text.replace(" ", "") == users.replace(" ", "")
        assert "<|im_start|>" not in text and "user" not in text.lower().replace("users", "")
    _, last = encode_chat(tok, convs, turns="last")
    assert last.mask[1].sum() < hl.mask[1].sum()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5, float("nan"), "x"])
def test_alpha_out_of_range(alpha):
    model, _ = _model("tiny-llama")
    _, hl = _batch()
    with pytest.raises(ConfigError, match="alpha"), steer(model, Highlight(hl), alpha=alpha):
        pass


def test_head_indices_out_of_range(tmp_path):
    model, _ = _model("tiny-llama")
    _, hl = _batch()
    with pytest.raises(ConfigError, match="heads \\[4\\] are out of range"):
        with steer(model, Highlight(hl), heads={0: [4]}):
            pass
    with pytest.raises(ConfigError, match="layer 9 is out of range"):
        resolve_heads(model, [(9, 0)])
    f = tmp_path / "heads.json"
    f.write_text(json.dumps({"1": [0, 2], "0": [3]}))
    hs = resolve_heads(model, f)
    assert hs.pairs() == [(0, 3), (1, 0), (1, 2)] and len(hs) == 3
    f.write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_heads(model, f)
    with pytest.raises(ConfigError, match="selects no head"), steer(model, Highlight(hl), heads={}):
        pass


def test_highlight_shape_mismatch_and_empty_rows():
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    short = {k: v[:, 1:] for k, v in inputs.items()}
    with pytest.raises(ConfigError, match="covers 19 prompt tokens but the input has only 18"):
        with steer(model, Highlight(hl)):
            model(**short)
    empty = hl.clone()
    empty[1] = False
    with pytest.raises(ConfigError, match="rows \\[1\\] select no token"):
        Highlight(empty)


def test_model_bypassing_attention_interface_raises():
    model = BypassLM(BypassConfig()).eval()
    ids = torch.randint(0, 32, (1, 5))
    with pytest.raises(ConfigError, match="AttentionInterface"):
        with steer(model, torch.ones(1, 5, dtype=torch.bool), alpha=0.5):
            model(ids)


def test_steered_layer_never_reached_raises(monkeypatch):
    """A layer whose attention is computed outside the interface is reported, not silently skipped."""
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    from tunelens.steer import context

    original = context.Steering.__call__

    def skip_layer_1(self, call):
        if call.layer == 1:
            self._calls += 1
            return None
        return original(self, call)

    monkeypatch.setattr(context.Steering, "__call__", skip_layer_1)
    with pytest.raises(ConfigError, match="layers \\[1\\].*never reached"), steer(model, Highlight(hl)):
        model(**inputs)


def test_decode_without_steered_prefill_raises():
    model, _ = _model("tiny-llama")
    inputs, hl = _batch()
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], 1)
    with pytest.raises(ConfigError, match="not prefilled"), steer(model, Highlight(hl)):
        model(input_ids=nxt, attention_mask=mask, past_key_values=out.past_key_values)


# --------------------------------------------------------------------------- head selection
@cache
def _dev():
    from tunelens.steer.devset import build_devset, load_dev_items

    model, tok = _model("tiny-llama")
    items = load_dev_items("capitals", 6)
    return model, tok, items, build_devset(tok, items, "chat", batch_size=4)


def test_devset_margin_matches_probe_loglik():
    """The selection objective equals the probes' loglik scores (same prompts, same answers)."""
    from tunelens.probes.engine import ScoreRequest, score_continuations

    model, _, _, dev = _dev()
    reqs = [ScoreRequest(p.input_ids, [a, b]) for p, (a, b) in zip(dev.prompts, dev.answers)]
    scores = score_continuations(model, reqs, batch_size=3, progress=False)
    expected = sum(float(a) - float(b) for a, b in scores) / len(scores)
    with torch.no_grad():
        assert abs(float(dev.margin(model)) - expected) < 1e-4


@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_gradient_attribution_predicts_profiled_gains():
    """One-pass gradient scores predict the gain of steering each head alone (α near 1: first order holds)."""
    from tunelens.steer.select import attribute_heads, profile_heads

    model, _, _, dev = _dev()
    alpha = 0.95
    prof = profile_heads(model, dev, alpha=alpha, k=4, progress=False)
    grad = attribute_heads(model, dev, method="gradient", k=4, progress=False)
    predicted = -math.log(alpha) * grad.scores  # first-order gain of steering each head at alpha
    assert prof.settings["runs"] == 16 and not np.isnan(prof.scores).any()
    assert np.corrcoef(predicted.ravel(), prof.scores.ravel())[0, 1] > 0.95
    assert np.abs(predicted - prof.scores).max() < 0.15 * np.abs(prof.scores).max() + 1e-4
    assert set(grad.heads.pairs()) & set(prof.heads.pairs())
    # layer-then-head profiling evaluates every layer, then only the heads of the best layers
    layered = profile_heads(model, dev, alpha=alpha, k=2, granularity="layer", top_layers=1, progress=False)
    assert layered.settings["runs"] == 4 + 4 and np.isnan(layered.scores).sum() == 12 and len(layered.heads) == 2


def test_attention_and_ap_attributions(tmp_path):
    from tunelens.probes.attention_capture import capture_attention
    from tunelens.steer.select import attribute_heads

    model, tok, items, dev = _dev()
    att = attribute_heads(model, dev, method="attention", k=3, progress=False)
    assert att.scores.shape == (4, 4) and ((att.scores >= 0) & (att.scores <= 1)).all()
    batch = dev.batches[0]  # recompute one head's mass by hand
    with torch.no_grad(), capture_attention(model, "last") as cap:
        model(**batch.prompt_only)
    mass = (cap.attentions[2][:, 1, 0] * batch.prompt_highlight.mask).sum(-1)
    with torch.no_grad(), capture_attention(model, "last") as cap:
        model(**dev.batches[1].prompt_only)
    mass2 = (cap.attentions[2][:, 1, 0] * dev.batches[1].prompt_highlight.mask).sum(-1)
    assert abs(float(torch.cat([mass, mass2]).mean()) - att.scores[2, 1]) < 1e-6
    ap = attribute_heads(model, dev, method="ap", k=3, tokenizer=tok, items=items, progress=False)
    assert ap.scores.shape == (4, 4) and (ap.scores >= 0).all() and len(ap.heads) == 3
    saved = ap.save(tmp_path / "sel")
    assert json.loads((saved / "heads.json").read_text()) == ap.heads.to_json()
    assert resolve_heads(model, saved / "heads.json").pairs() == ap.heads.pairs()


def test_steer_spec_parsing():
    from tunelens.steer.spec import parse_steer_spec

    spec = parse_steer_spec("alpha=0.5, heads=auto, select=profile-layer, k=8, scale_generated=true")
    assert (spec.alpha, spec.heads, spec.select, spec.k, spec.scale_generated) == (0.5, "auto", "profile-layer", 8, True)
    assert parse_steer_spec(spec.to_dict() | {"resolved_heads": {}, "n_heads": 3}).alpha == 0.5
    for bad, msg in [("alpha=2", "alpha"), ("alpha=0", "alpha"), ("heads=auto,select=magic", "select"),
                     ("k=0", "k must be"), ("alpha", "key=value"), ("beta=1", "unknown key"), ("k=two", "k=")]:
        with pytest.raises(ConfigError, match=msg):
            parse_steer_spec(bad)


# --------------------------------------------------------------------------- probes integration
def test_probe_run_with_steering_records_and_changes_scores():
    from tunelens.probes.runner import run
    from tunelens.probes.settings import ProbeSettings

    model, tok = _model("tiny-llama")

    def probe(steer_spec):
        s = ProbeSettings(mode="loglik", limit=6, batch_size=4, progress=False, no_context_control=True,
                          steer=steer_spec)
        return run(model, tok, "conflicts:world_facts", ["chat", "raw"], s)

    plain = probe(None)
    same = probe({"alpha": 1.0, "heads": "all"})
    steered = probe({"alpha": 0.2, "heads": "all"})
    for a, b, c in zip(plain.results, same.results, steered.results):
        assert [r["logp_ctx"] for r in a.records] == [r["logp_ctx"] for r in b.records]  # alpha=1: identical
        assert max(abs(r1["logp_ctx"] - r2["logp_ctx"]) for r1, r2 in zip(a.records, c.records)) > 1e-3
        assert c.settings["steer"]["alpha"] == 0.2 and c.settings["steer"]["n_heads"] == 16
    assert steered.settings["steer"]["steered_forwards"] > 0 and plain.settings["steer"] is None


def test_probe_steering_highlights_user_content_only():
    """The prompts registered for steering highlight exactly the user-role tokens (no template tokens)."""
    from tunelens.probes.prompts import build_prompt, observe_prompts
    from tunelens.steer.spans import PromptHighlights

    _, tok = _model("tiny-llama")
    seen = PromptHighlights()
    with observe_prompts(lambda p: seen.add(p.input_ids, [r == "user" for r in p.token_roles])):
        prompt = build_prompt("chat", [("context", "Rome is in France."), ("question", " Where is Rome?")], tok,
                              system="Be brief.")
    mask = seen.lookup(prompt.input_ids)
    text = tok.decode([i for i, m in zip(prompt.input_ids, mask) if m])
    assert text.strip() == "Rome is in France. Where is Rome?"
    assert "Be brief" not in text and "<|im_start|>" not in text


@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_cli_probe_with_steering(run_cli, tmp_path):
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"0": [1], "2": [0, 3]}))
    out = tmp_path / "probe"
    res = run_cli("probe", "--model", "tiny-llama", "--suite", "conflicts:world_facts", "--variants", "chat",
                  "--mode", "loglik", "--limit", "4", "--no-control", "--out", out, "--steer",
                  f"alpha=0.3,heads={heads}")
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["steer"]["resolved_heads"] == {"0": [1], "2": [0, 3]}
    assert data["results"][0]["settings"]["steer"]["alpha"] == 0.3
    assert json.loads((out / "steer_heads.json").read_text()) == {"0": [1], "2": [0, 3]}
    bad = run_cli("probe", "--model", "tiny-llama", "--limit", "2", "--out", tmp_path / "bad", "--steer",
                  "alpha=1.5,heads=all")
    assert bad.returncode == 2 and "alpha must lie in (0, 1]" in bad.stderr + bad.stdout
    heads.write_text(json.dumps({"0": [7]}))
    bad = run_cli("probe", "--model", "tiny-llama", "--limit", "2", "--out", tmp_path / "bad", "--steer",
                  f"heads={heads}")
    assert bad.returncode == 2 and "heads [7] are out of range" in bad.stderr + bad.stdout


@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_cli_steer_select_writes_a_reusable_head_file(run_cli, tmp_path):
    out = tmp_path / "sel"
    res = run_cli("steer", "select", "--model", "tiny-llama", "--method", "gradient", "--k", "3", "--dev-n", "4",
                  "--out", out)
    assert res.returncode == 0, res.stderr
    heads = json.loads((out / "heads.json").read_text())
    record = json.loads((out / "selection.json").read_text())
    assert sum(len(v) for v in heads.values()) == 3 and record["heads"] == heads
    assert len(record["scores"]) == 4 and record["settings"]["dev_items"] == 4
    bad = run_cli("steer", "select", "--model", "tiny-llama", "--method", "magic", "--out", out)
    assert bad.returncode == 2 and "select" in bad.stderr


def test_unsupported_attention_implementation_is_a_clear_error():
    """flex/flash kernels are not wrapped: steering says so instead of running unsteered."""
    model, _ = _model("tiny-llama")
    _, hl = _batch()
    flex = copy.deepcopy(model)
    flex.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(ConfigError, match="flex_attention.*set_attn_implementation\\('sdpa'\\)"):
        with steer(flex, Highlight(hl)):
            pass
