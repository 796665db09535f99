"""tunelens.heads: one-pass activation patterns vs the eager reference, aggregation, statistics, composition,
ablation, the training callback, the CLI and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tunelens.data import Example, TokenizedExample, load_examples
from tunelens.errors import ConfigError, DataError
from tunelens.heads import (
    HeadPatterns,
    ablate_heads,
    aggregate,
    as_batches,
    compute_patterns,
    find_head_sites,
    mean_head_outputs,
    normalize_pattern,
    response_loss,
)
from tunelens.heads.causal import ablation_check, random_heads
from tunelens.heads.compare import compare_patterns, delta, delta_summary
from tunelens.heads.composition import (
    build_mixture,
    fit_composition,
    mixture_counts,
    null_control,
)
from tunelens.heads.sites import head_input_hooks
from tunelens.heads.stats import (
    coefficient_of_variation,
    cosine,
    entropy,
    gini,
    mse,
    pearson,
    spearman,
    topk_jaccard,
)
from tunelens.models import load_model

ARCHS = ["tiny-llama", "tiny-gpt2", "tiny-gemma3"]


@pytest.fixture(scope="module")
def examples(alpaca_path) -> list[Example]:
    return load_examples(alpaca_path, limit=8).examples


def _model(name: str, double: bool = False):
    model, tok = load_model(name, seed=3)
    return (model.double() if double else model), tok


# ----------------------------------------------------------------------------------------------- backends

@pytest.mark.parametrize("arch", ARCHS)
def test_gate_backend_matches_eager_probabilities_in_float64(arch, examples):
    model, tok = _model(arch, double=True)
    impl = model.config._attn_implementation
    gate = compute_patterns(model, tok, examples[:6], batch_size=3, max_length=64, progress=False)
    eager = compute_patterns(model, tok, examples[:6], batch_size=3, max_length=64, backend="eager", progress=False)
    assert model.config._attn_implementation == impl == "sdpa"  # gate ran on SDPA; eager was switched back
    assert gate.per_sample.shape == (6, 4, 4)
    assert np.abs(gate.per_sample).max() > 1e-4  # not trivially zero
    np.testing.assert_allclose(gate.per_sample, eager.per_sample, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gate.matrix, eager.matrix, rtol=0, atol=1e-5)
    assert gate.settings["projections"][0].endswith("c_proj" if arch == "tiny-gpt2" else "o_proj")


def test_gate_score_equals_finite_difference_of_head_scaling(examples):
    """AP's per-sample score is dL_i/dξ at ξ=1 for a scale ξ on one head's output: check by central differences."""
    model, tok = _model("tiny-gpt2", double=True)
    batches = as_batches(examples[:2], tok, batch_size=2, max_length=48)
    pat = compute_patterns(model, tok, batches, progress=False)
    sites = find_head_sites(model)
    eps = 1e-5

    def losses(layer: int, head: int, factor: float) -> np.ndarray:
        def scale(site, x):
            if site.layer != layer:
                return x
            f = torch.ones(site.num_heads, dtype=x.dtype).index_fill(0, torch.tensor([head]), factor)
            return x * f[:, None]
        with head_input_hooks(sites, scale), torch.no_grad():
            return np.array(response_loss(model, batches)["sample_losses"])

    for layer, head in [(0, 1), (2, 3), (3, 0)]:
        fd = (losses(layer, head, 1 + eps) - losses(layer, head, 1 - eps)) / (2 * eps)
        np.testing.assert_allclose(pat.per_sample[:, layer, head], fd, rtol=1e-5, atol=1e-9)
    # and the pattern is the mean of the absolute per-sample scores
    np.testing.assert_allclose(pat.matrix, np.abs(pat.per_sample).mean(axis=0))


def test_aggregations_by_hand():
    s = np.array([[[1.0, -2.0]], [[-3.0, 4.0]], [[0.5, 0.5]]])  # 3 samples, 1 layer, 2 heads
    ids = np.array([0, 0, 1])
    np.testing.assert_allclose(aggregate(s, ids, "per_sample_abs", 3), [[4.5 / 3, 6.5 / 3]])
    np.testing.assert_allclose(aggregate(s, ids, "batch_sum_abs", 3), [[(2 + 0.5) / 3, (2 + 0.5) / 3]])
    np.testing.assert_allclose(aggregate(s, ids, "per_sample_abs", 10), [[0.45, 0.65]])  # per-token denominator
    with pytest.raises(ConfigError, match="aggregation"):
        aggregate(s, ids, "mean", 3)


def test_per_sample_vs_batch_sum_on_a_model(examples):
    model, tok = _model("tiny-llama")
    one = compute_patterns(model, tok, examples, batch_size=1, max_length=64, aggregation="batch_sum_abs",
                           progress=False)
    per = compute_patterns(model, tok, examples, batch_size=4, max_length=64, progress=False)
    summed = compute_patterns(model, tok, examples, batch_size=4, max_length=64, aggregation="batch_sum_abs",
                              progress=False)
    # batches of one: the sign is dropped per sample either way
    np.testing.assert_allclose(one.matrix, per.matrix, rtol=1e-5, atol=1e-8)
    # larger batches: |Σ s| <= Σ |s| everywhere, strictly where signs disagree within a batch
    assert np.all(summed.matrix <= per.matrix + 1e-9)
    assert (per.matrix - summed.matrix).max() > 1e-4
    tokens = compute_patterns(model, tok, examples, batch_size=4, max_length=64, per_token=True, progress=False)
    assert tokens.n_tokens > tokens.n_samples and not np.allclose(tokens.matrix, per.matrix)


def test_patterns_save_load_top_k_and_normalisation(tmp_path, examples):
    model, tok = _model("tiny-llama")
    pat = compute_patterns(model, tok, examples[:4], batch_size=2, max_length=64, model_name="tiny-llama",
                           progress=False)
    top = pat.top_k(3)
    flat = pat.matrix.ravel()
    assert [pat.matrix[l, h] for l, h in top] == sorted(flat, reverse=True)[:3]
    pat.save(tmp_path / "p")
    back = HeadPatterns.load(tmp_path / "p")
    np.testing.assert_array_equal(back.matrix, pat.matrix)
    np.testing.assert_array_equal(back.per_sample, pat.per_sample)
    assert back.settings["model"] == "tiny-llama" and back.n_samples == 4 and back.top_k(3) == top
    l2 = pat.normalized("layer_l2").matrix
    np.testing.assert_allclose(np.linalg.norm(l2, axis=1), 1.0)
    mm = pat.normalized("layer_l2+minmax").matrix
    assert mm.min() == 0.0 and mm.max() == 1.0
    np.testing.assert_array_equal(pat.normalized(None).matrix, pat.matrix)
    with pytest.raises(ConfigError, match="k must be"):
        pat.top_k(0)
    with pytest.raises(ConfigError, match="normalisation"):
        normalize_pattern(pat.matrix, "zscore")


# ----------------------------------------------------------------------------------------------- statistics

def test_concentration_statistics_on_known_vectors():
    uniform, one_hot = np.ones((3, 4)), np.eye(1, 12).reshape(3, 4)
    assert gini(uniform) == pytest.approx(0.0, abs=1e-12)
    assert gini(one_hot) == pytest.approx(11 / 12)
    assert gini(np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.5)
    assert coefficient_of_variation(uniform) == 0.0
    assert coefficient_of_variation(np.array([1.0, 3.0])) == pytest.approx(0.5)
    assert entropy(uniform) == pytest.approx(math.log(12))
    assert entropy(uniform, normalized=True) == pytest.approx(1.0)
    assert entropy(one_hot) == 0.0


def test_similarity_statistics_on_known_vectors():
    x = np.arange(1.0, 13.0).reshape(3, 4)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert mse(x, x + 2) == pytest.approx(4.0)
    a, b = np.array([5.0, 4, 3, 0, 0, 0]), np.array([5.0, 0, 3, 4, 0, 0])
    assert topk_jaccard(a, b, 2) == pytest.approx(1 / 3)
    assert topk_jaccard(a, b, 3) == pytest.approx(2 / 4)
    assert math.isnan(pearson(np.ones(4), x.ravel()[:4]))
    with pytest.raises(ConfigError, match="differ in size"):
        mse(x, np.ones(5))


def test_delta_summary_and_comparison():
    before = np.full((2, 3), 1.0)
    after = before.copy()
    after[1, 2] = 3.0
    after[0, 0] = 0.5
    np.testing.assert_array_equal(delta(before, after), after - before)
    d = delta_summary(before, after, threshold=0.25)
    assert d["frac_changed"] == pytest.approx(2 / 6) and d["max_abs"] == 2.0
    assert d["top_increase"][0] == [1, 2, 2.0] and d["top_decrease"][0] == [0, 0, -0.5]
    res = compare_patterns(before + np.arange(6).reshape(2, 3), after, ks=(2,))
    assert set(res["similarity"]) == {"pearson", "spearman", "cosine", "mse", "jaccard@2"}


# ----------------------------------------------------------------------------------------------- composition

def test_nnls_recovers_known_coefficients_and_null_is_low():
    rng = np.random.default_rng(0)
    math_d, code_d, text_d = (rng.normal(size=(30, 9)) for _ in range(3))
    target = 0.7 * math_d + 0.3 * code_d + 0.01 * rng.normal(size=(30, 9))
    fit = fit_composition(target, {"math": math_d, "code": code_d, "text": text_d}, "nnls")
    assert fit.coefficients["math"] == pytest.approx(0.7, abs=0.01)
    assert fit.coefficients["code"] == pytest.approx(0.3, abs=0.01)
    assert fit.coefficients["text"] == pytest.approx(0.0, abs=0.01)
    assert fit.r2 > 0.999 and fit.adj_r2 <= fit.r2 and fit.n == 270 and fit.p == 3
    assert fit.adj_r2 == pytest.approx(1 - (1 - fit.r2) * 269 / 266)
    null = null_control(target, {"math": math_d, "code": code_d}, n_permutations=50, seed=1)
    assert null.observed_r2 > 0.99 and null.null_mean < 0.05 and null.p_value == pytest.approx(1 / 51)
    unrelated = fit_composition(target, {"text": text_d}, "nnls")
    assert unrelated.r2 < 0.05
    # NNLS keeps coefficients >= 0 where least squares goes negative
    neg = -0.5 * math_d + code_d
    assert fit_composition(neg, [math_d, code_d], "lstsq").coefficients["basic0"] == pytest.approx(-0.5)
    assert fit_composition(neg, [math_d, code_d], "nnls").coefficients["basic0"] == 0.0
    with_c = fit_composition(target + 2.0, {"math": math_d, "code": code_d}, "nnls", intercept=True)
    assert with_c.intercept == pytest.approx(2.0, abs=0.01) and with_c.coefficients["math"] == pytest.approx(0.7, abs=0.01)
    with pytest.raises(ConfigError, match="heads"):
        fit_composition(target, {"x": np.ones(5)})


def test_mixture_builder_is_weighted_and_deterministic():
    counts = mixture_counts({"a": 0.6, "b": 0.3, "c": -0.2, "d": 0.1}, 10)
    assert counts == {"a": 6, "b": 3, "c": 0, "d": 1}
    assert sum(mixture_counts({"a": 1, "b": 1, "c": 1}, 10).values()) == 10
    data = {"a": list(range(100)), "b": list(range(100, 200)), "d": list(range(200, 300)), "c": []}
    m1 = build_mixture({"a": 0.6, "b": 0.3, "c": 0.0, "d": 0.1}, data, 10, seed=4)
    m2 = build_mixture({"a": 0.6, "b": 0.3, "c": 0.0, "d": 0.1}, data, 10, seed=4)
    assert m1.items == m2.items and len(set(m1.items)) == 10
    assert sum(1 for s in m1.sources if s == "a") == 6 and all(0 <= x < 100 for x, s in zip(m1.items, m1.sources)
                                                               if s == "a")
    assert build_mixture({"a": 1, "b": 1}, data, 10, seed=5).items != m1.items
    with pytest.raises(DataError, match="has 100 items"):
        build_mixture({"a": 1.0}, data, 150)
    assert len(build_mixture({"a": 1.0}, data, 150, replace=True).items) == 150
    with pytest.raises(ConfigError, match="No positive"):
        mixture_counts({"a": -1.0}, 5)


# ----------------------------------------------------------------------------------------------- ablation

def test_ablation_changes_loss_and_empty_set_is_bit_identical(examples):
    model, tok = _model("tiny-gemma3")
    batch = as_batches(examples[:3], tok, batch_size=3, max_length=64)[0]
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with ablate_heads(model, []) as chosen:
            same = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with ablate_heads(model, [(1, 2)]):
            zeroed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert chosen == [] and torch.equal(ref, same) and torch.equal(ref, after)
    assert not torch.allclose(ref, zeroed)
    base = response_loss(model, [batch])["loss"]
    with ablate_heads(model, [(0, 0), (3, 1)]):
        ablated = response_loss(model, [batch])["loss"]
    assert ablated != base
    means = mean_head_outputs(model, [batch])
    assert len(means) == 4 and means[0].shape == (4, 32)
    with ablate_heads(model, [(1, 2)], mode="mean", means=means):
        mean_abl = response_loss(model, [batch])["loss"]
    assert mean_abl != base and mean_abl != ablated


def test_zero_ablation_equals_a_zero_gate(examples):
    """Zeroing one head = the gate at 0; its loss change vs the linearisation -AP_signed is first order."""
    model, tok = _model("tiny-llama", double=True)
    batches = as_batches(examples[:4], tok, batch_size=4, max_length=64)
    sites = find_head_sites(model)
    with ablate_heads(model, [(2, 1)]):
        zero = response_loss(model, batches)["sample_losses"]

    def gate0(site, x):
        return x * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=x.dtype)[:, None] if site.layer == 2 else x
    with head_input_hooks(sites, gate0):
        gated = response_loss(model, batches)["sample_losses"]
    np.testing.assert_allclose(zero, gated, rtol=0, atol=1e-12)


def test_ablation_check_reports_top_vs_random(examples):
    model, tok = _model("tiny-llama")
    pat = compute_patterns(model, tok, examples, batch_size=4, max_length=64, progress=False)
    rep = ablation_check(model, tok, examples, pat, k=3, n_random=3, seed=2, max_length=64)
    s = rep.summary()
    assert rep.top.heads == sorted(pat.top_k(3)) and len(rep.random) == 3
    assert all(not set(c.heads) & set(rep.top.heads) for c in rep.random)  # random draws avoid the top set
    assert s["top_abs_delta_loss"] > 0 and s["random_abs_delta_loss_mean"] > 0 and rep.baseline.delta_loss == 0
    again = ablation_check(model, tok, examples, pat, k=3, n_random=3, seed=2, max_length=64)
    assert again.summary() == s  # seeded
    assert random_heads((4, 4), 3, 0) == random_heads((4, 4), 3, 0) != random_heads((4, 4), 3, 1)


# ----------------------------------------------------------------------------------------------- bad input

def test_bad_input_errors(examples, tmp_path):
    model, tok = _model("tiny-llama")
    with pytest.raises(ConfigError, match="layer 9 is out of range"):
        with ablate_heads(model, [(9, 0)]):
            pass
    with pytest.raises(ConfigError, match="head 4 is out of range"):
        with ablate_heads(model, [(0, 4)]):
            pass
    with pytest.raises(ConfigError, match="mode"):
        with ablate_heads(model, [(0, 0)], mode="noise"):
            pass
    with pytest.raises(ConfigError, match="means"):
        with ablate_heads(model, [(0, 0)], mode="mean"):
            pass
    with pytest.raises(DataError, match="No data"):
        compute_patterns(model, tok, [], progress=False)
    no_answer = [TokenizedExample([5, 6, 7, 8], [0, 0, 0, 0], "x")]
    with pytest.raises(DataError, match="No trainable response tokens"):
        compute_patterns(model, tok, no_answer, progress=False)
    with pytest.raises(DataError, match="no trainable tokens"):
        compute_patterns(model, tok, examples[:2], max_length=4, progress=False)  # answers cut off
    with pytest.raises(ConfigError, match="backend"):
        compute_patterns(model, tok, examples[:2], backend="flash", progress=False)
    with pytest.raises(DataError, match="no such file"):
        HeadPatterns.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "patterns.json").write_text("{}")
    with pytest.raises(DataError, match="not a head-pattern file"):
        HeadPatterns.load(tmp_path / "bad")


# ----------------------------------------------------------------------------------------------- callback

def test_callback_logs_delta_ap_during_sft(tmp_path, alpaca_path):
    from tunelens.config import load_config
    from tunelens.heads.callback import HeadPatternCallback
    from tunelens.train import SFTConfig, read_metrics, train_sft

    cfg = load_config(SFTConfig, None, ["model.spec=tiny-llama", f"data.paths=[{alpaca_path}]",
                                        "data.max_length=64", "data.limit=16", "batch_size=4", "max_steps=4",
                                        "save_every=0", "precision=fp32", "tensorboard=false", "optim.lr=5e-3",
                                        "optim.warmup_steps=0"])
    probe = load_examples(alpaca_path, limit=20).examples[16:]
    cb = HeadPatternCallback(probe, every=2, k=3, batch_size=4, max_length=64)
    train_sft(cfg, tmp_path / "run", callbacks=[cb])
    events = read_metrics(tmp_path / "run", "heads")
    assert [e["step"] for e in events] == [0, 2, 4]
    assert "heads/spearman_vs_start" not in events[0] and "heads/gini" in events[0]
    assert events[2]["heads/delta_mean_abs"] > 0 and events[2]["heads/mse_vs_start"] > 0
    assert -1 <= events[2]["heads/pearson_vs_prev"] <= 1
    for step in (0, 2, 4):
        assert HeadPatterns.load(tmp_path / "run" / "heads" / f"step-{step}").settings["step"] == step


def test_heads_section_of_an_sft_recipe(alpaca_path):
    from tunelens.heads.callback import heads_from_config

    cb = heads_from_config({"data": str(alpaca_path), "limit": 3, "every": 5, "k": 4, "max_length": 64})
    assert cb.every == 5 and cb.k == 4 and len(cb.data) == 3 and cb.kwargs["max_length"] == 64
    with pytest.raises(ConfigError, match="unknown key"):
        heads_from_config({"data": str(alpaca_path), "evry": 5})
    with pytest.raises(ConfigError, match="'data'"):
        heads_from_config({"every": 5})


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_patterns_and_compare(run_cli, alpaca_path, tmp_path):
    common = ["--data", alpaca_path, "--limit", "6", "--max-length", "64", "--batch-size", "3"]
    r = run_cli("heads", "patterns", "--model", "tiny-llama", "--out", tmp_path / "a", *common)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "a" / "patterns.json").read_text())
    assert data["shape"] == [4, 4] and data["n_samples"] == 6 and data["settings"]["backend"] == "gate"
    assert (tmp_path / "a" / "heatmap.png").stat().st_size > 1000 and "top heads" in r.stdout
    model, tok = load_model("tiny-llama")  # the CLI's model (seed 0): same pattern from the Python API
    pat = compute_patterns(model, tok, load_examples(alpaca_path, limit=6).examples, batch_size=3, max_length=64,
                           aggregation="batch_sum_abs", progress=False)
    assert np.all(np.array(data["matrix"]) >= pat.matrix - 1e-6)  # per-sample |s| >= batch-sum |Σ s|
    pat.save(tmp_path / "b")
    r = run_cli("heads", "compare", tmp_path / "a", tmp_path / "b", "--json", tmp_path / "cmp.json", "--k", "3",
                "--plot", tmp_path / "delta.png")
    assert r.returncode == 0, r.stderr
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert "jaccard@3" in cmp["similarity"] and cmp["delta"]["mean"] <= 0  # batch-sum <= per-sample
    assert (tmp_path / "delta.png").is_file() and "spearman" in r.stdout


def test_cli_bad_input_is_a_clear_error(run_cli, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = run_cli("heads", "patterns", "--model", "tiny-llama", "--data", empty, "--out", tmp_path / "x")
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_ablate_and_compose(run_cli, alpaca_path, tmp_path):
    common = ["--data", alpaca_path, "--limit", "6", "--max-length", "64", "--batch-size", "3"]
    model, tok = load_model("tiny-llama")
    compute_patterns(model, tok, load_examples(alpaca_path, limit=6).examples, max_length=64,
                     progress=False).save(tmp_path / "a")
    r = run_cli("heads", "ablate", "--model", "tiny-llama", "--patterns", tmp_path / "a", "--k", "2",
                "--n-random", "2", "--out", tmp_path / "abl.json", *common)
    assert r.returncode == 0, r.stderr
    abl = json.loads((tmp_path / "abl.json").read_text())
    assert len(abl["top"]["heads"]) == 2 and len(abl["random"]) == 2 and "top beats" in r.stdout

    rng = np.random.default_rng(0)
    base, b1, b2 = (rng.normal(size=(4, 4)) for _ in range(3))
    for name, m in {"base": base, "t1": base + b1, "t2": base + b2, "cx": base + 0.6 * b1 + 0.4 * b2}.items():
        HeadPatterns(m).save(tmp_path / name)
    r = run_cli("heads", "compose", "--base", tmp_path / "base", "--target", tmp_path / "cx", "--basic",
                f"t1={tmp_path / 't1'}", "--basic", f"t2={tmp_path / 't2'}", "--permutations", "20",
                "--mixture-total", "10", "--mixture-data", f"t1={alpaca_path}", "--mixture-data",
                f"t2={alpaca_path}", "--mixture-out", tmp_path / "mix.jsonl", "--json", tmp_path / "comp.json")
    assert r.returncode == 0, r.stderr
    comp = json.loads((tmp_path / "comp.json").read_text())
    assert comp["fit"]["coefficients"]["t1"] == pytest.approx(0.6) and comp["fit"]["r2"] == pytest.approx(1.0)
    assert comp["mixture"]["counts"] == {"t1": 6, "t2": 4}
    assert len((tmp_path / "mix.jsonl").read_text().splitlines()) == 10

    HeadPatterns(np.ones((2, 2))).save(tmp_path / "small")
    r = run_cli("heads", "ablate", "--model", "tiny-llama", "--data", alpaca_path, "--limit", "2", "--patterns",
                tmp_path / "small", "--k", "1")
    assert r.returncode == 2 and "(2, 2)" in r.stderr


@pytest.mark.slow
def test_cli_sft_with_heads_section(run_cli, alpaca_path, tmp_path):
    r = run_cli("sft", "--out", tmp_path / "run", "model.spec=tiny-llama", f"data.paths=[{alpaca_path}]",
                "data.max_length=64", "data.limit=8", "batch_size=4", "max_steps=2", "save_every=0",
                "precision=fp32", "tensorboard=false", f"heads.data={alpaca_path}", "heads.limit=4",
                "heads.every=1", "heads.max_length=64")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    heads = [e for e in events if e.get("event") == "heads"]
    assert [e["step"] for e in heads] == [0, 1, 2] and "heads/spearman_vs_start" in heads[-1]
    assert (tmp_path / "run" / "heads" / "step-2" / "patterns.json").is_file()
