"""Probe suites end to end (runner -> suite -> engine) on the tiny-llama preset, and their metrics exactly,
with the generation / scoring engine replaced by fakes that return known texts or log-probabilities."""
from __future__ import annotations

import math

import pytest

from tunelens.errors import ConfigError
from tunelens.models import load_model
from tunelens.probes.engine import Generation
from tunelens.probes.haystack_data import load_needles
from tunelens.probes.items import load_conflicts, load_contextqa
from tunelens.probes.runner import run
from tunelens.probes.settings import ProbeSettings
from tunelens.probes.suites.common import model_limit

SF_PREFIX = "The best thing to do in San Francisco"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def settings(**kw) -> ProbeSettings:
    base = dict(haystack_lengths=[64, 128], haystack_depths=[0.0, 1.0], haystack_new_tokens=8, limit=4,
                max_new_tokens=8, batch_size=4, progress=False)
    base.update(kw)
    return ProbeSettings(**base)


class FakeGenerate:
    """Stands in for ``generate_greedy``: ``texts`` is a list (by call order of prompts) or a function
    ``(decoded_prompt, index) -> text``; every call's decoded prompts and kwargs are kept."""

    def __init__(self, tok, texts):
        self.tok, self.texts, self.calls = tok, texts, []

    def __call__(self, model, tok, prompts, **kw):
        decoded = [self.tok.decode(p) for p in prompts]
        self.calls.append((decoded, kw))
        out = [self.texts(d, i) if callable(self.texts) else self.texts[i] for i, d in enumerate(decoded)]
        return [Generation(text=t, token_ids=[], stopped="length") for t in out]


def _comparable(report):
    return [(r.suite, r.variant, r.n, r.metrics, r.records, r.truncated) for r in report.results]


# ----------------------------------------------------------------------------------------------- haystack

def test_haystack_real_model_shapes_ranges_determinism(tiny):
    model, tok = tiny
    rep = run(model, tok, "haystack", "raw,chat", settings())
    assert [(r.suite, r.variant) for r in rep.results] == [("haystack", "raw"), ("haystack", "chat")]
    for r in rep.results:
        assert r.n == 4 and len(r.records) == 4 and r.mode == "generate" and r.truncated == 0
        m = r.metrics
        assert 0.0 <= m["recall_ci_low"] <= m["recall"] <= m["recall_ci_high"] <= 1.0
        assert m["recall_error"] == pytest.approx(1.0 - m["recall"])
        assert m["n_lengths_clipped"] == 0 and r.settings["haystack"]["clipped"] == {}
        assert [(x["length"], x["depth"]) for x in r.records] == [(64, 0.0), (64, 1.0), (128, 0.0), (128, 1.0)]
        for x in r.records:
            assert {"length", "depth", "actual_tokens", "inserted_depth", "recall", "output"} <= set(x)
            assert x["actual_tokens"] <= x["length"] and x["requested_length"] == x["length"]
            assert x["recall"] in {k / 7 for k in range(8)}
            assert x["inserted_depth"] == x["depth"]  # depth 0: first, depth 1: appended
        assert m["recall"] == pytest.approx(sum(x["recall"] for x in r.records) / 4)
    assert _comparable(run(model, tok, "haystack", "chat", settings())) == _comparable(rep)[1:]  # deterministic


def test_haystack_clips_to_max_prompt_tokens_and_counts(tiny):
    model, tok = tiny
    s = settings(haystack_lengths=[64, 3000, 4096], haystack_depths=[0.5], max_prompt_tokens=200)
    r = run(model, tok, "haystack", "chat", s).results[0]
    h = r.settings["haystack"]
    max_ctx = h["max_context_tokens"]
    assert max_ctx == 200 - h["prompt_overhead_tokens"] and r.metrics["max_context_tokens"] == max_ctx
    assert r.metrics["n_lengths_clipped"] == 2 and h["clipped"] == {"3000": max_ctx, "4096": max_ctx}
    assert h["lengths_run"] == [64, max_ctx] and r.n == 2  # both long lengths clip to one cell, run once
    assert [x["requested_length"] for x in r.records] == [64, 3000]
    assert all(x["prompt_tokens"] <= 200 and x["truncated"] == 0 for x in r.records)
    assert r.records[1]["actual_tokens"] > 100  # the clipped cell really is long


