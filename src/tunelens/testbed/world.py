"""A synthetic world of entities and facts, deterministic by seed.

Entities: people, cities, countries and organisations, each named by a unique pseudo-word (one token
under the testbed's word-level tokenizer). Facts are (subject, relation, object) triples:

* people: ``born_in`` (city), ``works_for`` (organisation), ``lives_in`` (country), ``plays`` (sport);
* cities: ``located_in`` (country); organisations: ``based_in`` (city).

People come in three groups: ``train`` people (facts pretrained *and* used by the instruction mixture),
``heldout`` people (facts pretrained, never in the mixture: the counterfactual and in-distribution
evaluation sets are built from them) and ``novel`` people (never pretrained: the subjects of
context-critical C examples, whose facts the model cannot know). ``story`` characters appear only in the
corpus's reading passages, each time with freshly drawn facts (they teach reading, not facts).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

from tunelens.errors import ConfigError

SPORTS = ("tennis", "chess", "rugby", "fencing", "rowing", "cricket", "hockey", "golf", "polo", "boxing",
          "sailing", "archery")


@dataclass(frozen=True)
class Relation:
    """How a relation is rendered: pretraining phrasings, the question, and the context sentence."""

    name: str
    subject_kind: str
    object_kind: str
    phrasings: tuple[str, ...]  # pretraining sentences, "{s}" subject and "{o}" object
    question: str  # "{s}" subject
    context: str  # the sentence a context states it with


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("born_in", "person", "city",
             ("{s} was born in {o}.", "The birthplace of {s} is {o}.", "{s} comes from the city of {o}.",
              "{s} grew up in {o}, the city of {s}'s birth."),
             "Where was {s} born?", "{s} was born in {o}."),
    Relation("works_for", "person", "organisation",
             ("{s} works for {o}.", "The employer of {s} is {o}.", "{s} has a job at {o}.",
              "{s} joined {o} and still works there."),
             "Who does {s} work for?", "{s} works for {o}."),
    Relation("lives_in", "person", "country",
             ("{s} lives in {o}.", "The home country of {s} is {o}.", "{s} has a house in {o}.",
              "{s} made a home in {o}."),
             "Which country does {s} live in?", "{s} lives in {o}."),
    Relation("plays", "person", "sport",
             ("{s} plays {o}.", "The favourite sport of {s} is {o}.", "{s} is good at {o}.",
              "{s} spends weekends playing {o}."),
             "Which sport does {s} play?", "{s} plays {o}."),
    Relation("located_in", "city", "country",
             ("{s} is a city in {o}.", "The city of {s} lies in {o}.", "{s} is located in {o}."),
             "Which country is {s} in?", "{s} is a city in {o}."),
    Relation("based_in", "organisation", "city",
             ("{s} is based in {o}.", "The offices of {s} are in {o}.", "{s} has its headquarters in {o}."),
             "Where is {s} based?", "{s} is based in {o}."),
)}
PERSON_RELATIONS = tuple(n for n, r in RELATIONS.items() if r.subject_kind == "person")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st",
           "sh", "th", "gr", "pl", "fl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "s", "l", "m", "x", "nd", "rk")


@dataclass
class WorldConfig:
    seed: int = 0
    n_train_people: int = 120  # pretrained, used by the instruction mixture (C+S and S)
    n_heldout_people: int = 60  # pretrained, only in the evaluation sets
    n_novel_people: int = 100  # never pretrained: subjects of C examples
    n_story_people: int = 80  # characters of the corpus's reading passages (random facts per passage)
    n_cities: int = 24
    n_countries: int = 10
    n_organisations: int = 20
    n_sports: int = 12
    relations: list[str] = field(default_factory=lambda: list(PERSON_RELATIONS))

    def validate(self) -> None:
        bad = [r for r in self.relations if r not in PERSON_RELATIONS]
        if bad or not self.relations:
            raise ConfigError(f"world.relations: {bad or 'empty'}; choose from {list(PERSON_RELATIONS)}.")
        sizes = {"n_train_people": self.n_train_people, "n_heldout_people": self.n_heldout_people,
                 "n_novel_people": self.n_novel_people, "n_story_people": self.n_story_people,
                 "n_cities": self.n_cities, "n_countries": self.n_countries,
                 "n_organisations": self.n_organisations}
        for name, n in sizes.items():
            if n < 2:
                raise ConfigError(f"world.{name} must be >= 2, got {n}.")
        if not 2 <= self.n_sports <= len(SPORTS):
            raise ConfigError(f"world.n_sports must lie in [2, {len(SPORTS)}], got {self.n_sports}.")


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str

    @property
    def rel(self) -> Relation:
        return RELATIONS[self.relation]


@dataclass
class World:
    """Entities by kind, people by group, and every fact (novel people's facts included)."""

    config: WorldConfig
    entities: dict[str, list[str]]  # kind -> names
    groups: dict[str, list[str]]  # train | heldout | novel -> person names
    facts: list[Fact]

    def facts_of(self, subject: str) -> list[Fact]:
        return [f for f in self.facts if f.subject == subject]

    def fact(self, subject: str, relation: str) -> Fact:
        return next(f for f in self.facts if f.subject == subject and f.relation == relation)

    def pretraining_facts(self) -> list[Fact]:
        """Facts the corpus states: everything except novel people's."""
        novel = set(self.groups["novel"])
        return [f for f in self.facts if f.subject not in novel]

    def values(self, kind: str) -> list[str]:
        return self.entities[kind]

    def fingerprint(self) -> str:
        text = repr((asdict(self.config), sorted(self.entities.items()), self.facts))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
        name = word.capitalize()
        if name.lower() not in taken and 4 <= len(name) <= 10:
            taken.add(name.lower())
            out.append(name)
    return out


def generate_world(cfg: WorldConfig) -> World:
    """Build the world for ``cfg`` (same config, same world)."""
    cfg.validate()
    rng = random.Random(f"tunelens-world-{cfg.seed}")
    taken: set[str] = set(SPORTS)
    n_people = cfg.n_train_people + cfg.n_heldout_people + cfg.n_novel_people
    entities = {
        "country": _names(rng, cfg.n_countries, taken),
        "city": _names(rng, cfg.n_cities, taken),
        "organisation": _names(rng, cfg.n_organisations, taken),
        "sport": list(SPORTS[:cfg.n_sports]),
        "person": _names(rng, n_people, taken),
        "story": _names(rng, cfg.n_story_people, taken),
    }
    people = entities["person"]
    groups = {"train": people[:cfg.n_train_people],
              "heldout": people[cfg.n_train_people:cfg.n_train_people + cfg.n_heldout_people],
              "novel": people[cfg.n_train_people + cfg.n_heldout_people:]}
    facts: list[Fact] = []
    for city in entities["city"]:
        facts.append(Fact(city, "located_in", rng.choice(entities["country"])))
    for org in entities["organisation"]:
        facts.append(Fact(org, "based_in", rng.choice(entities["city"])))
    for person in people:
        for rel in cfg.relations:
            facts.append(Fact(person, rel, rng.choice(entities[RELATIONS[rel].object_kind])))
    return World(config=cfg, entities=entities, groups=groups, facts=facts)
