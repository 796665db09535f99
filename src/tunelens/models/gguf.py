"""GGUF models: load through transformers' ``gguf_file=``, convert once to a cached HF directory.

transformers de-quantises a GGUF to float tensors on every load (tens of seconds) and refuses
``save_pretrained`` on the loaded model, so the first load re-instantiates the model from its config,
copies the state dict and writes a standard safetensors directory under the tunelens cache; later
loads read that directory.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunelens.errors import ModelLoadError


def cache_root() -> Path:
    """Where converted models live: $TUNELENS_CACHE, else ~/.cache/tunelens."""
    return Path(os.environ.get("TUNELENS_CACHE", Path.home() / ".cache" / "tunelens"))


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantise a GGUF into a standard Hugging Face directory (fp32 safetensors + tokenizer), atomically."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    out_dir = Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported GGUFs
        raise ModelLoadError(f"Could not load GGUF {gguf_path}: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(fresh, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF {gguf_path} did not map onto {type(fresh).__name__}: "
                             f"missing={missing[:5]} unexpected={unexpected[:5]}")
    fresh.generation_config = loaded.generation_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def load_cached_gguf(
    gguf_path: str | Path, cache_name: str | None, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF through its cached conversion, converting it on first use."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    name = cache_name or gguf_path.stem
    target = cache_root() / "models" / f"{name}-{_fingerprint(gguf_path)}"
    if not (target / "config.json").is_file():
        convert_gguf(gguf_path, target)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, attn_implementation=attn_implementation)
    return model, tok
