"""The testbed: world determinism, C/C+S/S labelling, evaluation sets, summary logic, cache, end-to-end CLI."""
from __future__ import annotations

import json
import math
import os

import pytest

from tunelens.data.schemas import Example
from tunelens.errors import ConfigError
from tunelens.probes.items import load_conflicts
from tunelens.probes.trajectory import TrajectoryCallback, TrajectoryOptions
from tunelens.testbed import (
    ArchConfig,
    CorpusConfig,
    MixtureConfig,
    PretrainConfig,
    WorldConfig,
    aggregate,
    build_corpus,
    build_mixture,
    cache_key,
    counterfactual_items,
    drop_kinds,
    ensure_pretrained,
    generate_world,
    reproduction_checks,
    run_summary,
)
from tunelens.testbed.mixtures import write_jsonl

SMALL = {"n_train_people": 12, "n_heldout_people": 8, "n_novel_people": 10, "n_cities": 6, "n_countries": 4,
         "n_organisations": 5, "n_sports": 4}
MICRO_ARGS = ["world.n_train_people=8", "world.n_heldout_people=6", "world.n_novel_people=6", "corpus.repeats=2",
              "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
              "pretrain.steps=8", "pretrain.batch_size=4", "pretrain.seq_len=32", "pretrain.recall_sample=20",
              "mixture.n_examples=40", "finetune.steps=4", "finetune.batch_size=2", "eval.every=2",
              "eval.n_counterfactual=8", "eval.n_indistribution=3", "seeds=[0]", "workers=1"]


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(**SMALL))


def test_world_is_deterministic_by_seed():
    a, b = generate_world(WorldConfig(**SMALL)), generate_world(WorldConfig(**SMALL))
    c = generate_world(WorldConfig(seed=1, **SMALL))
    assert a.facts == b.facts and a.entities == b.entities and a.fingerprint() == b.fingerprint()
    assert a.facts != c.facts and a.fingerprint() != c.fingerprint()
    names = [n for kind in a.entities.values() for n in kind]
    assert len(names) == len(set(names)), "entity names must be unique"
    people = a.entities["person"]
    assert len(people) == sum(SMALL[k] for k in ("n_train_people", "n_heldout_people", "n_novel_people"))
    assert len(a.facts) == len(people) * len(a.config.relations) + SMALL["n_cities"] + SMALL["n_organisations"]


def test_corpus_states_pretrained_facts_only(world):
    corpus = " ".join(build_corpus(world, CorpusConfig(repeats=2)))
    words = set(corpus.replace(".", " ").replace("?", " ").split())
    assert not words & set(world.groups["novel"]), "novel people must never be pretrained"
    for f in world.pretraining_facts():
        assert f.subject in words and f.object in words


def test_corpus_question_form_only_for_chosen_people(world):
    docs = build_corpus(world, CorpusConfig(repeats=3, question_form="train"))
    asked = {w for d in docs for w in d.split() if w in world.groups["train"] or w in world.groups["heldout"]}
    questions = [d for d in docs if any(f"{p} born?" in d or f"{p} work for?" in d
                                        for p in world.groups["train"] + world.groups["heldout"])]
    assert asked and questions
    assert all(not any(f"{p} born?" in d or f"{p} work for?" in d for p in world.groups["heldout"]) for d in docs)
    assert any(f"{p} born?" in d for d in questions for p in world.groups["train"])
    none = build_corpus(world, CorpusConfig(repeats=3))
    assert not any(f"{p} born?" in d for d in none for p in world.groups["train"] + world.groups["heldout"])


