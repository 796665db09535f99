"""tunelens.probes.metrics: normalisation, containment, conflict outcomes, recall, EM/F1,
context preference, rates, bootstrap intervals and trajectory summaries."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tunelens.errors import DataError
from tunelens.probes.metrics import (
    CI,
    bootstrap_ci,
    conflict_outcome,
    conflict_rates,
    contains,
    contains_any,
    context_preference,
    keyword_recall,
    normalize_answer,
    rate,
    rates,
    recall_error,
    squad_em_f1,
    squad_scores,
    summarize_trajectory,
)

SF_WORDS = ("eat", "sandwich", "sit", "dolores", "park", "sunny", "day")


# --------------------------------------------------------------------------- normalisation, containment

@pytest.mark.parametrize("raw,norm", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  An  apple,\ta pear\n", "apple pear"),
    ("theatre", "theatre"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("Hello, World!!", "hello world"),
    ("Zürich’s “Café”", "zürichs café"),  # Unicode punctuation dropped, letters kept
    ("ＡＢＣ １２３", "abc 123"),  # NFKC: full-width -> ASCII
    ("The", ""),
    ("", ""),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_normalize_matches_squad_script_on_ascii():
    import re
    import string

    def official(s):  # the SQuAD v1.1 evaluation script's normalize_answer
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        s = re.sub(r"\b(a|an|the)\b", " ", s)
        return " ".join(s.split())

    for s in ["The  quick, brown fox's (2nd) jump -- a \"test\".", "An A-Team; the end?", "$3.50 & 10%"]:
        assert normalize_answer(s) == official(s)


def test_contains_edge_cases():
    assert contains("The capital is HERAT.", "Herat")
    assert contains("the capital is herat", "Herat!")  # punctuation in the answer is ignored
    assert contains("I think it's the Eiffel   Tower.", "Eiffel Tower")
    assert contains("Die Hauptstadt ist Zürich.", "zürich") and not contains("Zurich", "Zürich")
    assert contains("Romeo", "Rome")  # substring semantics, as [A] and [B]
    assert not contains("Romeo", "Rome", whole_words=True) and contains("Rome, Italy", "Rome", whole_words=True)
    assert not contains("", "Herat")
    for bad in ("", "   ", "The", "a.", "!!"):
        with pytest.raises(DataError, match="empty after normalisation"):
            contains("anything at all", bad)
    assert contains_any("It was in 1945.", ["1944", "1945"]) and not contains_any("1946", ["1944", "1945"])
    with pytest.raises(DataError, match="no gold answers"):
        contains_any("x", [])


# --------------------------------------------------------------------------- conflicts

def test_conflict_outcome_basic():
    assert conflict_outcome("The capital is Herat.", "Herat", "Kabul") == "ctx"
    assert conflict_outcome("It is Kabul, of course.", "Herat", "Kabul") == "param"
    assert conflict_outcome("I do not know.", "Herat", "Kabul") == "neither"
    assert conflict_outcome("", "Herat", "Kabul") == "neither"


def test_conflict_outcome_both_first_wins():
    out_ctx_first = "Herat is the capital now; it used to be Kabul."
    out_mem_first = "Kabul. Although the passage claims Herat."
    assert conflict_outcome(out_ctx_first, "Herat", "Kabul") == "ctx"
    assert conflict_outcome(out_mem_first, "Herat", "Kabul") == "param"
    assert conflict_outcome(out_ctx_first, "Herat", "Kabul", both="keep") == "both"
    assert conflict_outcome(out_mem_first, "Herat", "Kabul", both="ctx") == "ctx"
    assert conflict_outcome(out_ctx_first, "Herat", "Kabul", both="param") == "param"
    with pytest.raises(ValueError, match="both must be"):
        conflict_outcome("x", "Herat", "Kabul", both="count")


def test_conflict_outcome_nested_answers():
    # the shorter answer inside the longer one is not evidence for the shorter one
    assert conflict_outcome("The Antarctic Desert.", "Antarctic Desert", "Antarctic") == "ctx"
    assert conflict_outcome("Antarctica, surely.", "Antarctic Desert", "Antarctic") == "param"
    assert conflict_outcome("Antarctic, not the Antarctic Desert", "Antarctic Desert", "Antarctic") == "param"
    assert conflict_outcome("New York City", "York", "New York City") == "param"
    with pytest.raises(DataError, match="equal after normalisation"):
        conflict_outcome("Paris", "Paris", "the paris.")
    with pytest.raises(DataError, match="empty after normalisation"):
        conflict_outcome("x", "A", "B")  # MemoTrap-style letter options need log-prob scoring


def test_conflict_rates_sum_to_one():
    outputs = ["Herat", "Kabul", "no idea", "Herat or Kabul", "Kabul or Herat", "herat!"]
    labels = [conflict_outcome(o, "Herat", "Kabul") for o in outputs]
    assert labels == ["ctx", "param", "neither", "ctx", "param", "ctx"]
    r = conflict_rates(labels)
    assert r == {"n": 6, "ctx": 3 / 6, "param": 2 / 6, "neither": 1 / 6}
    assert math.isclose(r["ctx"] + r["param"] + r["neither"], 1.0)
    with pytest.raises(ValueError, match=r"unknown outcome label\(s\) \['both'\]"):
        conflict_rates(["ctx", "both"])
    with pytest.raises(ValueError, match="no outcomes"):
        conflict_rates([])


# --------------------------------------------------------------------------- haystack recall

def test_keyword_recall_paper_b():
    full = "The best thing is to eat a sandwich and sit in Dolores Park on a sunny day."
    assert keyword_recall(full, SF_WORDS) == 1.0
    assert keyword_recall("EAT-A-SANDWICH!Sit;DOLORES(park)...sunny/day", SF_WORDS) == 1.0  # punctuation -> space
    assert keyword_recall("Eating sandwiches at the park.", SF_WORDS) == pytest.approx(1 / 7)  # whole words only
    assert keyword_recall("", SF_WORDS) == 0.0
    assert keyword_recall("sandwich sandwich sandwich", SF_WORDS) == pytest.approx(1 / 7)
    # phrase keywords (needles.json) must appear as consecutive words
    assert keyword_recall("dolores park on a sunny day", ["Dolores Park", "sunny day", "sandwich"]) == pytest.approx(2 / 3)
    assert keyword_recall("park dolores", ["Dolores Park"]) == 0.0
    assert keyword_recall("Dolores’ Park", ["dolores park"]) == 1.0  # Unicode apostrophe -> space
    with pytest.raises(DataError, match="no keywords"):
        keyword_recall("x", [])
    with pytest.raises(TypeError, match="not one string"):
        keyword_recall("x", "sandwich")


def test_recall_error():
    assert recall_error(1.0) == 0.0 and recall_error(0.25) == 0.75
    assert recall_error([1.0, 0.5, 0.0, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        recall_error(1.5)
    with pytest.raises(ValueError, match="no recall values"):
        recall_error([])


# --------------------------------------------------------------------------- SQuAD

def test_squad_em_f1():
    assert squad_em_f1("Denver Broncos", ["Denver Broncos"]) == (1.0, 1.0)
    assert squad_em_f1("the Denver Broncos.", ["Denver Broncos"]) == (1.0, 1.0)
    em, f1 = squad_em_f1("Broncos won", ["Denver Broncos"])
    assert em == 0.0 and f1 == pytest.approx(0.5)  # p = 1/2, r = 1/2
    em, f1 = squad_em_f1("Carolina Panthers", ["Denver Broncos", "Panthers"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)  # best gold: p = 1/2, r = 1
    assert squad_em_f1("", ["x"]) == (0.0, 0.0)
    assert squad_em_f1("the", ["a"]) == (1.0, 1.0)  # both empty after normalisation
    assert squad_em_f1("308", "308") == (1.0, 1.0)  # one gold as a plain string
    with pytest.raises(DataError, match="no gold answers"):
        squad_em_f1("x", [])
    s = squad_scores(["Denver Broncos", "no"], [["Denver Broncos"], ["yes"]])
    assert s == {"n": 2, "em": 0.5, "f1": 0.5}


# --------------------------------------------------------------------------- log-prob preference

def test_context_preference_numerics():
    assert context_preference(-1.0, -1.0) == 0.5
    assert context_preference(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    # huge negative log-probs: naive exp() underflows to 0/0, the sigmoid of the difference does not
    assert context_preference(-10_000.0, -10_001.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert context_preference(-1e6, -1e6 + 2) == pytest.approx(1 / (1 + math.exp(2)))
    assert context_preference(-1e300, -1.0) == 0.0 and context_preference(-1.0, -1e300) == 1.0
    arr = context_preference([-5000.0, float("-inf"), -3.0, float("-inf"), float("nan")],
                             np.array([-5001.0, -2.0, float("-inf"), float("-inf"), -1.0]))
    assert isinstance(arr, np.ndarray) and arr.shape == (5,)
    assert arr[0] == pytest.approx(0.7310585786) and arr[1] == 0.0 and arr[2] == 1.0
    assert np.isnan(arr[3]) and np.isnan(arr[4])  # 0/0 and NaN input stay undefined
    big = context_preference(np.full(4, -80_000.0, dtype=np.float32), np.full(4, -80_000.0, dtype=np.float32))
    assert np.allclose(big, 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        context_preference([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- rates, bootstrap

def test_rate_helpers():
    assert rate([True, False, True, True]) == 0.75 and rate([1, 0]) == 0.5
    with pytest.raises(ValueError, match="no items"):
        rate([])
    assert rates(["ctx", "ctx", "param"], ["ctx", "param", "neither"]) == {"ctx": 2 / 3, "param": 1 / 3,
                                                                           "neither": 0.0}
    with pytest.raises(ValueError, match=r"label\(s\) \['x'\] not in categories"):
        rates(["x"], ["ctx"])


def test_bootstrap_ci():
    values = [1.0] * 70 + [0.0] * 30
    ci = bootstrap_ci(values, n=2000, seed=0)
    assert isinstance(ci, CI) and ci.estimate == pytest.approx(0.7)
    assert ci.low < 0.7 < ci.high
    # binomial standard error sqrt(.7 * .3 / 100) = 0.0458 -> 95% half-width about 0.09
    assert 0.06 < ci.high - 0.7 < 0.12 and 0.06 < 0.7 - ci.low < 0.12
    assert bootstrap_ci(values, n=2000, seed=0) == ci  # deterministic
    noisy = list(np.linspace(0.0, 1.0, 37) ** 2)
    assert bootstrap_ci(noisy, n=500, seed=1) != bootstrap_ci(noisy, n=500, seed=2)  # the seed matters
    wide = bootstrap_ci(values, n=2000, seed=0, alpha=0.01)
    assert wide.low <= ci.low and wide.high >= ci.high
    assert bootstrap_ci([0.4]) == CI(0.4, 0.4, 0.4) and bootstrap_ci([1.0, 1.0, 1.0]) == CI(1.0, 1.0, 1.0)
    assert json.loads(json.dumps(ci._asdict()))["estimate"] == pytest.approx(0.7)
    for bad, msg in [([], "non-empty"), ([1.0, float("nan")], "finite")]:
        with pytest.raises(ValueError, match=msg):
            bootstrap_ci(bad)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 0.0], alpha=1.5)


# --------------------------------------------------------------------------- trajectories

def test_summarize_trajectory_rising_then_falling():
    # [A]'s shape: zero-shot 0.30, peak 0.60 at step 150, then decline to 0.35
    steps = list(range(0, 501, 50))
    values = [0.30, 0.40, 0.50, 0.60, 0.55, 0.50, 0.45, 0.40, 0.38, 0.36, 0.35]
    pts = list(zip(steps, values))
    s = summarize_trajectory(pts[::-1])  # order of the input does not matter
    assert s["peak"] == 0.60 and s["step_of_peak"] == 150 and s["final"] == 0.35 and s["step_final"] == 500
    assert s["initial"] == 0.30 and s["n_points"] == 11 and s["n_skipped"] == 0
    assert s["inversion"] == pytest.approx(0.25) and s["inverted"] is True
    assert summarize_trajectory(pts, threshold=0.3)["inverted"] is False
    json.dumps(s)


def test_summarize_trajectory_monotone_and_plateaus():
    rising = summarize_trajectory([(0, 0.1), (10, 0.2), (20, 0.3)])
    assert rising["peak"] == rising["final"] == 0.3 and rising["inversion"] == 0.0 and not rising["inverted"]
    plateau = summarize_trajectory([(0, 0.2), (5, 0.9), (10, 0.9), (15, 0.85)])
    assert plateau["step_of_peak"] == 5 and plateau["inversion"] == pytest.approx(0.05) and not plateau["inverted"]
    single = summarize_trajectory([(7, 0.4)])
    assert single["peak"] == single["final"] == 0.4 and single["step_of_peak"] == 7
    with pytest.raises(ValueError, match="no points"):
        summarize_trajectory([])
    with pytest.raises(ValueError, match=r"repeated step\(s\) \[5\]"):
        summarize_trajectory([(5, 0.1), (5, 0.2)])
    with_nan = summarize_trajectory([(0, 0.2), (10, float("nan")), (20, 0.8), (30, 0.5)])
    assert with_nan["n_points"] == 3 and with_nan["n_skipped"] == 1 and with_nan["peak"] == 0.8
    assert with_nan["inverted"] and with_nan["inversion"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="none of the 1 values is finite"):
        summarize_trajectory([(0, float("nan"))])
    with pytest.raises(ValueError, match="must be an integer"):
        summarize_trajectory([(0.5, 0.1)])