def test_haystack_clips_to_model_limit(tiny, monkeypatch):
    model, tok = tiny
    fake = FakeGenerate(tok, lambda d, i: "")
    monkeypatch.setattr("tunelens.probes.suites.haystack.generate_greedy", fake)
    limit = model_limit(model, tok)
    r = run(model, tok, "haystack", "raw", settings(haystack_lengths=[64, limit + 500],
                                                     haystack_depths=[0.0])).results[0]
    assert r.metrics["n_lengths_clipped"] == 1 and r.truncated == 0
    long = r.records[1]
    assert long["requested_length"] == limit + 500 and long["length"] < limit
    assert long["prompt_tokens"] + 8 <= limit and long["prompt_tokens"] > limit - 8 - 10  # fills the budget
    assert fake.calls[0][1]["max_new_tokens"] == 8


def test_haystack_budget_too_small_or_bad_needle(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="too few for the needle"):
        run(model, tok, "haystack", "raw", settings(max_prompt_tokens=60))
    with pytest.raises(ConfigError, match="Unknown haystack needle"):
        run(model, tok, "haystack:nope", "raw", settings())


def test_haystack_recall_metrics_exact(tiny, monkeypatch):
    model, tok = tiny
    assert load_needles()[0].id == "sf_sandwich"
    outs = ["eat a sandwich in dolores park", "Eat a sandwich and sit in Dolores Park on a sunny day.",
            "", "PARK, sunny-day; dolores!"]
    fake = FakeGenerate(tok, outs)
    monkeypatch.setattr("tunelens.probes.suites.haystack.generate_greedy", fake)
    r = run(model, tok, "haystack:sf_sandwich", "chat", settings()).results[0]
    assert r.suite == "haystack:sf_sandwich"
    # "eat a sandwich in dolores park": eat, sandwich, dolores, park of [B]'s 7 words -> 4/7
    assert [x["recall"] for x in r.records] == [4 / 7, 1.0, 0.0, 4 / 7]
    assert [x["output"] for x in r.records] == outs
    assert r.metrics["recall"] == pytest.approx((4 + 7 + 0 + 4) / 28)
    assert r.metrics["recall_error"] == pytest.approx(1 - 15 / 28)
    assert r.metrics["recall_ci_low"] < r.metrics["recall"] < r.metrics["recall_ci_high"]
    prompt = fake.calls[0][0][0]
    assert "You are a helpful AI assistant that answers a question using only the provided document: \n" in prompt
    assert "\n\nQuestion: What is the best thing to do in San Francisco?" in prompt
    assert "stop_strings" not in fake.calls[0][1] or not fake.calls[0][1]["stop_strings"]
    # all cells the same output -> zero-width interval
    monkeypatch.setattr("tunelens.probes.suites.haystack.generate_greedy", FakeGenerate(tok, lambda d, i: outs[0]))
    m = run(model, tok, "haystack", "raw", settings()).results[0].metrics
    assert m["recall"] == m["recall_ci_low"] == m["recall_ci_high"] == pytest.approx(4 / 7)
    assert m["recall_error"] == pytest.approx(3 / 7)


def test_haystack_response_prefix_opens_answer(tiny, monkeypatch):
    model, tok = tiny
    fake = FakeGenerate(tok, lambda d, i: " is to eat a sandwich")
    monkeypatch.setattr("tunelens.probes.suites.haystack.generate_greedy", fake)
    for variant in ("raw", "chat"):
        r = run(model, tok, "haystack", variant, settings(response_prefix=True)).results[0]
        assert all(p.endswith(SF_PREFIX) for p in fake.calls[-1][0])
        assert r.settings["haystack"]["response_prefix_text"] == SF_PREFIX
        assert [x["recall"] for x in r.records] == [2 / 7] * 4  # generated text only


