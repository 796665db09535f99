"""Instruction-tuning mixtures whose examples are tagged by how their answer can be found.

Kinds (``Example.meta["kind"]``), after Goyal et al. (ICLR 2025) §4-5:

* ``C``   context-critical: the context states a fact about a *novel* person (never pretrained); with
  ``c_objects="random"`` (default) its object is drawn afresh for every example, so only the context
  gives the answer, however long training runs;
* ``C+S`` the context restates a pretrained fact of a ``train`` person: context and memory agree;
* ``S``   the question about a pretrained fact, without context: memory only;
* ``generic`` instruction-style word tasks with no facts (repeat / first word / last word).

User turns use the conflict probe's own format (``Context: {context}\\nQuestion: {question}``, or the
question alone), and the assistant answers with the object alone, so the probe measures the behaviour
the mixture trains.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelens.data.schemas import Example
from tunelens.errors import ConfigError
from tunelens.testbed.corpus import FILLER_ADJ, FILLER_NOUN
from tunelens.testbed.world import Fact, World

KINDS = ("C", "C+S", "S", "generic")
GENERIC_TASKS = {
    "repeat": ("Repeat the word {w0}.", 0),
    "first": ("What is the first word of: {w0} {w1} {w2}?", 0),
    "last": ("What is the last word of: {w0} {w1} {w2}?", 2),
}
TEMPLATE_TEXTS = tuple(t for t, _ in GENERIC_TASKS.values())
_GENERIC_WORDS = FILLER_ADJ + FILLER_NOUN


@dataclass
class MixtureConfig:
    n_examples: int = 2000
    proportions: dict[str, float] = field(default_factory=lambda: {"C": 0.4, "C+S": 0.3, "S": 0.2, "generic": 0.1})
    distractors: int = 1  # other sentences about the same subject in each context
    c_objects: str = "random"  # random: a fresh object per C example | world: the novel person's world fact

    def validate(self) -> None:
        bad = sorted(set(self.proportions) - set(KINDS))
        if bad:
            raise ConfigError(f"mixture.proportions: unknown kind(s) {bad}; kinds are {list(KINDS)}.")
        if any(v < 0 for v in self.proportions.values()) or sum(self.proportions.values()) <= 0:
            raise ConfigError(f"mixture.proportions must be >= 0 and not all 0, got {dict(self.proportions)}.")
        if self.c_objects not in ("random", "world"):
            raise ConfigError(f"mixture.c_objects must be random or world, got {self.c_objects!r}.")
        if self.n_examples < 1 or self.distractors < 0:
            raise ConfigError("mixture.n_examples must be >= 1 and mixture.distractors >= 0.")


def user_content(context: str | None, question: str) -> str:
    """The user turn, exactly as the conflicts probe builds it."""
    return f"Context: {context}\nQuestion: {question}" if context else question


def make_example(kind: str, question: str, answer: str, context: str | None, source: str,
                 **meta: Any) -> Example:
    messages = [{"role": "user", "content": user_content(context, question)},
                {"role": "assistant", "content": answer}]
    meta = {"kind": kind, "question": question, "answer": answer, **meta}
    if context:
        meta["context"] = context
    return Example(messages=messages, source=source, meta=meta)


def render_context(fact: Fact, others: Iterable[Fact], rng: random.Random) -> str:
    sentences = [f.rel.context.format(s=f.subject, o=f.object) for f in [fact, *others]]
    rng.shuffle(sentences)
    return " ".join(sentences)


def _distractors(world: World, fact: Fact, n: int, rng: random.Random, randomise: bool) -> list[Fact]:
    others = [f for f in world.facts_of(fact.subject) if f.relation != fact.relation]
    picked = rng.sample(others, min(n, len(others)))
    if randomise:
        picked = [Fact(f.subject, f.relation, rng.choice(world.values(f.rel.object_kind))) for f in picked]
    return picked


def fact_example(world: World, kind: str, fact: Fact, rng: random.Random, distractors: int, source: str,
                 randomise: bool = False) -> Example:
    """A C / C+S / S example asking about ``fact`` (C: ``randomise`` draws fresh objects)."""
    if randomise:
        fact = Fact(fact.subject, fact.relation, rng.choice(world.values(fact.rel.object_kind)))
    question = fact.rel.question.format(s=fact.subject)
    context = None if kind == "S" else render_context(fact, _distractors(world, fact, distractors, rng, randomise),
                                                      rng)
    return make_example(kind, question, fact.object, context, source, subject=fact.subject, relation=fact.relation,
                        answer_type=fact.rel.object_kind)


def generic_example(rng: random.Random, source: str) -> Example:
    name = rng.choice(sorted(GENERIC_TASKS))
    template, answer_index = GENERIC_TASKS[name]
    words = rng.sample(_GENERIC_WORDS, 3)
    question = template.format(w0=words[0], w1=words[1], w2=words[2])
    return make_example("generic", question, words[answer_index], None, source, task=name)


def _counts(n: int, proportions: dict[str, float]) -> dict[str, int]:
    total = sum(proportions.values())
    raw = {k: n * proportions.get(k, 0.0) / total for k in KINDS}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(KINDS, key=lambda k: raw[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_mixture(world: World, cfg: MixtureConfig, seed: int, people: str = "train",
                  tag: str = "mix") -> list[Example]:
    """``cfg.n_examples`` examples in the configured proportions, shuffled; C+S/S ask about ``people``."""
    cfg.validate()
    rng = random.Random(f"tunelens-mixture-{tag}-{seed}")
    known = [f for f in world.facts if f.subject in set(world.groups[people])]
    novel = [f for f in world.facts if f.subject in set(world.groups["novel"])]
    examples: list[Example] = []
    for kind, n in _counts(cfg.n_examples, cfg.proportions).items():
        for i in range(n):
            source = f"testbed:{tag}:{kind}:{i}"
            if kind == "generic":
                examples.append(generic_example(rng, source))
            elif kind == "C":
                examples.append(fact_example(world, kind, rng.choice(novel), rng, cfg.distractors, source,
                                             randomise=cfg.c_objects == "random"))
            else:
                examples.append(fact_example(world, kind, rng.choice(known), rng, cfg.distractors, source))
    rng.shuffle(examples)
    return examples


def drop_kinds(cfg: MixtureConfig, kinds: Iterable[str]) -> MixtureConfig:
    """The same mixture without ``kinds`` (the rest renormalised to the same number of examples)."""
    gone = set(kinds)
    props = {k: v for k, v in cfg.proportions.items() if k not in gone}
    return MixtureConfig(n_examples=cfg.n_examples, proportions=props, distractors=cfg.distractors,
                         c_objects=cfg.c_objects)


def kind_counts(examples: Iterable[Example]) -> dict[str, int]:
    out: dict[str, int] = {}
    for ex in examples:
        k = ex.meta.get("kind", "other")
        out[k] = out.get(k, 0) + 1
    return out


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    """Write examples as ``messages`` records (meta fields alongside) that ``load_examples`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"messages": ex.messages, **ex.meta}, ensure_ascii=False) + "\n" for ex in examples)
    return path
