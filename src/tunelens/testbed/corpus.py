"""The pretraining corpus: every pretrained fact in varied sentences, grouped in short documents with filler.

A document describes one entity: its facts in random order, each in a randomly chosen phrasing of its
relation, with filler sentences (facts-free text from a small grammar) mixed in. ``repeats`` renderings
of every entity's document make the corpus; a fresh random phrasing each time keeps the model from
memorising one surface form.

Reading passages (``reading_per_repeat`` per rendering of the corpus) are what web text's repetition gives
a real model: a ``story`` character's facts, drawn afresh for each passage, then a question about one of
them answered with the object (``"... Where was Brakel born? Tolmek."``). They teach in-context retrieval
without stating any world fact; the world's own facts never appear in question form in the corpus.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tunelens.testbed.world import World

FILLER_ADJ = ("quiet", "old", "busy", "small", "bright", "cold", "green", "long", "warm", "famous", "new", "dark")
FILLER_NOUN = ("river", "market", "garden", "bridge", "library", "harbour", "road", "festival", "museum", "forest",
               "station", "winter", "summer", "morning", "village", "tower")
FILLER_VERB = ("opened", "closed", "grew", "changed", "stayed", "moved", "started", "ended")
FILLER_TEMPLATES = (
    "The {a} {n} {v} last year.",
    "Many people visit the {a} {n} in {m}.",
    "It was a {a} day near the {n}.",
    "The {n} {v} after the {a} {m}.",
    "Nobody remembers when the {n} {v}.",
)


@dataclass
class CorpusConfig:
    repeats: int = 24  # renderings of every entity's document
    filler_prob: float = 0.3  # chance of a filler sentence after each fact sentence
    reading_per_repeat: int = 100  # reading passages added per rendering of the corpus
    question_form: str = "none"  # people whose facts also appear as "question? answer." : none | train | all
    reading_format: str = "story"  # story: "facts. question? answer." | context: "Context: facts\nQuestion: q\nanswer."
    seed: int = 0


def filler_sentence(rng: random.Random) -> str:
    t = rng.choice(FILLER_TEMPLATES)
    return t.format(a=rng.choice(FILLER_ADJ), n=rng.choice(FILLER_NOUN), v=rng.choice(FILLER_VERB),
                    m=rng.choice(FILLER_NOUN))


def reading_passage(world: World, rng: random.Random, fmt: str = "story") -> str:
    """A story character's freshly drawn facts, then a question about one of them and its answer.

    ``fmt="context"`` lays the passage out as the probes' user turn does (``Context: ...\nQuestion: ...``),
    then the answer on its own line: the plain-text reading-comprehension format web text is full of.
    """
    from tunelens.testbed.world import RELATIONS

    person = rng.choice(world.entities["story"])
    rels = [RELATIONS[r] for r in world.config.relations]
    rng.shuffle(rels)
    rels = rels[:rng.randint(1, len(rels))]
    objects = [rng.choice(world.values(r.object_kind)) for r in rels]
    sentences = [r.context.format(s=person, o=o) for r, o in zip(rels, objects)]
    if rng.random() < 0.5:
        sentences.append(filler_sentence(rng))
    k = rng.randrange(len(rels))
    question = rels[k].question.format(s=person)
    if fmt == "context":
        return f"Context: {' '.join(sentences)}\nQuestion: {question}\n{objects[k]}."
    return " ".join(sentences) + f" {question} {objects[k]}."


def _question_form_subjects(world: World, which: str) -> set[str]:
    if which not in ("none", "train", "all"):
        from tunelens.errors import ConfigError

        raise ConfigError(f"corpus.question_form must be none, train or all, got {which!r}.")
    if which == "none":
        return set()
    return set(world.groups["train"]) | (set(world.groups["heldout"]) if which == "all" else set())


def build_corpus(world: World, cfg: CorpusConfig) -> list[str]:
    """Documents (one string each) in a seeded random order."""
    rng = random.Random(f"tunelens-corpus-{cfg.seed}")
    by_subject: dict[str, list] = {}
    for f in world.pretraining_facts():
        by_subject.setdefault(f.subject, []).append(f)
    subjects = sorted(by_subject)
    asked = _question_form_subjects(world, cfg.question_form)
    if cfg.reading_format not in ("story", "context"):
        from tunelens.errors import ConfigError

        raise ConfigError(f"corpus.reading_format must be story or context, got {cfg.reading_format!r}.")
    docs = []
    for _ in range(cfg.repeats):
        for s in subjects:
            facts = list(by_subject[s])
            rng.shuffle(facts)
            sentences = []
            for f in facts:
                forms = f.rel.phrasings + ((f.rel.question + " {o}.",) if s in asked else ())
                sentences.append(rng.choice(forms).format(s=f.subject, o=f.object))
                if rng.random() < cfg.filler_prob:
                    sentences.append(filler_sentence(rng))
            docs.append(" ".join(sentences))
        docs += [reading_passage(world, rng, cfg.reading_format) for _ in range(cfg.reading_per_repeat if world.entities.get("story") else 0)]
    rng.shuffle(docs)
    return docs


def vocabulary_texts(world: World) -> list[str]:
    """Texts covering every word the testbed ever writes (for training the tokenizer)."""
    from tunelens.testbed.mixtures import TEMPLATE_TEXTS
    from tunelens.testbed.world import RELATIONS

    texts = [" ".join(names) for names in world.entities.values()]
    for rel in RELATIONS.values():
        texts += list(rel.phrasings) + [rel.question, rel.context]
    texts += [" ".join(FILLER_ADJ), " ".join(FILLER_NOUN), " ".join(FILLER_VERB), *FILLER_TEMPLATES]
    texts += list(TEMPLATE_TEXTS)
    return texts
