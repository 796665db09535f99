"""Load any causal LM (presets, HF directories or ids, GGUF), choose what trains, save it back."""
from tunelens.models.finetune import MODES, LoraSettings, apply_finetune_mode, trainable_parameters
from tunelens.models.gguf import cache_root, convert_gguf
from tunelens.models.loading import count_parameters, load_model, resolve_dtype
from tunelens.models.presets import PRESETS, Preset, register_preset, tiny_tokenizer
from tunelens.models.saving import is_peft, save_model

__all__ = [
    "MODES", "LoraSettings", "apply_finetune_mode", "trainable_parameters", "cache_root", "convert_gguf",
    "count_parameters", "load_model", "resolve_dtype", "PRESETS", "Preset", "register_preset", "tiny_tokenizer",
    "is_peft", "save_model",
]
