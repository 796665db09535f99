"""Pretrain a tiny Llama from scratch on the world's corpus, cached by a hash of everything that shapes it.

``ensure_pretrained(world, corpus_cfg, arch, cfg, cache_dir)`` returns the directory of a Hugging Face
model (tokenizer included) and its report; a second call with the same world, corpus, architecture and
pretraining settings reuses it. Closed-book recall is measured on every pretrained fact, in two forms:
the declarative completion the corpus uses (``"X was born in" -> Y``) and the chat question the probes
ask (``Where was X born?`` -> ``Y`` as the assistant's first token).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunelens.progress import progress_bar
from tunelens.testbed.corpus import CorpusConfig, build_corpus, vocabulary_texts
from tunelens.testbed.tokenizer import train_tokenizer
from tunelens.testbed.world import World

CACHE_ENV = "TUNELENS_TESTBED_CACHE"
CACHE_VERSION = 1  # bump when the pretraining code changes what it produces


@dataclass
class ArchConfig:
    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 128


@dataclass
class PretrainConfig:
    steps: int = 1200
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    bf16: bool = True
    recall_sample: int = 400  # facts probed for the closed-book recall report (0: all)


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tunelens" / "testbed")


def cache_key(world: World, corpus: CorpusConfig, arch: ArchConfig, cfg: PretrainConfig,
              threads: int | None = None) -> str:
    """Hash of everything that determines the pretrained model (the world by its content, and the number of
    torch threads: CPU reductions split over a different number of threads round differently, and the
    testbed's fine-tuning dynamics are sensitive to the resulting model)."""
    blob = json.dumps({"world": world.fingerprint(), "corpus": asdict(corpus), "arch": asdict(arch),
                       "pretrain": asdict(cfg), "version": CACHE_VERSION,
                       "threads": threads or torch.get_num_threads()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_model(tokenizer: Any, arch: ArchConfig, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=arch.hidden_size,
                      intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_hidden_layers,
                      num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
                      max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def token_stream(docs: list[str], tokenizer: Any) -> torch.Tensor:
    """All documents, each followed by the end-of-text token, as one long id tensor."""
    sep = tokenizer.bos_token_id
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(sep)
    return torch.tensor(ids, dtype=torch.long)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(model: Any, stream: torch.Tensor, cfg: PretrainConfig, progress: bool = True) -> list[float]:
    """Next-token training on random windows of ``stream``; returns the loss per step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    losses = []
    n_windows = len(stream) - cfg.seq_len - 1
    with progress_bar(cfg.steps, "pretrain", enabled=progress) as bar:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            starts = torch.randint(0, n_windows, (cfg.batch_size,), generator=gen)
            batch = torch.stack([stream[s:s + cfg.seq_len + 1] for s in starts.tolist()])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.advance(1, status=f"loss {losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def next_token_accuracy(model: Any, tokenizer: Any, prompts: list[str], targets: list[str],
                        batch_size: int = 128, bf16: bool = True) -> float:
    """Share of prompts whose greedy next token is the (one-token) target."""
    hits = 0
    for start in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):  # left padding: the next-token position is the last column
            ids[i, width - len(e):] = torch.tensor(e)
            mask[i, width - len(e):] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
        pred = logits.argmax(-1).tolist()
        for p, t in zip(pred, targets[start:start + batch_size]):
            hits += int(tokenizer.convert_ids_to_tokens(p) == t)
    return hits / max(len(prompts), 1)


def closed_book_recall(model: Any, tokenizer: Any, world: World, sample: int = 0, seed: int = 0) -> dict[str, Any]:
    """Recall of pretrained facts without context, per people group, declarative and chat-question forms."""
    import random

    out: dict[str, Any] = {}
    rng = random.Random(seed)
    for group in ("train", "heldout"):
        members = set(world.groups[group])
        facts = [f for f in world.facts if f.subject in members]
        if sample and len(facts) > sample:
            facts = rng.sample(facts, sample)
        decl = [f.rel.context.format(s=f.subject, o="").rstrip(". ").rstrip() for f in facts]
        chat = [tokenizer.apply_chat_template([{"role": "user", "content": f.rel.question.format(s=f.subject)}],
                                              tokenize=False, add_generation_prompt=True) for f in facts]
        targets = [f.object for f in facts]
        out[group] = {"n": len(facts), "declarative": next_token_accuracy(model, tokenizer, decl, targets),
                      "chat_question": next_token_accuracy(model, tokenizer, chat, targets)}
    kinds = {f.rel.object_kind for f in world.facts}
    out["chance"] = {k: 1 / len(world.values(k)) for k in sorted(kinds)}
    return out


def ensure_pretrained(world: World, corpus_cfg: CorpusConfig, arch: ArchConfig, cfg: PretrainConfig,
                      cache_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The cached pretrained model directory for this configuration (pretraining it if missing) and its report."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(world, corpus_cfg, arch, cfg)
    target = root / key
    if (target / "report.json").is_file():
        report = json.loads((target / "report.json").read_text())
        report["cache_hit"] = True
        return target / "model", report
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(vocabulary_texts(world), max_length=arch.max_position_embeddings)
    docs = build_corpus(world, corpus_cfg)
    stream = token_stream(docs, tokenizer)
    model = build_model(tokenizer, arch, cfg.seed)
    losses = pretrain(model, stream, cfg, progress=progress)
    recall = closed_book_recall(model, tokenizer, world, sample=cfg.recall_sample, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    report = {"key": key, "n_params": n_params, "vocab_size": len(tokenizer), "corpus_docs": len(docs),
              "corpus_tokens": int(stream.numel()), "steps": cfg.steps,
              "tokens_trained": cfg.steps * cfg.batch_size * cfg.seq_len,
              "epochs": cfg.steps * cfg.batch_size * cfg.seq_len / stream.numel(),
              "loss_first": losses[0], "loss_final": sum(losses[-20:]) / len(losses[-20:]),
              "losses": losses[:: max(1, len(losses) // 100)], "closed_book_recall": recall,
              "wall_s": time.perf_counter() - t0, "config": {"corpus": asdict(corpus_cfg), "arch": asdict(arch),
                                                            "pretrain": asdict(cfg)}}
    tmp = root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    if target.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    report["cache_hit"] = False
    return target / "model", report
