"""Evaluation sets built from held-out people: counterfactual conflicts and an in-distribution set.

* Counterfactual conflicts: a held-out person's pretrained fact (never in the mixture), its context
  sentence with the object swapped for another of the same kind, plus distractor sentences with the
  person's true other facts. Written in the ``conflicts`` probe's file format (``context``, ``question``,
  ``answer`` = the context's object, ``memory_answer`` = the pretrained one), so
  ``tunelens.probes.run(model, tok, ["conflicts:<file>"])`` scores it like any conflict set.
* In-distribution: held-out examples of every mixture kind (C+S and S about held-out people, C about
  novel people, generic tasks); accuracy = the greedy answer equals the target (teacher-forced argmax
  on every answer token, one batched forward pass).
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunelens.data.schemas import Example
from tunelens.testbed.mixtures import (
    MixtureConfig,
    _distractors,
    build_mixture,
    render_context,
)
from tunelens.testbed.world import Fact, World


def counterfactual_items(world: World, n: int, distractors: int, seed: int = 0,
                         people: str = "heldout") -> list[dict[str, str]]:
    """Up to ``n`` conflict records about pretrained facts of ``people`` (fields of the conflicts format).

    With ``n`` above the number of facts, each fact appears again with a different swapped object.
    """
    rng = random.Random(f"tunelens-counterfactual-{people}-{seed}")
    members = set(world.groups[people])
    facts = [f for f in world.facts if f.subject in members]
    rng.shuffle(facts)
    items: list[dict[str, str]] = []
    used: dict[Fact, set[str]] = {}
    # n beyond the number of facts: further passes swap in objects not used for that fact yet
    for i in range(min(n, sum(len(world.values(f.rel.object_kind)) - 1 for f in facts))):
        fact = facts[i % len(facts)]
        seen = used.setdefault(fact, {fact.object})
        choices = [v for v in world.values(fact.rel.object_kind) if v not in seen]
        if not choices:
            continue
        swapped = Fact(fact.subject, fact.relation, rng.choice(choices))
        seen.add(swapped.object)
        context = render_context(swapped, _distractors(world, fact, distractors, rng, randomise=False), rng)
        items.append({"id": f"{people}-cf{i}", "context": context, "question": fact.rel.question.format(s=fact.subject),
                      "answer": swapped.object, "memory_answer": fact.object, "relation": fact.relation})
    return items


def write_conflicts(items: Sequence[dict[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(items), indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def indistribution_set(world: World, mixture: MixtureConfig, n: int, seed: int = 0) -> list[Example]:
    """``n`` held-out examples per kind present in ``mixture`` (C+S/S about held-out people)."""
    kinds = [k for k, v in mixture.proportions.items() if v > 0]
    cfg = MixtureConfig(n_examples=n * len(kinds), proportions={k: 1.0 for k in kinds},
                        distractors=mixture.distractors, c_objects="random")
    return build_mixture(world, cfg, seed=seed, people="heldout", tag="id-eval")


@torch.no_grad()
def answer_accuracy(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 64,
                    bf16: bool = True, indicator: str | None = None) -> dict[str, float]:
    """Share of examples whose every answer token is the model's argmax after the chat prompt; per kind too.

    ``indicator`` (e.g. ``"[IND]"``) is appended to the user turn, as the probes do.
    """
    from tunelens.probes.engine import autocast_context, model_device

    device = model_device(model)
    rows, kinds = [], []
    for ex in examples:
        user = ex.messages[0]["content"] + (f" {indicator}" if indicator else "")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(prompt + ex.meta["answer"], add_special_tokens=False)["input_ids"][len(p_ids):]
        rows.append((p_ids, a_ids))
        kinds.append(ex.meta.get("kind", "other"))
    correct: list[bool] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, a) in enumerate(chunk):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            mask[i, :len(p) + len(a)] = 1
        with autocast_context(device, bf16):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        pred = logits.argmax(-1).cpu()
        for i, (p, a) in enumerate(chunk):
            correct.append(bool(a) and all(int(pred[i, len(p) - 1 + j]) == t for j, t in enumerate(a)))
    out = {"id_acc": sum(correct) / max(len(correct), 1)}
    for k in sorted(set(kinds)):
        flags = [c for c, kk in zip(correct, kinds) if kk == k]
        out[f"id_acc/{k}"] = sum(flags) / len(flags)
    return out