def test_haystack_heatmap_writes_png(tiny, monkeypatch, tmp_path):
    from tunelens.probes.suites.haystack import haystack_heatmap

    model, tok = tiny
    monkeypatch.setattr("tunelens.probes.suites.haystack.generate_greedy",
                        FakeGenerate(tok, ["eat", "sandwich park", "", "sunny day"]))
    r = run(model, tok, "haystack", "chat", settings()).results[0]
    path = haystack_heatmap(r, tmp_path / "plots" / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


# ----------------------------------------------------------------------------------------------- contextqa

def test_contextqa_real_model_shapes_ranges_determinism(tiny):
    model, tok = tiny
    rep = run(model, tok, "contextqa:xquad", "raw,chat", settings())
    for r in rep.results:
        assert r.suite == "contextqa:xquad" and r.n == 4 and len(r.records) == 4
        m = r.metrics
        assert 0.0 <= m["contain_ci_low"] <= m["contain_acc"] <= m["contain_ci_high"] <= 1.0
        assert 0.0 <= m["em"] <= m["f1"] <= 1.0
        for x in r.records:
            assert {"id", "output", "golds", "contained", "em", "f1", "prompt_tokens", "truncated"} <= set(x)
            assert "\n" not in x["output"] and ". " not in x["output"]
    assert _comparable(run(model, tok, "contextqa:xquad", "raw", settings())) == _comparable(rep)[:1]


def test_contextqa_metrics_exact_squad(tiny, monkeypatch):
    model, tok = tiny
    items = load_contextqa("xquad", limit=4)
    assert [it.answers for it in items] == [["308"], ["136"], ["118"], ["four"]]
    outs = ["308", "\nHe had 136 sacks. He also forced", "one hundred eighteen\nQuestion: next", "Four."]
    fake = FakeGenerate(tok, outs)
    monkeypatch.setattr("tunelens.probes.suites.contextqa.generate_greedy", fake)
    r = run(model, tok, "contextqa", "raw", settings()).results[0]
    assert r.suite == "contextqa:xquad"
    assert [x["output"] for x in r.records] == ["308", "He had 136 sacks", "one hundred eighteen", "Four."]
    assert [x["contained"] for x in r.records] == [True, True, False, True]
    assert [x["em"] for x in r.records] == [1.0, 0.0, 0.0, 1.0]
    assert [x["f1"] for x in r.records] == pytest.approx([1.0, 0.4, 0.0, 1.0])
    assert r.metrics["contain_acc"] == 0.75 and r.metrics["em"] == 0.5
    assert r.metrics["f1"] == pytest.approx(0.6)
    prompts, kw = fake.calls[0]
    assert kw["stop_strings"] == [". "] and kw["max_new_tokens"] == 8
    assert prompts[0].endswith("\nAnswer the question according to the above passage: "
                               "How many points did the Panthers defense surrender?\nAnswer:")
    assert items[0].context in prompts[0]


def test_contextqa_boolq_first_occurrence_whole_words(tiny, monkeypatch):
    model, tok = tiny
    assert [it.answers for it in load_contextqa("boolq", limit=4)] == [["no"], ["yes"], ["yes"], ["yes"]]
    outs = ["No.", "Yes, but it does not apply", "I know nothing about it", "no, yes"]
    monkeypatch.setattr("tunelens.probes.suites.contextqa.generate_greedy", FakeGenerate(tok, outs))
    r = run(model, tok, "contextqa:boolq", "chat", settings()).results[0]
    assert r.settings["yesno"] is True
    assert [x["yesno"] for x in r.records] == ["no", "yes", "neither", "no"]
    assert [x["contained"] for x in r.records] == [True, True, False, False]
    assert r.metrics["contain_acc"] == 0.5 and r.metrics["neither_rate"] == 0.25
    assert r.metrics["em"] == 0.25
    assert r.metrics["f1"] == pytest.approx((1 + 2 / 7 + 0 + 2 / 3) / 4)


# ----------------------------------------------------------------------------------------------- conflicts

def _item_of(items, prompt):
    hits = [it for it in items if it.question in prompt]
    assert len(hits) == 1, prompt
    return hits[0]


def test_conflicts_generate_classification_exact(tiny, monkeypatch):
    model, tok = tiny
    items = load_conflicts("world_facts", limit=6)
    idx = {it.id: i for i, it in enumerate(items)}

    def answer(prompt, _):
        it = _item_of(items, prompt)
        i = idx[it.id]
        if "Context:" not in prompt:  # closed book: the first three items' memory answers are known
            return f"It is {it.memory_answer}." if i < 3 else "I am not sure."
        return [it.answer, f"The capital is {it.memory_answer}", "I do not know",
                f"{it.answer}, not {it.memory_answer}", f"{it.memory_answer}; the passage says {it.answer}",
                f"It moved to {it.answer}"][i]

    fake = FakeGenerate(tok, answer)
    monkeypatch.setattr("tunelens.probes.suites.conflicts.generate_greedy", fake)
    r = run(model, tok, "conflicts:world_facts", "chat", settings(mode="generate", limit=6)).results[0]
    assert len(fake.calls) == 2  # contexts, then the no-context control
    assert all("Context:" not in p for p in fake.calls[1][0])
    assert [x["outcome"] for x in r.records] == ["ctx", "param", "neither", "ctx", "param", "ctx"]
    m = r.metrics
    assert (m["ctx_rate"], m["param_rate"], m["neither_rate"]) == (0.5, pytest.approx(2 / 6), pytest.approx(1 / 6))
    assert m["ctx_rate"] + m["param_rate"] + m["neither_rate"] == pytest.approx(1.0)
    assert [x["knows_memory"] for x in r.records] == [True] * 3 + [False] * 3
    assert r.records[0]["closed_book"] == "It is Kabul."
    assert m["closed_book_param_rate"] == 0.5 and m["n_known"] == 3
    assert m["ctx_rate_known"] == pytest.approx(1 / 3)  # of items 0-2 only item 0 follows the context
    r2 = run(model, tok, "conflicts:world_facts", "chat", settings(no_context_control=False)).results[0]
    assert "closed_book_param_rate" not in r2.metrics and "knows_memory" not in r2.records[0]


def test_conflicts_loglik_preference_exact(tiny, monkeypatch):
    model, tok = tiny
    items = load_conflicts("world_facts", limit=4)
    idx = {it.id: i for i, it in enumerate(items)}
    main = [(-1.0, -2.0), (-3.0, -1.0), (-0.5, -0.5), (-10.0, -4.0)]  # (logp_ctx, logp_mem)
    closed = [(-5.0, -1.0), (-1.0, -5.0), (-6.0, -2.0), (-2.0, -2.5)]
    calls = []

    def fake_score(model, reqs, **kw):
        out = []
        for q in reqs:
            prompt = tok.decode(q.prompt_ids)
            i = idx[_item_of(items, prompt).id]
            calls.append("Context:" in prompt)
            assert tok.decode(q.continuations[0]).strip() == items[i].answer
            assert tok.decode(q.continuations[1]).strip() == items[i].memory_answer
            out.append(list(main[i] if "Context:" in prompt else closed[i]))
        return out

    monkeypatch.setattr("tunelens.probes.suites.conflicts.score_continuations", fake_score)
    r = run(model, tok, "conflicts:world_facts", "raw", settings(mode="loglik")).results[0]
    assert calls == [True] * 4 + [False] * 4 and r.mode == "loglik"
    sig = [1 / (1 + math.exp(-(a - b))) for a, b in main]
    assert [x["p_ctx"] for x in r.records] == pytest.approx(sig)
    m = r.metrics
    assert m["ctx_pref_rate"] == 0.25  # ties (-0.5 vs -0.5) do not count as preferring the context
    assert m["ctx_prob_mean"] == pytest.approx(sum(sig) / 4)
    assert [x["knows_memory"] for x in r.records] == [True, False, True, False]
    assert r.records[0]["closed_book"] == {"logp_ctx": -5.0, "logp_mem": -1.0}
    assert m["closed_book_param_rate"] == 0.5 and m["n_known"] == 2
    assert m["ctx_pref_rate_known"] == 0.5  # items 0 (prefers ctx) and 2 (tie)


def test_conflicts_real_model_both_modes(tiny):
    model, tok = tiny
    s = settings(limit=3)
    g = run(model, tok, "conflicts:world_facts", "raw", s).results[0].metrics
    assert g["ctx_rate"] + g["param_rate"] + g["neither_rate"] == pytest.approx(1.0)
    assert 0.0 <= g["closed_book_param_rate"] <= 1.0
    s.mode = "loglik"
    ll = run(model, tok, "conflicts:world_facts", "raw,chat", s)
    for r in ll.results:
        assert 0.0 <= r.metrics["ctx_pref_rate"] <= 1.0 and 0.0 < r.metrics["ctx_prob_mean"] < 1.0
        assert all(x["logp_ctx"] < 0 and x["logp_mem"] < 0 for x in r.records)


def test_haystack_multi_needle_and_too_short_length(tiny, monkeypatch, tmp_path):
    model, tok = tiny
    fake = FakeGenerate(tok, lambda d, i: "Figs and goat cheese.")
    monkeypatch.setattr("tunelens.probes.suites.haystack.generate_greedy", fake)
    rep = run(model, tok, "haystack:pizza_ingredients", "chat", settings(haystack_lengths=[160], haystack_depths=[0.0]))
    r = rep.results[0]
    assert r.settings["haystack"]["keywords"] == ["figs", "prosciutto", "goat", "cheese"]
    assert r.records[0]["recall"] == 0.75 and len(r.records[0]["inserted_depths"]) == 3
    assert all(t in fake.calls[0][0][0] for t in ("Figs are one", "Prosciutto is one", "Goat cheese is one"))
    out = rep.save(tmp_path / "probe")  # records and settings serialise to JSON
    assert (out / "records" / "haystack_pizza_ingredients__chat.jsonl").is_file()
    with pytest.raises(ConfigError, match="haystack length 20"):
        run(model, tok, "haystack", "raw", settings(haystack_lengths=[20]))


def test_contextqa_user_file_with_field_mapping(tiny, monkeypatch, tmp_path):
    model, tok = tiny
    path = tmp_path / "mine.jsonl"
    path.write_text('{"passage": "Ada lives in Paris.", "q": "Where does Ada live?", '
                    '"gold": ["Paris", "paris, France"]}\n'
                    '{"passage": "Bo is 7.", "q": "How old is Bo?", "gold": "seven"}\n', encoding="utf-8")
    monkeypatch.setattr("tunelens.probes.suites.contextqa.generate_greedy",
                        FakeGenerate(tok, ["In Paris, France", "7"]))
    s = settings(fields={"context": "passage", "question": "q", "answers": "gold"})
    r = run(model, tok, f"contextqa:{path}", "tulu", s).results[0]
    assert r.suite == f"contextqa:{path}" and r.n == 2 and r.settings["yesno"] is False
    assert [x["contained"] for x in r.records] == [True, False]
    assert [x["em"] for x in r.records] == [0.0, 0.0]
    assert r.records[0]["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # "in paris france" vs "paris france"
