"""``load_model(spec)``: one entry point for presets, local HF directories, GGUF files and hub ids."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunelens.errors import ModelLoadError
from tunelens.models.gguf import load_cached_gguf
from tunelens.models.presets import PRESETS

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name (float32/bf16/...) to a torch dtype, with a clear error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype '{dtype}'; choose one of {sorted(DTYPES)}.") from None


def load_model(
    spec: str,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    ``spec`` is a preset name (``tunelens models`` lists them), a local Hugging Face directory,
    a ``.gguf`` file, or a Hugging Face hub id (used only if already in the local cache, or if the
    hub is reachable). ``seed`` fixes the initialisation of random presets.
    """
    torch_dtype = resolve_dtype(dtype)
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"Unknown attn_implementation '{attn_implementation}'; choose {ATTN_IMPLEMENTATIONS}.")
    if spec in PRESETS:
        model, tok = PRESETS[spec].builder(torch_dtype, attn_implementation, seed)
    elif spec.endswith(".gguf"):
        model, tok = load_cached_gguf(spec, None, torch_dtype, attn_implementation)
    elif Path(spec).is_dir():
        model, tok = _load_dir(spec, torch_dtype, attn_implementation)
    elif Path(spec).exists():
        raise ModelLoadError(f"'{spec}' is a file, not a model directory or a .gguf file.")
    else:
        model, tok = _load_hub(spec, torch_dtype, attn_implementation)
    _ensure_pad_token(tok, model)
    model.eval()
    return model, tok


def _load_dir(path: str, dtype: torch.dtype, attn: str):
    p = Path(path)
    if not (p / "config.json").is_file():
        hint = " (it holds an adapter_config.json: pass the base model and the adapter separately)" \
            if (p / "adapter_config.json").is_file() else ""
        raise ModelLoadError(f"'{path}' has no config.json, so it is not a Hugging Face model directory{hint}.")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the model in '{path}': {exc}") from exc
    return model, tok


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub opens within ``timeout`` seconds (never hangs longer)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(spec: str, dtype: torch.dtype, attn: str):
    def attempt(local_only: bool):
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, attn_implementation=attn,
                                                     local_files_only=local_only)
        return model, tok

    try:
        return attempt(local_only=True)
    except (OSError, ValueError):
        pass
    presets = ", ".join(sorted(PRESETS))
    if not hub_reachable():
        raise ModelLoadError(
            f"'{spec}' is not a preset, a local directory or a .gguf file, it is not in the local Hugging Face "
            f"cache, and the hub cannot be reached (offline). Download it on a connected machine, pass a local "
            f"path, or use a preset: {presets}."
        )
    try:
        return attempt(local_only=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load '{spec}' from the Hugging Face hub: {exc}. Presets: {presets}.") from exc


def _ensure_pad_token(tok: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Batching needs a pad id; fall back to EOS (padding positions are never trained or attended)."""
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        model.generation_config.pad_token_id = tok.pad_token_id


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, counting tied weights once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
