"""Which parameters train: full fine-tuning, LoRA (peft) or QK-only (query/key projections)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tunelens.errors import ConfigError

MODES = ("full", "lora", "qk")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


def apply_finetune_mode(model: nn.Module, mode: str, lora: LoraSettings | None = None,
                        qk_modules: tuple[str, ...] = ("q_proj", "k_proj")) -> nn.Module:
    """Return the model prepared for ``mode``; only the parameters that should train keep requires_grad."""
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = lora or LoraSettings()
        targets = lora.target_modules
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                         target_modules=targets[0] if targets == ["all-linear"] else list(targets))
        return get_peft_model(model, cfg)
    if mode == "qk":
        return _qk_only(model, qk_modules)
    raise ConfigError(f"Unknown finetune mode '{mode}'; choose one of {MODES}.")


def _qk_only(model: nn.Module, qk_modules: tuple[str, ...]) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    hits = [name for name, mod in model.named_modules() if name.rsplit(".", 1)[-1] in qk_modules]
    if not hits:
        attn = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                       if isinstance(m, nn.Linear) and "attn" in n.lower()})
        raise ConfigError(
            f"QK-only tuning found no modules named {list(qk_modules)} in {type(model).__name__}; its attention "
            f"linear layers are {attn}. Set qk_modules to the query/key projection names (fused QKV projections "
            "such as GPT-2's c_attn cannot be split into query/key only)."
        )
    for name in hits:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with requires_grad, tied weights once, in a deterministic order."""
    seen: set[int] = set()
    out = []
    for _, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
