"""Tests for the context-reliance data-prep steps: curation (tunelens.data.curate), counterfactual augmentation
(tunelens.data.augment), the [IND] context-dependency indicator (tunelens.data.indicator) and their CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tunelens.chat import render
from tunelens.data import Example, load_examples
from tunelens.data.augment import answer_type, augment_counterfactual, n_to_add, substitute_answer
from tunelens.data.context import ContextSpec, without_context
from tunelens.data.curate import (
    curate_by_parametric_perplexity,
    n_to_drop,
    parametric_perplexities,
    select_lowest,
    target_request,
)
from tunelens.data.indicator import (
    ExampleDependency,
    TurnScore,
    add_indicator_token,
    append_indicator,
    apply_indicator,
    context_dependency_scores,
    indicate,
)
from tunelens.errors import ConfigError, DataError
from tunelens.models import load_model
from tunelens.probes.engine import ScoreRequest, score_continuations

torch.set_num_threads(1)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def cqa(i: int, context: str, question: str, answer: str, **extra) -> Example:
    user = f"{context}\n\n{question}"
    return Example([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], f"mem:{i}",
                   {"id": f"ex{i}", "context": context, "question": question, "answer": answer, **extra})


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=0)


# --------------------------------------------------------------------------- context removal

def test_without_context_context_qa_keeps_question_and_system():
    ex = cqa(0, "Paris is in France.", "Where is Paris?", "France")
    ex.messages.insert(0, {"role": "system", "content": "Be brief."})
    msgs, had = without_context(ex)
    assert had and msgs == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Where is Paris?"},
                            {"role": "assistant", "content": "France"}]


def test_without_context_generic_messages_removes_the_marked_context(tmp_path):
    rec = {"messages": [{"role": "user", "content": "Read this:\nThe sky is green.\nWhat colour is the sky?"},
                        {"role": "assistant", "content": "green"}], "context": "The sky is green."}
    ex = load_examples(write_jsonl(tmp_path / "m.jsonl", [rec])).examples[0]
    msgs, had = without_context(ex)
    assert had and msgs[0]["content"] == "Read this:\n\nWhat colour is the sky?"


def test_alpaca_input_is_the_context(alpaca_path):
    exs = load_examples(alpaca_path, limit=40).examples
    with_input = next(e for e in exs if "context" in e.meta)
    msgs, had = without_context(with_input)
    assert had and msgs[0]["content"] == with_input.meta["question"]
    assert with_input.meta["context"] in with_input.messages[0]["content"]
    without_input = next(e for e in exs if "context" not in e.meta)
    with pytest.raises(DataError, match=r"alpaca_en_demo_llamafactory.json:#\d+, field 'context': missing"):
        without_context(without_input)
    msgs, had = without_context(without_input, ContextSpec(missing="as_is"))
    assert not had and msgs == without_input.messages


def test_context_not_in_user_turn_names_source_and_field():
    ex = cqa(3, "Ctx.", "Q?", "A")
    ex.meta["context"] = "something else"
    with pytest.raises(DataError, match=r"mem:3, field 'context': the context does not appear verbatim"):
        without_context(ex)
    ex.meta["context"] = 5
    with pytest.raises(DataError, match=r"mem:3, field 'context': must be a string"):
        without_context(ex)


def test_target_request_is_question_prompt_plus_answer_tokens(tiny):
    _, tok = tiny
    ex = cqa(0, "Long context here.", "Who?", "Alice Smith")
    prompt, target, had, trunc = target_request(ex, tok)
    r = render([{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Alice Smith"}], tok)
    assert had and not trunc and prompt + target == r.input_ids[: len(prompt) + len(target)]
    assert tok.decode(target) == "Alice Smith"
    _, _, _, trunc = target_request(ex, tok, max_length=len(prompt) + len(target) - 2)
    assert trunc


# --------------------------------------------------------------------------- drop arithmetic

@pytest.mark.parametrize("n,frac,expected", [(10, 0.0, 0), (10, 0.25, 2), (8, 0.25, 2), (3, 0.5, 1),
                                             (100, 0.29, 29), (7, 0.999, 6), (1, 0.5, 0)])
def test_n_to_drop_floors(n, frac, expected):
    assert n_to_drop(n, frac) == expected


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5])
def test_n_to_drop_rejects_bad_fractions(frac):
    with pytest.raises(DataError, match="drop_fraction must be in"):
        n_to_drop(10, frac)


def test_select_lowest_ties_break_by_position():
    assert select_lowest([1.0] * 8, 0.25) == [0, 1]
    assert select_lowest([3.0, 1.0, 2.0, 1.0, 5.0], 0.5) == [1, 3]
    assert select_lowest([3.0, 1.0], 0.0) == []
    with pytest.raises(DataError, match="NaN"):
        select_lowest([1.0, float("nan")], 0.5)


def test_curate_equal_scores_drop_the_first(tiny):
    model, tok = tiny
    exs = [cqa(i, "Some context.", "Same question?", "Same answer") for i in range(8)]
    rep = curate_by_parametric_perplexity(exs, model, tok, 0.25, batch_size=3, progress=False)
    assert len({round(s.mean_nll, 5) for s in rep.scores}) == 1
    assert [s.index for s in rep.scores if s.dropped] == [0, 1]
    assert [e.source for e in rep.kept] == [f"mem:{i}" for i in range(2, 8)]
    none = curate_by_parametric_perplexity(exs, model, tok, 0.0, progress=False)
    assert len(none.kept) == 8 and none.dropped == [] and none.threshold is None


def test_curate_empty_and_bad_fraction(tiny):
    model, tok = tiny
    with pytest.raises(DataError, match="no examples"):
        curate_by_parametric_perplexity([], model, tok, progress=False)
    with pytest.raises(DataError, match="drop_fraction"):
        curate_by_parametric_perplexity([cqa(0, "c", "q", "a")], model, tok, 1.0, progress=False)


def test_scores_do_not_depend_on_batching(tiny):
    model, tok = tiny
    exs = [cqa(i, "Context " * (i + 1), "Question " * (i % 3 + 1) + "?", "Answer " * (i % 4 + 1)) for i in range(7)]
    a = parametric_perplexities(exs, model, tok, batch_size=1, progress=False)
    b = parametric_perplexities(exs, model, tok, batch_size=4, progress=False)
    assert [s.mean_nll for s in a] == pytest.approx([s.mean_nll for s in b], abs=1e-4)


# --------------------------------------------------------------------------- curation on memorised facts

MEMORISED = {0: ("Who wrote the Zorblat Codex?", "Quennick Barrowsmith"),
             3: ("Which river feeds Lake Vantor?", "the Oskelund River")}
GENERIC_Q = "Who is named in the note?"
# example 5 is taught only WITH its context, next to three other notes asking the same question: without the
# context its answer is a 1-in-4 guess, with the context it is known
NOTES = [("A note from Drossel names Velmira Tesk.", "Velmira Tesk"), ("A note from Kell names Obri Santo.", "Obri Santo"),
         ("A note from Ferrow names Lusk Amadi.", "Lusk Amadi"), ("A note from Ynn names Carra Penhallow.", "Carra Penhallow")]


def _memorisation_set() -> list[Example]:
    exs = []
    fillers = ["Harbour towns trade salt.", "The council meets weekly.", "Old maps show two roads.",
               "Winters there are mild.", "The archive burned once.", "Bells ring at noon.",
               "Farmers grow barley.", "A bridge spans the gorge."]
    answers = ["Pellor Ammit", "Gastavine Oru", "Brell Kotto", "Hammon Teague", "Issa Drommel", "Orrin Vale",
               "Tamsin Ukwe", "Marlo Fenn"]
    for i in range(8):
        if i in MEMORISED:
            q, a = MEMORISED[i]
            exs.append(cqa(i, f"{fillers[i]} {a} is mentioned here.", q, a))
        elif i == 5:
            exs.append(cqa(i, NOTES[0][0], GENERIC_Q, NOTES[0][1]))
        else:
            exs.append(cqa(i, f"{fillers[i]} {answers[i]} lived there.", f"Who lived in town {i}?", answers[i]))
    return exs


def _train(model, tok, conversations, steps: int) -> None:
    """Full-batch AdamW on the last assistant turn of each conversation (right-padded)."""
    rows = [render(c, tok, train_on="last") for c in conversations]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r.input_ids + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = torch.tensor([[t if m else -100 for t, m in zip(r.input_ids, r.trained_mask)] + [-100] * (width - len(r))
                           for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def memorised():
    model, tok = load_model("tiny-llama", seed=1)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in MEMORISED.values()]
    convs += [[{"role": "user", "content": f"{c}\n\n{GENERIC_Q}"}, {"role": "assistant", "content": a}] for c, a in NOTES]
    _train(model, tok, convs, steps=50)
    return model, tok, _memorisation_set()


def _with_context_ppl(model, tok, ex: Example) -> float:
    r = render(ex.messages, tok)
    span = next(s for s in r.spans if s.role == "assistant")
    res = score_continuations(model, [ScoreRequest(r.input_ids[: span.token_start],
                                                   [r.input_ids[span.token_start: span.token_end]])], progress=False)
    return math.exp(-res[0][0].logprob / res[0][0].n_tokens)


def test_curation_drops_exactly_the_memorised_examples(memorised):
    model, tok, exs = memorised
    rep = curate_by_parametric_perplexity(exs, model, tok, drop_fraction=0.25, batch_size=3, progress=False)
    assert sorted(e.meta["id"] for e in rep.dropped) == ["ex0", "ex3"]
    assert [e.meta["id"] for e in rep.kept] == ["ex1", "ex2", "ex4", "ex5", "ex6", "ex7"]
    ppl = {s.id: s.parametric_ppl for s in rep.scores}
    assert 2 * max(ppl["ex0"], ppl["ex3"]) < min(v for k, v in ppl.items() if k not in ("ex0", "ex3"))
    # ex5 is kept because its context is removed: with the context its target is far more predictable
    with_ctx = _with_context_ppl(model, tok, exs[5])
    assert with_ctx < 0.5 * ppl["ex5"] and with_ctx < min(ppl[k] for k in ("ex1", "ex2", "ex4", "ex6", "ex7"))
    d = rep.to_dict()
    assert d["n_dropped"] == 2 and d["n_kept"] == 6 and {x["id"] for x in d["dropped"]} == {"ex0", "ex3"}
    assert d["threshold_ppl"] == pytest.approx(max(ppl["ex0"], ppl["ex3"]))
    json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------- augmentation

CITIES = ["Paris", "Lyon", "Nantes", "Lille", "Rennes"]


def _cities(n: int = 10) -> list[Example]:
    out = []
    for i in range(n):
        city = CITIES[i % len(CITIES)]
        year = str(1800 + 7 * i)
        if i % 2:
            out.append(cqa(i, f"The fair of {i} was held in {city}; {city} hosted it. Parisian food was served.",
                           f"Where was fair {i} held?", city))
        else:
            out.append(cqa(i, f"Treaty {i} was signed in {year} after talks.", f"When was treaty {i} signed?", year))
    return out


def test_answer_type_and_substitution_boundaries():
    assert [answer_type(a) for a in ["1848", "3.5%", "12,000", "New York", "the river", "de Gaulle"]] == \
        ["year", "number", "number", "proper", "other", "other"]
    assert substitute_answer("Paris and Parisian, Paris.", "Paris", "Lyon") == ("Lyon and Parisian, Lyon.", 2)


@pytest.mark.parametrize("n,frac,expected", [(10, 0.25, 3), (10, 0.1, 1), (10, 0.0, 0), (7, 0.5, 4)])
def test_n_to_add_rounds_half_up(n, frac, expected):
    assert n_to_add(n, frac) == expected


def test_substitution_add_mode_is_correct_and_counted():
    exs = _cities(10)
    rep = augment_counterfactual(exs, 0.25, seed=3)
    assert len(rep.added) == 3 and len(rep.examples) == 13 and rep.replaced == []
    originals = [e for e in rep.examples if not e.meta.get("counterfactual")]
    assert [e.source for e in originals] == [e.source for e in exs]  # order of the originals kept
    answers = {e.meta["answer"] for e in exs}
    for cf in rep.added:
        orig = exs[int(cf.source.split(":")[1].split("#")[0])]
        old, new = orig.meta["answer"], cf.meta["answer"]
        assert cf.meta["memory_answer"] == old and new != old and new in answers
        assert answer_type(new) == answer_type(old) == cf.meta["answer_type"]
        assert cf.messages[-1]["content"] == new
        assert cf.meta["context"] == substitute_answer(orig.meta["context"], old, new)[0]
        assert substitute_answer(cf.meta["context"], old, "X")[1] == 0  # no whole-word old answer left
        assert cf.meta["context"] in cf.messages[0]["content"] and cf.meta["question"] in cf.messages[0]["content"]
        if answer_type(old) == "proper":
            assert "Parisian" in cf.meta["context"]
    d = rep.to_dict()
    assert d["n_added"] == 3 and d["n_total"] == 13 and d["counterfactual_share"] == pytest.approx(3 / 13)
    assert d["n_eligible"] == 10


def test_substitution_replace_mode_keeps_size_and_replaces_the_rewritten():
    exs = _cities(10)
    rep = augment_counterfactual(exs, 0.3, seed=1, mode="replace")
    assert len(rep.examples) == 10 and len(rep.added) == 3 and len(rep.replaced) == 3
    assert {e.source + "#cf" for e in rep.replaced} == {e.source for e in rep.added}
    assert sum(bool(e.meta.get("counterfactual")) for e in rep.examples) == 3
    again = augment_counterfactual(exs, 0.3, seed=1, mode="replace")
    assert [e.messages for e in again.examples] == [e.messages for e in rep.examples]
    other = augment_counterfactual(exs, 0.3, seed=2, mode="replace")
    assert [e.messages for e in other.examples] != [e.messages for e in rep.examples]


def test_substitution_respects_the_type_key_and_reports_shortage():
    exs = [cqa(i, f"It was {a}.", "Who or where?", a, answer_type=t)
           for i, (a, t) in enumerate([("Paris", "city"), ("Lyon", "city"), ("Marie Curie", "person"),
                                        ("Ada Lovelace", "person")])]
    rep = augment_counterfactual(exs, 1.0, seed=0)
    for cf in rep.added:
        assert {cf.meta["answer"], cf.meta["memory_answer"]} in ({"Paris", "Lyon"}, {"Marie Curie", "Ada Lovelace"})
    lonely = exs[:3]  # "Marie Curie" has no other person to swap with
    with pytest.raises(DataError, match=r"only 2 of the 3 .*1 of them have no other answer of the same type"):
        augment_counterfactual(lonely, 1.0)
    with pytest.raises(DataError, match="fraction must be in"):
        augment_counterfactual(exs, 1.5)
    with pytest.raises(DataError, match="no examples"):
        augment_counterfactual([], 0.1)


def test_augment_from_conflicts_file(tmp_path):
    items = [{"id": f"c{i}", "context": f"In 2030 the capital of Land{i} moved to Town{i}.",
              "question": f"What is the capital of Land{i}?", "answer": f"Town{i}", "memory_answer": f"City{i}"}
             for i in range(6)]
    path = write_jsonl(tmp_path / "conf.jsonl", items)
    exs = _cities(8)
    rep = augment_counterfactual(exs, 0.5, conflicts=str(path), seed=0)
    assert len(rep.added) == 4 and len(rep.examples) == 12 and rep.source == str(path)
    for cf in rep.added:
        it = next(x for x in items if cf.meta["id"].endswith(":" + x["id"]))
        assert cf.messages == [{"role": "user", "content": f"{it['context']}\n\n{it['question']}"},
                               {"role": "assistant", "content": it["answer"]}]
        assert cf.meta["memory_answer"] == it["memory_answer"] and cf.meta["counterfactual"] is True
    with pytest.raises(DataError, match="only 6 items"):
        augment_counterfactual(_cities(20), 0.5, conflicts=str(path))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{k: v for k, v in items[0].items() if k != "answer"}])
    with pytest.raises(DataError, match=r"bad.jsonl.*line 1.*answer"):
        augment_counterfactual(exs, 0.5, conflicts=str(bad))


# --------------------------------------------------------------------------- indicator: insertion

def _dep(i: int, *turns: tuple[int, int, float]) -> ExampleDependency:
    return ExampleDependency(i, f"s:{i}", i, [TurnScore(a, u, s, 3, 3) for a, u, s in turns])


def test_apply_indicator_appends_once_to_flagged_user_turns_only():
    exs = [Example([{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                    {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                    {"role": "assistant", "content": "a2"}], "s:0", {}),
           Example([{"role": "user", "content": "v1"}, {"role": "assistant", "content": "b1"}], "s:1", {}),
           Example([{"role": "user", "content": "w1"}, {"role": "assistant", "content": "c1"}], "s:2", {})]
    deps = [_dep(0, (2, 1, 0.3), (4, 3, 0.9)), _dep(1, (1, 0, 0.6)), _dep(2, (1, 0, float("nan")))]
    out = apply_indicator(exs, deps, beta=0.6)
    assert [m["content"] for m in out[0].messages] == ["S", "u1", "a1", "u2 [IND]", "a2"]
    assert out[1].messages == exs[1].messages and out[2].messages == exs[2].messages  # 0.6 is not > 0.6
    assert [e.meta["indicator"] for e in out] == [True, False, False]
    assert exs[0].messages[3]["content"] == "u2"  # inputs untouched
    twice = apply_indicator(out, deps, beta=0.6)
    assert twice[0].messages[3]["content"].count("[IND]") == 1


def test_indicator_suffix_matches_the_probes_prompt():
    from tunelens.chat import render_prompt
    from tunelens.models import tiny_tokenizer
    from tunelens.probes.prompts import build_prompt

    tok = tiny_tokenizer()
    add_indicator_token(None, tok)
    q = "Context here.\n\nWhat is it?"
    probe = build_prompt("chat", q, tok, indicator="[IND]")
    ours = render_prompt([{"role": "user", "content": append_indicator(q)}], tok)
    assert probe.text == ours.text and probe.input_ids == ours.input_ids


def test_indicate_flags_above_beta_and_reports_share(tiny):
    model, tok = tiny
    exs = _cities(6)
    scores = context_dependency_scores(exs, model, tok, progress=False)
    vals = sorted(s.turns[0].score for s in scores)
    beta = (vals[2] + vals[3]) / 2
    rep = indicate(exs, model, tok, beta, progress=False)
    flagged = [s.turns[0].score > beta for s in rep.scores]
    assert sum(flagged) == 3 and rep.flagged_turn_share == 0.5 and rep.flagged_example_share == 0.5
    for ex, orig, f in zip(rep.examples, exs, flagged):
        assert ex.messages[0]["content"] == (orig.messages[0]["content"] + " [IND]" if f else orig.messages[0]["content"])
        assert ex.messages[1] == orig.messages[1]
    d = rep.to_dict()
    assert d["n_flagged_turns"] == 3 and d["layer"] == 2 and len(d["flagged"]) == 3
    json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------- indicator: the token

def test_add_indicator_token_tied_model():
    model, tok = load_model("tiny-llama", seed=0)
    old = model.get_input_embeddings().weight.detach().clone()
    n = len(tok)
    tid = add_indicator_token(model, tok)
    emb = model.get_input_embeddings().weight
    assert tid == n and len(tok) == n + 1 and emb.shape[0] == old.shape[0] + 1 == model.config.vocab_size
    assert torch.equal(emb[:-1], old) and torch.allclose(emb[tid], old.mean(0), atol=1e-6)
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert tok("Where? [IND]", add_special_tokens=False).input_ids[-1] == tid
    assert "[IND]" in tok.all_special_tokens or tok.added_tokens_decoder[tid].special
    out = model(input_ids=torch.tensor([[1, 2, tid]]))
    assert out.logits.shape[-1] == n + 1 and torch.isfinite(out.logits).all()
    assert add_indicator_token(model, tok) == tid and model.get_input_embeddings().weight.shape[0] == n + 1


def test_add_indicator_token_untied_init_from_text(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelens.models import save_model, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    w_in, w_out = (model.get_input_embeddings().weight.detach().clone(),
                   model.get_output_embeddings().weight.detach().clone())
    ids = tok("context", add_special_tokens=False).input_ids
    tid = add_indicator_token(model, tok, init_from="context")
    assert torch.equal(model.get_input_embeddings().weight[:-1], w_in)
    assert torch.equal(model.get_output_embeddings().weight[:-1], w_out)
    assert torch.allclose(model.get_input_embeddings().weight[tid], w_in[ids].mean(0), atol=1e-6)
    assert torch.allclose(model.get_output_embeddings().weight[tid], w_out[ids].mean(0), atol=1e-6)
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model(input_ids=torch.tensor([[tid, 5]]))
    save_model(model, tok, tmp_path / "m")
    back, btok = load_model(str(tmp_path / "m"))
    assert btok.convert_tokens_to_ids("[IND]") == tid and back.get_input_embeddings().weight.shape[0] == tid + 1
    with pytest.raises(ConfigError, match="surrounding spaces"):
        add_indicator_token(model, tok, " [X]")


# --------------------------------------------------------------------------- indicator: the score

def _reference(model_eager, tok, ex: Example, layer: int) -> list[float]:
    """s_m by eager attention with output_attentions, one example, no padding."""
    from tunelens.chat.render import _special_tokens

    r = render(ex.messages, tok)
    special = set(tok.convert_tokens_to_ids(sorted(_special_tokens(tok))))
    with torch.no_grad():
        att = model_eager(input_ids=torch.tensor([r.input_ids]), output_attentions=True).attentions[layer][0]
    user = torch.zeros(len(r.input_ids))
    out = []
    for s in r.spans:
        if s.role == "user":
            user[s.token_start:s.token_end] = 1
        if s.role == "assistant":
            resp = [t for t in range(s.token_start, s.token_end) if r.input_ids[t] not in special
                    and r.text[r.offsets[t][0]:r.offsets[t][1]].strip()]
            out.append(float((att[:, resp] @ user).amax(0).mean()))
    return out


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_context_dependency_scores_match_eager_reference(preset):
    model, tok = load_model(preset, seed=2)
    eager, _ = load_model(preset, seed=2, attn_implementation="eager")
    exs = _cities(3) + [Example([{"role": "system", "content": "Be kind."},
                                 {"role": "user", "content": "First question about apples?"},
                                 {"role": "assistant", "content": "Apples are red."},
                                 {"role": "user", "content": "And pears?"},
                                 {"role": "assistant", "content": "Pears are green\nand sweet."}], "multi:0", {})]
    for layer in (1, 3):
        got = context_dependency_scores(exs, model, tok, layer=layer, batch_size=3, progress=False)
        for ex, dep in zip(exs, got):
            assert [t.score for t in dep.turns] == pytest.approx(_reference(eager, tok, ex, layer), abs=2e-5)
    multi = got[-1].turns
    assert [(t.assistant_index, t.user_index) for t in multi] == [(2, 1), (4, 3)]
    assert multi[1].n_user_tokens > multi[0].n_user_tokens
    with pytest.raises(ConfigError, match="no attention call at layer 9"):
        context_dependency_scores(exs[:1], model, tok, layer=9, progress=False)


# --------------------------------------------------------------------------- CLI

@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_cli_curate_augment_indicate_chain(tmp_path, run_cli):
    recs = [{"id": f"r{i}", "context": e.meta["context"], "question": e.meta["question"], "answer": e.meta["answer"]}
            for i, e in enumerate(_cities(8))]
    data = write_jsonl(tmp_path / "d.jsonl", recs)
    cur = tmp_path / "cur.jsonl"
    r = run_cli("data", "curate", data, "--model", "tiny-llama", "--out", cur, "--drop", "0.25", "--batch-size", "3")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "cur.jsonl.report.json").read_text())
    assert rep["n_total"] == 8 and rep["n_dropped"] == 2 and rep["n_kept"] == 6 and rep["n_read"] == 8
    kept = load_examples(cur).examples
    assert len(kept) == 6 and {e.meta["id"] for e in kept} | {d["id"] for d in rep["dropped"]} == {f"r{i}" for i in range(8)}
    assert kept[0].meta["provenance"][0]["step"] == "curate" and kept[0].meta["context"] in kept[0].messages[0]["content"]

    aug = tmp_path / "aug.jsonl"
    r = run_cli("data", "augment", cur, "--out", aug, "--fraction", "0.5", "--report", tmp_path / "aug.json")
    assert r.returncode == 0, r.stderr
    arep = json.loads((tmp_path / "aug.json").read_text())
    assert arep["n_added"] == 3 and arep["n_total"] == 9
    mixed = load_examples(aug).examples
    assert sum(bool(e.meta.get("counterfactual")) for e in mixed) == 3
    assert [p["step"] for p in mixed[0].meta["provenance"]] == ["curate", "augment"] or \
        [p["step"] for p in mixed[0].meta["provenance"]] == ["augment"]

    ind, model_dir = tmp_path / "ind.jsonl", tmp_path / "model"
    r = run_cli("data", "indicate", aug, "--model", "tiny-llama", "--beta", "0.0", "--out", ind,
                "--save-model", model_dir)
    assert r.returncode == 0, r.stderr
    irep = json.loads((tmp_path / "ind.jsonl.report.json").read_text())
    assert irep["flagged_turn_share"] == 1.0 and irep["token_id"] == 8192
    assert all(e.messages[0]["content"].endswith(" [IND]") for e in load_examples(ind).examples)
    m, tok = load_model(str(model_dir))
    assert tok.convert_tokens_to_ids("[IND]") == 8192 and m.config.vocab_size == 8193


def test_cli_bad_input_names_file_line_field(tmp_path, run_cli):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"context": "c", "question": "q", "answer": "a"},
                                                 {"context": "c", "question": "q"}])
    r = run_cli("data", "augment", data, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "error:" in r.stderr and not (tmp_path / "o.jsonl").exists()
    assert "bad.jsonl" in r.stderr and "line 2" in r.stderr and "answer" in r.stderr


# --------------------------------------------------------------------------- config-driven prep and SFT

def test_validate_prep_errors_name_the_step():
    from tunelens.data.prep import validate_prep

    assert validate_prep([{"step": "curate"}])[0]["drop"] == 0.25
    with pytest.raises(ConfigError, match=r"data.prep\[1\].step: 'filter' is not one of"):
        validate_prep([{"step": "curate"}, {"step": "filter"}])
    with pytest.raises(ConfigError, match=r"data.prep\[0\]: unknown option\(s\) \['dorp'\] for step 'curate'"):
        validate_prep([{"step": "curate", "dorp": 0.2}])
    with pytest.raises(ConfigError, match=r"data.prep\[0\]: expected a mapping"):
        validate_prep(["curate"])


def test_run_prep_chains_steps(tiny):
    from tunelens.data.prep import run_prep

    model, tok = tiny
    res = run_prep(_cities(8), [{"step": "curate", "drop": 0.25}, {"step": "augment", "fraction": 0.5},
                                {"step": "indicate", "beta": 0.0}], model, tok, seed=4)
    assert [r["step"] for r in res.reports] == ["curate", "augment", "indicate"]
    assert res.reports[0]["n_kept"] == 6 and res.reports[1]["n_added"] == 3 and len(res.examples) == 9
    assert res.indicator_token == "[IND]" and all(e.messages[0]["content"].endswith(" [IND]") for e in res.examples)
    assert "[IND]" not in tok.get_vocab()  # scoring never changes the seed tokenizer
    with pytest.raises(ConfigError, match="needs a model"):
        run_prep(_cities(4), [{"step": "curate"}])


@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_sft_runs_prep_from_config(tmp_path):
    from tunelens.config import load_config
    from tunelens.train import SFTConfig, train_sft

    recs = [{"context": e.meta["context"], "question": e.meta["question"], "answer": e.meta["answer"]}
            for e in _cities(8)]
    data = write_jsonl(tmp_path / "d.jsonl", recs)
    cfg = load_config(SFTConfig, None, [f"data.paths=[{data}]", "max_steps=2", "batch_size=2", "save_every=0",
                                        "tensorboard=false", "data.max_length=128",
                                        "data.prep=[{step: curate, drop: 0.25}, {step: indicate, beta: 0.0}]"])
    train_sft(cfg, tmp_path / "run")
    rep = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert [r["step"] for r in rep["prep"]] == ["curate", "indicate"] and rep["tokenize"]["n_examples"] == 6
    model, tok = load_model(str(tmp_path / "run" / "final"))
    assert tok.convert_tokens_to_ids("[IND]") == 8192 and model.get_input_embeddings().weight.shape[0] == 8193