def test_corpus_reading_format(world):
    story_world = generate_world(WorldConfig(n_story_people=5, **SMALL))
    story = [d for d in build_corpus(story_world, CorpusConfig(repeats=1, reading_per_repeat=20))
             if any(p in d.split() for p in story_world.entities["story"])]
    ctx = [d for d in build_corpus(story_world, CorpusConfig(repeats=1, reading_per_repeat=20, reading_format="context"))
           if any(p in d.split() for p in story_world.entities["story"])]
    assert len(story) == len(ctx) == 20
    assert not any(d.startswith("Context: ") for d in story)
    assert all(d.startswith("Context: ") and "\nQuestion: " in d for d in ctx)
    for d in ctx:  # the answer (last line) is one of the objects the context states
        body, question, answer = d[len("Context: "):].split("\n")
        assert question.startswith("Question: ") and answer.rstrip(".") in body.replace(".", " ").split()
    with pytest.raises(ConfigError, match="reading_format"):
        build_corpus(story_world, CorpusConfig(repeats=1, reading_format="chat"))


def test_mixture_labels(world):
    cfg = MixtureConfig(n_examples=400, proportions={"C": 0.3, "C+S": 0.3, "S": 0.3, "generic": 0.1})
    examples = build_mixture(world, cfg, seed=0)
    assert len(examples) == 400
    kinds = {k: [e for e in examples if e.meta["kind"] == k] for k in ("C", "C+S", "S", "generic")}
    assert {k: len(v) for k, v in kinds.items()} == {"C": 120, "C+S": 120, "S": 120, "generic": 40}
    pretrained = {(f.subject, f.relation): f.object for f in world.pretraining_facts()}
    train, novel = set(world.groups["train"]), set(world.groups["novel"])
    for e in kinds["C+S"]:  # the context restates a fact the model was pretrained on
        assert e.meta["subject"] in train
        assert pretrained[(e.meta["subject"], e.meta["relation"])] == e.meta["answer"]
        assert world.fact(e.meta["subject"], e.meta["relation"]).rel.context.format(
            s=e.meta["subject"], o=e.meta["answer"]) in e.meta["context"]
        assert e.messages[0]["content"] == f"Context: {e.meta['context']}\nQuestion: {e.meta['question']}"
    for e in kinds["C"]:  # a subject never pretrained: only the context can give the answer
        assert e.meta["subject"] in novel and (e.meta["subject"], e.meta["relation"]) not in pretrained
        rel = world.fact(e.meta["subject"], e.meta["relation"]).rel
        assert rel.context.format(s=e.meta["subject"], o=e.meta["answer"]) in e.meta["context"]
    for e in kinds["S"]:  # no context at all; the answer is the pretrained fact
        assert "context" not in e.meta and e.messages[0]["content"] == e.meta["question"]
        assert pretrained[(e.meta["subject"], e.meta["relation"])] == e.meta["answer"]
    for e in kinds["generic"]:
        assert "subject" not in e.meta and e.meta["answer"] in e.messages[0]["content"]
    # C objects are drawn afresh: the same novel fact asked twice need not have the same answer
    seen: dict[tuple[str, str], set[str]] = {}
    for e in kinds["C"]:
        seen.setdefault((e.meta["subject"], e.meta["relation"]), set()).add(e.meta["answer"])
    assert any(len(v) > 1 for v in seen.values())
    assert [e.messages for e in build_mixture(world, cfg, seed=0)] == [e.messages for e in examples]
    assert [e.messages for e in build_mixture(world, cfg, seed=1)] != [e.messages for e in examples]


def test_drop_kinds_removes_cs_and_s(world):
    cfg = drop_kinds(MixtureConfig(n_examples=100), ["C+S", "S"])
    kinds = {e.meta["kind"] for e in build_mixture(world, cfg, seed=0)}
    assert kinds == {"C", "generic"}


def test_counterfactual_items_in_conflicts_format(world, tmp_path):
    items = counterfactual_items(world, 20, distractors=1)
    heldout = set(world.groups["heldout"])
    for it in items:
        fact_subjects = [s for s in heldout if s in it["question"]]
        assert len(fact_subjects) == 1
        true = world.fact(fact_subjects[0], it["relation"]).object
        assert it["memory_answer"] == true and it["answer"] != true
        assert it["answer"] in it["context"] and true not in it["context"].split()
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(items))
    loaded = load_conflicts(str(path))
    assert [x.answer for x in loaded] == [it["answer"] for it in items]


