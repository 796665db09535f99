"""tunelens.evals: IFEval scoring levels, reference-answer log-likelihood, well-terminated rate, judge, CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tunelens.chat import render
from tunelens.data.synth.teachers import TeacherResult
from tunelens.errors import ConfigError, DataError
from tunelens.evals import (GenerationSettings, IFEvalItem, JudgeItem, RefItem, answer_prompts,
                            judge_answers, load_ifeval, load_judge_items, load_judge_prompts, load_reference_items,
                            parse_rating, reference_loglik, score_response, score_responses, termination_stats)
from tunelens.evals.generation import Answer
from tunelens.evals.ifeval import response_variants
from tunelens.models import load_model


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-llama", seed=0)
    model.eval()
    return model, tok


# ----------------------------------------------------------------------------------------------- IFEval

def test_loose_variants_and_strict_vs_loose():
    assert response_variants("Sure!\n*body*\nBye") == [
        "Sure!\n*body*\nBye", "*body*\nBye", "Sure!\n*body*", "*body*", "Sure!\nbody\nBye", "body\nBye",
        "Sure!\nbody", "body"]
    # a chatty first line breaks the strict check, not the loose one
    item = IFEvalItem(1, "p", ["startend:quotation", "punctuation:no_comma"], [{}, {}])
    sc = score_response(item, 'Here, you go:\n"quoted, yes"')
    assert sc.strict == [False, False] and sc.loose == [True, False]
    # markdown bold around the end phrase breaks the strict check; the asterisk-free variant passes
    end = IFEvalItem(2, "p", ["startend:end_checker"], [{"end_phrase": "Any other questions?"}])
    assert score_response(end, "Done. **Any other questions?**").strict == [False]
    assert score_response(end, "Done. **Any other questions?**").loose == [True]
    # an empty (or whitespace) response fails even instructions it would trivially satisfy
    comma = IFEvalItem(3, "p", ["punctuation:no_comma"], [{}])
    assert score_response(comma, "  ").strict == [False] and score_response(comma, "").loose == [False]


def test_aggregation_levels_on_a_constructed_set():
    items = [
        IFEvalItem("a", "p", ["punctuation:no_comma", "startend:quotation"], [{}, {}]),
        IFEvalItem("b", "p", ["punctuation:no_comma"], [{}]),
        IFEvalItem("c", "p", ["punctuation:no_comma", "detectable_format:title", "startend:quotation"],
                   [{}, {}, {}]),
    ]
    responses = ['"no commas"',          # a: both followed
                 "one, two",             # b: failed
                 'Intro, here\n"<<T>>, x"']  # c: commas on both lines; title ok; quotation only loose
    metrics, scores = score_responses(items, responses)
    assert [s.strict for s in scores] == [[True, True], [False], [False, True, False]]
    assert [s.loose for s in scores] == [[True, True], [False], [False, True, True]]
    assert metrics["n_prompts"] == 3 and metrics["n_instructions"] == 6
    assert metrics["prompt_strict"] == pytest.approx(1 / 3)
    assert metrics["prompt_loose"] == pytest.approx(1 / 3)
    assert metrics["instruction_strict"] == pytest.approx(3 / 6)
    assert metrics["instruction_loose"] == pytest.approx(4 / 6)
    assert metrics["by_instruction"]["punctuation:no_comma"] == {"n": 3, "strict": pytest.approx(1 / 3),
                                                                 "loose": pytest.approx(1 / 3)}
    assert metrics["by_instruction"]["startend:quotation"] == {"n": 2, "strict": 0.5, "loose": 1.0}
    with pytest.raises(DataError, match="3 items but 2 responses"):
        score_responses(items, responses[:2])


def test_load_ifeval_real_file_and_bad_files(tmp_path, shared_data):
    items = load_ifeval()
    assert len(items) == 541 and sum(len(i.instruction_ids) for i in items) == 834
    assert all(None not in kw.values() for i in items for kw in i.kwargs)
    assert len(load_ifeval(limit=5)) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n'
                   '{"key": 2, "prompt": "p", "instruction_id_list": ["format:unknown"], "kwargs": [{}]}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 2: Unknown IFEval instruction id 'format:unknown'"):
        load_ifeval(bad)
    bad.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "x"], "kwargs": [{}]}\n')
    with pytest.raises(DataError, match="line 1: 'kwargs' must be a list with one object per instruction id"):
        load_ifeval(bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="line 1: invalid JSON"):
        load_ifeval(bad)


# ------------------------------------------------------------------------------------- termination

def test_termination_stats_counts():
    answers = [Answer("a", 3, "eos", 5), Answer("b", 8, "length", 5), Answer("c", 2, "stop_string", 5),
               Answer("d", 1, "eos", 5)]
    stats = termination_stats(answers)
    assert stats == {"n": 4, "well_terminated_rate": 0.5, "stop_string_rate": 0.25, "length_limit_rate": 0.25,
                     "mean_answer_tokens": 3.5}
    assert math.isnan(termination_stats([])["well_terminated_rate"])


def test_well_terminated_rate_from_real_generation(tiny):
    model, tok = tiny
    prompts = ["Name a colour.", "Write a haiku about rain.", "What is 2 + 2?"]
    settings = GenerationSettings(max_new_tokens=6, batch_size=2, progress=False)
    first = answer_prompts(model, tok, prompts, settings)
    assert all(a.stopped == "length" and a.n_tokens == 6 for a in first)  # a random model never says EOS
    # make the first greedy token of the first answer the EOS: exactly that answer becomes well-terminated
    # at step 0, unless another answer also emits it somewhere within its first 6 tokens
    stop_tok = tok.encode(first[0].text, add_special_tokens=False)[0]
    first_ids = [tok.encode(a.text, add_special_tokens=False) for a in first]
    expected = [("eos", ids.index(stop_tok)) if stop_tok in ids else ("length", 6) for ids in first_ids]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop_tok
    try:
        again = answer_prompts(model, tok, prompts, settings)
    finally:
        model.generation_config.eos_token_id = old
    assert [(a.stopped, a.n_tokens) for a in again] == expected
    n_eos = sum(why == "eos" for why, _ in expected)
    assert n_eos >= 1
    assert termination_stats(again)["well_terminated_rate"] == pytest.approx(n_eos / 3)


# ------------------------------------------------------------------------------------------ refll

def test_reference_items_join_questions_and_answers(shared_data):
    items = load_reference_items()
    assert len(items) == 30 * 2 + 10
    mt = next(i for i in items if i.id == "mt_bench:101:t2")
    assert [m["role"] for m in mt.messages] == ["user", "assistant", "user"]
    assert mt.messages[1]["content"].startswith("If you have just overtaken the second person")
    assert len(load_reference_items(["vicuna_bench"], turns="first")) == 10
    with pytest.raises(DataError, match="unknown reference benchmark 'nope'"):
        load_reference_items(["nope"])


def test_refll_finite_and_higher_for_a_memorised_answer(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    items = [RefItem("q1", "general", [{"role": "user", "content": "What is the capital of France?"}],
                     "The capital of France is Paris."),
             RefItem("q2", "general", [{"role": "user", "content": "Name a prime number."}],
                     "Seven is a prime number.")]
    before, recs = reference_loglik(model, tok, items, progress=False)
    assert before["n"] == 2 and all(math.isfinite(before[k]) for k in
                                    ("mean_logprob", "mean_logprob_content", "end_logprob"))
    # the scored tokens are exactly the trained tokens of the rendered answer (content + end-of-turn marker)
    r = render(items[0].messages + [{"role": "assistant", "content": items[0].reference}], tok, train_on="last")
    assert recs[0]["answer_tokens"] == sum(r.trained_mask)
    assert recs[0]["logprob"] == pytest.approx(recs[0]["mean_logprob"] * recs[0]["answer_tokens"])
    # a few steps of training on the first answer make it (and its end marker) more likely
    ids = torch.tensor([r.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(r.input_ids, r.trained_mask)]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    after, recs_after = reference_loglik(model, tok, items, progress=False)
    assert recs_after[0]["mean_logprob"] > recs[0]["mean_logprob"] + 1.0
    assert recs_after[0]["end_logprob"] > recs[0]["end_logprob"]
    # truncation scores the first N content tokens only
    trunc, trecs = reference_loglik(model, tok, items, max_answer_tokens=3, progress=False)
    assert trunc["n_truncated"] == 2 and all(t["answer_tokens"] == 3 and t["end_logprob"] is None for t in trecs)
    assert math.isnan(trunc["end_logprob"])


# ------------------------------------------------------------------------------------------- judge

class FakeJudge:
    """A Teacher (name, batch_size, identity, complete, close) that replays scripted verdicts in order."""

    name = "fake-judge"
    batch_size = 2

    def __init__(self, results):
        self.results, self.requests = list(results), []

    def identity(self):
        return {"kind": "fake"}

    def complete(self, requests):
        self.requests += list(requests)
        return [self.results.pop(0) for _ in requests]

    def close(self):
        pass


def test_parse_rating():
    assert parse_rating("Good answer. Rating: [[7]]") == 7.0
    assert parse_rating("[[8.5]]") == 8.5
    assert parse_rating("I'd say [[3]] at first... final: [[4]]") == 4.0  # the last verdict counts
    assert parse_rating("Rating: 6") == 6.0
    assert parse_rating("score [9]") == 9.0
    assert parse_rating("[[11]]") is None and parse_rating("[[0]]") is None
    assert parse_rating("no verdict") is None and parse_rating("") is None


def test_judge_counts_failures_and_uses_reference_prompt(shared_data):
    items = [JudgeItem("q1", "writing", "Write a poem.", "Roses are red."),
             JudgeItem("q2", "math", "2+2?", "4", reference="2+2 = 4."),
             JudgeItem("q3", "writing", "Q", "A"), JudgeItem("q4", "writing", "Q", "A"),
             JudgeItem("q5", "math", "Q", "A"), JudgeItem("q6", "math", "Q", "A")]
    judge = FakeJudge([TeacherResult("Fine. Rating: [[6]]", "stop"), TeacherResult("Correct. [[9]]", "stop"),
                       TeacherResult("", "timeout", error="timed out after 60 s"),
                       TeacherResult("   ", "stop"), TeacherResult("I cannot rate this.", "stop"),
                       TeacherResult("Rating: [[15]]", "stop")])
    metrics, records = judge_answers(judge, items, load_judge_prompts(), max_tokens=64)
    assert [r["status"] for r in records] == ["ok", "ok", "teacher_error", "empty", "parse_failure",
                                              "parse_failure"]
    assert metrics["n"] == 6 and metrics["n_scored"] == 2 and metrics["n_teacher_errors"] == 1
    assert metrics["n_empty"] == 1 and metrics["n_parse_failures"] == 2
    assert metrics["mean_score"] == pytest.approx(7.5)
    assert metrics["by_category"] == {"math": 9.0, "writing": 6.0}
    assert [r["judge_prompt"] for r in records[:2]] == ["single-v1", "single-math-v1"]
    user = judge.requests[1].messages[1]["content"]
    assert "[The Start of Reference Answer]\n2+2 = 4." in user and "[The Start of Assistant's Answer]\n4" in user
    assert judge.requests[0].max_tokens == 64 and judge.requests[0].messages[0]["role"] == "system"


def test_judge_items_from_mt_bench(shared_data):
    items = load_judge_items("mt_bench")
    assert len(items) == 80 and sum(i.reference is not None for i in items) == 30
    assert load_judge_items("vicuna_bench", limit=3)[0].id.startswith("vicuna_bench:")


# --------------------------------------------------------------------------------------------- CLI

@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_cli_ifeval_and_refll_end_to_end(run_cli, tmp_path):
    out = tmp_path / "ifeval"
    proc = run_cli("eval", "ifeval", "--model", "tiny-llama", "--out", out, "--limit", "3", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["eval"] == "ifeval" and res["metrics"]["n_prompts"] == 3
    recs = [json.loads(line) for line in (out / "records" / "ifeval.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["answer_tokens"] <= 4 and r["stopped"] in ("eos", "length") for r in recs)
    assert res["metrics"]["instruction_strict"] == pytest.approx(
        sum(sum(r["strict"]) for r in recs) / sum(len(r["strict"]) for r in recs))
    assert res["metrics"]["termination"]["n"] == 3

    out = tmp_path / "refll"
    proc = run_cli("eval", "refll", "--model", "tiny-llama", "--out", out, "--limit", "2", "--max-new-tokens", "3",
                   "--max-answer-tokens", "16")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["n"] == 2 and math.isfinite(res["metrics"]["mean_logprob"])
    assert res["metrics"]["termination"]["n"] == 2
    assert len((out / "records" / "answers.jsonl").read_text().splitlines()) == 2

    proc = run_cli("eval", "refll", "--model", "tiny-llama", "--out", out, "--benchmarks", "nope")
    assert proc.returncode == 2 and "unknown reference benchmark 'nope'" in proc.stderr
