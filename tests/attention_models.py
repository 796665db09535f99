"""Models and batches shared by the attention tests (capture and steering): presets with attention far from
uniform, a Gemma-3 whose sliding window really cuts, and left-padded random batches."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

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
