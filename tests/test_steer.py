"""tunelens.steer: attention steering through AttentionInterface.

Steering equals an independent eager reference (post-softmax scaling of non-highlighted keys by α, then row
renormalisation, per head) on GQA Llama, GPT-2 and Gemma-3 (sliding windows), SDPA and eager; only steered heads
change; α=1 is bit-identical; KV-cache generation equals full-recompute steering; batch rows keep their highlight
when generation drops finished rows; chat highlights exclude template tokens; bad input raises clear errors.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_outputs import CausalLMOutput

from tunelens.errors import ConfigError
from tunelens.models import load_model
from tunelens.models.presets import tiny_tokenizer
from tunelens.probes.attention_capture import attention_bias, AttentionCall
from tunelens.steer import (HeadSet, Highlight, PromptHighlights, encode_chat, encode_highlighted, resolve_heads,
                            steer)

PRESETS = ["tiny-llama", "tiny-gpt2", "tiny-gemma3", "gemma3-window"]


def _gemma3_window():
    """Gemma-3 with a 6-token window on alternate layers, so sliding masks really cut (the preset's is 512)."""
    tok = tiny_tokenizer()
    cfg = AutoConfig.for_model("gemma3_text", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               sliding_window=6, pad_token_id=tok.pad_token_id,
                               layer_types=["sliding_attention", "full_attention"] * 2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval(), tok


@lru_cache(maxsize=None)
def _model(preset: str):
    """An sdpa model with weights redrawn wider, so attention is far from uniform and steering shows."""
    model, tok = _gemma3_window() if preset == "gemma3-window" else load_model(preset)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval(), tok


def _batch(lengths=(19, 7, 13), seed=0, pad_id=3):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    hl = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(10, 8000, (n,), generator=g)
        mask[i, width - n:] = 1
        start = width - n + 1 + i % 2  # a different span per row
        hl[i, start:start + max(2, n // 3)] = True
    return dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)), hl


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


class _BypassConfig(PretrainedConfig):
    model_type = "tunelens-steer-bypass-test"

    def __init__(self, vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        super().__init__(**kwargs)


class _BypassLM(PreTrainedModel):
    config_class = _BypassConfig
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, **kwargs):
        q, k, v = self.qkv(self.embed(input_ids)).chunk(3, dim=-1)
        return CausalLMOutput(logits=self.head(torch.softmax(q @ k.transpose(-1, -2), -1) @ v))


def test_model_bypassing_attention_interface_raises():
    model = _BypassLM(_BypassConfig()).eval()
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