def test_counterfactual_items_beyond_the_facts_swap_new_objects(world):
    n_facts = len([f for f in world.facts if f.subject in set(world.groups["heldout"])])
    first = counterfactual_items(world, n_facts, distractors=1)
    both = counterfactual_items(world, 2 * n_facts, distractors=1)
    assert both[:n_facts] == first, "the first pass must not change when more items are asked for"
    assert len(both) == 2 * n_facts and len({it["id"] for it in both}) == 2 * n_facts
    for a, b in zip(both[:n_facts], both[n_facts:]):
        assert a["question"] == b["question"] and a["memory_answer"] == b["memory_answer"]
        assert b["answer"] not in (a["answer"], a["memory_answer"])


def test_mixture_round_trips_through_the_loader(world, tmp_path):
    from tunelens.data import load_examples

    examples = build_mixture(world, MixtureConfig(n_examples=20), seed=0)
    report = load_examples(write_jsonl(examples, tmp_path / "m.jsonl"), schema="messages")
    assert [e.messages for e in report.examples] == [e.messages for e in examples]
    assert [e.meta["kind"] for e in report.examples] == [e.meta["kind"] for e in examples]


def _record(variant: str, seed: int, reliance: list[float], acc: list[float], every: int = 10) -> dict:
    cb = TrajectoryCallback(lambda m, t: {}, TrajectoryOptions(track=["reliance", "id_acc", "closed_book"],
                                                               reliance="reliance", threshold=0.15))
    cb.history = [{"step": i * every, "metrics": {"reliance": r, "id_acc": a, "closed_book": 0.5}, "loss": 1.0}
                  for i, (r, a) in enumerate(zip(reliance, acc))]
    return {"variant": variant, "seed": seed, "indicator": None, "trajectory": cb.summary()}


def test_inversion_summary_on_constructed_trajectories():
    rise_fall = _record("vanilla", 0, [0.3, 0.9, 0.8, 0.6, 0.55], [0.1, 0.4, 0.5, 0.6, 0.7])
    s = run_summary(rise_fall)
    assert (s["reliance_peak"], s["step_of_peak"], s["reliance_final"]) == (0.9, 10, 0.55)
    assert s["inversion"] == pytest.approx(0.35) and s["inverted"]
    assert s["id_acc_at_peak"] == 0.4 and s["id_acc_final"] == 0.7
    flat = run_summary(_record("no_cs_s", 0, [0.3, 0.9, 0.92, 0.95, 0.95], [0.1, 0.4, 0.5, 0.6, 0.7]))
    assert flat["inversion"] == 0.0 and not flat["inverted"] and flat["step_of_peak"] == 30
    runs = [s, run_summary(_record("vanilla", 1, [0.2, 0.8, 0.5, 0.5, 0.6], [0.1, 0.3, 0.5, 0.6, 0.6])), flat]
    table = aggregate(runs)
    assert table["vanilla"]["inversion"]["mean"] == pytest.approx((0.35 + 0.2) / 2)
    assert table["vanilla"]["inversion"]["sd"] == pytest.approx(math.sqrt(2 * 0.075 ** 2))
    assert table["no_cs_s"]["vs_vanilla"]["inversion"] == pytest.approx(-0.275)
    checks = reproduction_checks(runs, 0.15)
    assert checks["vanilla_inverts_every_seed"] and checks["no_cs_s_no_inversion_every_seed"]
    assert checks["vanilla_id_acc_rises_after_peak"]
    bad = reproduction_checks([run_summary(_record("vanilla", 0, [0.5, 0.6, 0.5], [0.5, 0.6, 0.4]))], 0.15)
    assert not bad["vanilla_inverts_every_seed"] and not bad["vanilla_id_acc_rises_after_peak"]


def test_indicator_runs_are_summarised_with_the_indicator():
    rec = _record("indicator", 0, [0.5, 0.9, 0.4], [0.1, 0.5, 0.6])
    for p, ind in zip(rec["trajectory"]["points"], [0.5, 0.95, 0.9]):
        p["metrics"].update({"ind/reliance": ind, "ind/id_acc": p["metrics"]["id_acc"], "ind/closed_book": 0.5})
    cb = TrajectoryCallback(lambda m, t: {}, TrajectoryOptions(
        track=["reliance", "id_acc", "ind/reliance", "ind/id_acc", "ind/closed_book"], threshold=0.15))
    cb.history = rec["trajectory"]["points"]
    rec.update(indicator="[IND]", trajectory=cb.summary())
    s = run_summary(rec)
    assert s["reliance_final"] == 0.9 and s["inversion"] == pytest.approx(0.05)
    assert s["reliance_final_no_ind"] == 0.4 and s["inversion_no_ind"] == pytest.approx(0.5)


def test_pretraining_is_cached_by_config_hash(tmp_path):
    world = generate_world(WorldConfig(**SMALL))
    arch = ArchConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1)
    cfg = PretrainConfig(steps=3, batch_size=2, seq_len=16, recall_sample=10)
    corpus = CorpusConfig(repeats=1)
    path, report = ensure_pretrained(world, corpus, arch, cfg, cache_dir=tmp_path, progress=False)
    assert not report["cache_hit"] and (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert set(report["closed_book_recall"]) >= {"train", "heldout", "chance"}
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    path2, report2 = ensure_pretrained(world, corpus, arch, cfg, cache_dir=tmp_path, progress=False)
    assert report2["cache_hit"] and path2 == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    other = PretrainConfig(steps=4, batch_size=2, seq_len=16, recall_sample=10)
    assert cache_key(world, corpus, arch, other) != cache_key(world, corpus, arch, cfg)
    assert cache_key(generate_world(WorldConfig(seed=3, **SMALL)), corpus, arch, cfg) != cache_key(world, corpus,
                                                                                                  arch, cfg)
    # every corpus field and the torch thread count are part of the key
    assert cache_key(world, CorpusConfig(repeats=1, reading_format="context"), arch, cfg) != cache_key(
        world, corpus, arch, cfg)
    assert cache_key(world, corpus, arch, cfg, threads=1) != cache_key(world, corpus, arch, cfg, threads=2)


def test_tokenizer_covers_the_testbed_words(tmp_path):
    from tunelens.models import load_model

    world = generate_world(WorldConfig(**SMALL))
    path, _ = ensure_pretrained(world, CorpusConfig(repeats=1), ArchConfig(hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
                                PretrainConfig(steps=1, batch_size=2, seq_len=16, recall_sample=5),
                                cache_dir=tmp_path, progress=False)
    _, tok = load_model(str(path))
    examples: list[Example] = build_mixture(world, MixtureConfig(n_examples=60), seed=0)
    for ex in examples:
        ids = tok.apply_chat_template(ex.messages, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert tok.unk_token_id not in ids, ex.messages
        assert len(tok(ex.meta["answer"], add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_cli_micro_run_end_to_end(run_cli, tmp_path):
    out = tmp_path / "tb"
    res = run_cli("testbed", "run", "configs/testbed.yaml", "--out", out, f"cache_dir={tmp_path / 'cache'}",
                  *MICRO_ARGS, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    variants = {"vanilla", "no_cs_s", "curate", "counterfactual", "qk", "indicator"}
    assert set(summary["table"]) == variants
    assert {r["variant"] for r in summary["runs"]} == variants
    for r in summary["runs"]:
        assert 0 <= r["reliance_final"] <= 1 and r["inversion"] >= 0 and 0 <= r["id_acc_final"] <= 1
    assert summary["pretrain"]["cache_hit"] is False
    assert (out / "plots" / "variants.png").is_file() and (out / "plots" / "reliance_by_variant.png").is_file()
    assert (out / "eval" / "counterfactual.json").is_file() and (out / "config.yaml").is_file()
    ind = json.loads((out / "runs" / "indicator" / "seed-0" / "result.json").read_text())
    assert "ind/reliance" in ind["trajectory"]["metrics"] and 0 <= ind["prepare"]["flagged_share"] <= 1
    cur = json.loads((out / "runs" / "curate" / "seed-0" / "result.json").read_text())
    assert sum(cur["prepare"]["dropped_kinds"].values()) == cur["prepare"]["n_dropped"] == 10  # 25% of 40
    assert "final reliance" in res.stdout
    # a second run reuses the cached pretrained model and the finished runs
    res2 = run_cli("testbed", "run", "configs/testbed.yaml", "--out", out, f"cache_dir={tmp_path / 'cache'}",
                   *MICRO_ARGS, timeout=600)
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["pretrain"]["cache_hit"] is True


def test_cli_rejects_unknown_variant(run_cli, tmp_path):
    res = run_cli("testbed", "run", "--out", tmp_path / "x", "variants=[vanilla,bogus]")
    assert res.returncode == 2 and "bogus" in res.stderr


def test_run_fingerprint_covers_only_the_variants_own_settings():
    from tunelens.testbed import TestbedConfig
    from tunelens.testbed.finetune import run_fingerprint

    a, b = TestbedConfig(), TestbedConfig()
    b.mitigations.curate_drop_fraction = 0.5
    b.mitigations.qk_lr = 1e-2
    assert run_fingerprint(a, "vanilla", 0) == run_fingerprint(b, "vanilla", 0)
    assert run_fingerprint(a, "indicator", 0) == run_fingerprint(b, "indicator", 0)
    assert run_fingerprint(a, "curate", 0) != run_fingerprint(b, "curate", 0)
    assert run_fingerprint(a, "qk", 0) != run_fingerprint(b, "qk", 0)
    b.finetune.lr = 1.0
    assert run_fingerprint(a, "vanilla", 0) != run_fingerprint(b, "vanilla", 0)


def test_curation_scores_the_raw_question_answer_form(world):
    from tunelens.data.context import ContextSpec
    from tunelens.data.curate import target_request
    from tunelens.testbed.corpus import vocabulary_texts
    from tunelens.testbed.tokenizer import train_tokenizer
    from tunelens.testbed.variants import RAW_TEMPLATE

    tok = train_tokenizer(vocabulary_texts(world))
    for ex in build_mixture(world, MixtureConfig(n_examples=12), seed=0):
        prompt, target, _, _ = target_request(ex, tok, ContextSpec(missing="as_is"), chat_template=RAW_TEMPLATE)
        assert tok.decode(prompt) == tok.decode(tok(ex.meta["question"], add_special_tokens=False)["input_ids"])
        assert tok.decode(target) == ex.meta["answer"]


@pytest.mark.slow  # ~5 min on 2 idle cores from scratch (pretraining is cached by config hash afterwards)
def test_default_recipe_reproduces_the_inversion_and_its_ablation(run_cli, tmp_path):
    """The default recipe's headline result on seed 0: vanilla inverts, without C+S and S it does not."""
    out = tmp_path / "tb"
    res = run_cli("testbed", "run", "configs/testbed.yaml", "--out", out, "seeds=[0]", "variants=[vanilla,no_cs_s]",
                  *([f"cache_dir={os.environ['TUNELENS_TEST_TESTBED_CACHE']}"]
                    if os.environ.get("TUNELENS_TEST_TESTBED_CACHE") else []), timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    recall = summary["pretrain"]["closed_book_recall"]
    assert recall["train"]["declarative"] >= 0.95 and recall["heldout"]["declarative"] >= 0.95
    runs = {r["variant"]: r for r in summary["runs"]}
    van = runs["vanilla"]
    assert van["inversion"] >= 0.15 and van["reliance_peak"] > van["reliance_initial"]
    assert runs["vanilla"]["id_acc_final"] > runs["vanilla"]["id_acc_at_peak"]
    assert runs["no_cs_s"]["inversion"] < 0.15
    assert runs["no_cs_s"]["reliance_final"] - runs["vanilla"]["reliance_final"] >= 0.2
    assert summary["checks"]["vanilla_inverts_every_seed"] and summary["checks"]["no_cs_s_no_inversion_every_seed"]
