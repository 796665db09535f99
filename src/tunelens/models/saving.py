"""Save models as standard Hugging Face directories (safetensors), atomically."""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Write ``out_dir`` so ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.

    A LoRA model is saved merged into its base (plus the adapter alone in ``out_dir/adapter``).
    The directory is written under a temporary name and renamed, so it is never half-written.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    to_save = model
    if is_peft(model):
        model.save_pretrained(tmp / "adapter")
        to_save = copy.deepcopy(model).merge_and_unload()
    config = to_save.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    to_save.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir
