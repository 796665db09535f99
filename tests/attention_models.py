"""Models and batches shared by the attention tests (capture and steering): presets with attention far from
uniform, a Gemma-3 whose sliding window really cuts, left-padded random batches, and a model whose attention
bypasses the attention interface."""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput

from tunelens.models import load_model
from tunelens.models.presets import tiny_tokenizer

PRESETS = ["tiny-llama", "tiny-gpt2", "tiny-gemma3", "gemma3-window"]


def gemma3_window():
    """Gemma-3 with a 6-token window on alternate layers, so sliding masks really cut (the preset's is 512)."""
    tok = tiny_tokenizer()
    cfg = AutoConfig.for_model("gemma3_text", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               sliding_window=6, pad_token_id=tok.pad_token_id,
                               layer_types=["sliding_attention", "full_attention"] * 2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval(), tok


def widened_model(preset: str):
    """(sdpa model, tokenizer) with 2-D weights redrawn wider (seeded), so attention is far from uniform."""
    model, tok = gemma3_window() if preset == "gemma3-window" else load_model(preset)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model, tok


def left_padded_batch(lengths, seed=0, pad_id=3) -> dict[str, torch.Tensor]:
    """Left-padded random ids, attention mask (zeros on padding) and position ids."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(10, 8000, (n,), generator=g)
        mask[i, width - n:] = 1
    return dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))


class BypassConfig(PretrainedConfig):
    model_type = "tunelens-bypass-test"

    def __init__(self, vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        super().__init__(**kwargs)


class BypassAttention(nn.Module):
    """Hand-written attention that never looks at the attention interface."""

    def __init__(self, d: int):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


class BypassLM(PreTrainedModel):
    """A causal LM that claims SDPA but computes attention by hand: capture and steering must refuse it."""

    config_class = BypassConfig
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.attn = BypassAttention(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, **kwargs):
        return CausalLMOutput(logits=self.head(self.attn(self.embed(input_ids))))
