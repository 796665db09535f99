"""align: divergences, targets and their errors, Ẑ/baselines, metrics, the trainer (resume) and the CLI."""
from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file

from tunelens.align import (Baseline, Context, Feature, PartitionEstimator, Pointwise, Reward, Samples, Target,
                            TargetError, build_target, divergence_from_samples, fdpg_loss, fit_lambda, get_divergence,
                            pseudo_reward)
from tunelens.align.metrics import distinct_n, self_bleu
from tunelens.errors import ConfigError
from tunelens.train.metrics import read_metrics


def _samples(texts: list[str]) -> Samples:
    return Samples([Context(0, (0,))] * len(texts), [[1] * (i + 1) for i in range(len(texts))], texts)


@pytest.mark.parametrize("name", ["fkl", "rkl", "js", "tv", "chi2", "alpha"])
def test_f_prime_is_the_derivative_of_f(name):
    div = get_divergence(name)
    lt = torch.linspace(-3, 3, 13, dtype=torch.float64)
    h = 1e-6
    t = lt.exp()
    numeric = (div.f(torch.log(t + h)) - div.f(torch.log(t - h))) / (2 * h)
    mask = lt.abs() > 1e-9 if name == "tv" else torch.ones_like(lt, dtype=torch.bool)
    assert torch.allclose(numeric[mask], div.f_prime(lt)[mask], atol=1e-5)
    assert float(div.f(torch.zeros(1, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)  # f(1) = 0


def test_divergence_estimates_match_closed_forms():
    # two distributions over 3 outcomes, "samples" = every outcome weighted by q = π
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    lpi, lp = pi.log(), p.log()
    n = 3  # divergence_from_samples averages (p/q) f; feed q = 1/3 uniform "samples"
    lq = torch.full((3,), math.log(1 / 3), dtype=torch.float64)
    kl_p_pi = float((p * (p / pi).log()).sum())
    kl_pi_p = float((pi * (pi / p).log()).sum())
    tv = float(0.5 * (p - pi).abs().sum())
    assert divergence_from_samples(get_divergence("fkl"), lpi, lp, lq) == pytest.approx(kl_p_pi)
    assert divergence_from_samples(get_divergence("rkl"), lpi, lp, lq) == pytest.approx(kl_pi_p)
    assert divergence_from_samples(get_divergence("tv"), lpi, lp, lq) == pytest.approx(tv)
    m = (p + pi) / 2
    js = float(0.5 * (p * (p / m).log()).sum() + 0.5 * (pi * (pi / m).log()).sum())
    assert divergence_from_samples(get_divergence("js"), lpi, lp, lq) == pytest.approx(js)
    assert n == 3


def test_out_of_support_pseudo_rewards_are_bounded_or_clipped():
    lpi = torch.tensor([-1.0, -2.0])
    lp = torch.tensor([-1.5, -math.inf])
    for name, expected in [("fkl", 0.0), ("js", -0.5 * math.log(2)), ("tv", -0.5)]:
        r, clipped = pseudo_reward(get_divergence(name), lpi, lp)
        assert float(r[1]) == pytest.approx(expected) and not clipped.any()
    r, clipped = pseudo_reward(get_divergence("rkl"), lpi, lp, max_log_ratio=10.0)
    assert clipped.tolist() == [False, True] and float(r[1]) == -11.0
    with pytest.raises(Exception, match="NaN"):
        pseudo_reward(get_divergence("js"), torch.tensor([float("nan")]), torch.tensor([0.0]))


def test_fdpg_loss_gradient_is_weighted_advantage():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    r, b = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    fdpg_loss(lp, r, b).backward()
    assert lp.grad.tolist() == pytest.approx([-0.5, 0.5])
    lp.grad = None
    fdpg_loss(lp, r, b, log_q=torch.tensor([-1.0 - math.log(2), -2.0])).backward()  # π/q = 2 for sample 0
    assert lp.grad.tolist() == pytest.approx([-1.0, 0.5])


def test_unknown_scorer_and_bad_factor_are_config_errors():
    with pytest.raises(ConfigError, match=r"target\[0\].feature: unknown scorer kind 'nope'"):
        build_target([{"type": "pointwise", "feature": {"kind": "nope"}}])
    with pytest.raises(ConfigError, match=r"target\[1\]: 'type'"):
        build_target([{"type": "reward", "feature": {"kind": "length"}}, {"type": "magic"}])
    with pytest.raises(ConfigError, match="as many 'moments'"):
        build_target([{"type": "distributional", "features": [{"kind": "length"}], "moments": []}])
    with pytest.raises(ConfigError, match="cannot import"):
        build_target([{"type": "reward", "feature": {"kind": "python", "function": "no_such_mod:fn"}}])


def test_scorer_that_raises_or_returns_nan_names_the_scorer():
    def boom(texts):
        raise RuntimeError("classifier offline")

    t = Target([Pointwise(Feature("my_judge", boom))])
    with pytest.raises(TargetError, match="scorer 'my_judge' raised RuntimeError: classifier offline"):
        t.log_factor(_samples(["a", "b"]))
    nan_reward = Target([Reward(Feature("sentiment", lambda s: [0.1, float("nan")]), beta=1.0)])
    with pytest.raises(TargetError, match="scorer 'sentiment' returned NaN for sample 1"):
        nan_reward.log_factor(_samples(["a", "b"]))
    graded = Target([Pointwise(Feature("score", lambda s: [0.5, 1.0]))])
    with pytest.raises(TargetError, match="must score 0 or 1"):
        graded.log_factor(_samples(["a", "b"]))
    short = Target([Pointwise(Feature("short", lambda s: [1.0]))])
    with pytest.raises(TargetError, match="returned 1 values for 2 samples"):
        short.log_factor(_samples(["a", "b"]))


def test_builtin_features_and_log_space_product():
    t = build_target([{"type": "pointwise", "feature": {"kind": "contains", "word": "amazing"}},
                      {"type": "reward", "feature": {"kind": "length"}, "beta": 2.0}])
    s = _samples(["an amazing plot", "amazingly dull", "AMAZING!"])
    lf = t.log_factor(s)
    assert float(lf[0]) == pytest.approx(0.5) and lf[1] == -math.inf and float(lf[2]) == pytest.approx(1.5)
    al = t.alignment(s)
    assert al["rate/contains:amazing"] == pytest.approx(2 / 3) and al["reward/length"] == pytest.approx(2.0)


def test_lambda_fit_matches_moments_and_rejects_infeasible():
    g = torch.Generator().manual_seed(0)
    phi = torch.randint(0, 2, (2000, 2), generator=g).double()
    rep = fit_lambda(phi, torch.zeros(2000), [0.8, 0.3])
    w = torch.softmax(phi @ torch.tensor(rep.lambdas, dtype=torch.float64), 0)
    assert (w @ phi).tolist() == pytest.approx([0.8, 0.3], abs=1e-4) and rep.residual < 1e-4
    with pytest.raises(TargetError, match="infeasible"):
        fit_lambda(phi, torch.zeros(2000), [1.2, 0.3], name="distributional[x]")
    with pytest.raises(TargetError, match="infeasible"):
        fit_lambda(torch.zeros(100, 1, dtype=torch.float64), torch.zeros(100), [0.5])


def test_partition_estimator_and_zero_acceptance():
    z = PartitionEstimator(2)
    z.update([0, 0, 1, 1], torch.tensor([0.0, -math.inf, -math.inf, -math.inf], dtype=torch.float64))
    assert math.exp(z.log_z(0)) == pytest.approx(0.5) and z.acceptance(0) == 0.5
    with pytest.raises(TargetError, match="zero acceptance"):
        z.log_z(1)
    with pytest.raises(TargetError, match="NaN"):
        z.update([0], torch.tensor([float("nan")]))
    st = z.state_dict()
    z2 = PartitionEstimator(2)
    z2.load_state_dict(json.loads(json.dumps(st)))
    assert z2.log_z(0) == z.log_z(0)


def test_baselines():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    ctx = [0, 0, 0, 1]
    loo = Baseline("leave_one_out", "js").values(ctx, r)
    assert loo[:3].tolist() == pytest.approx([2.5, 2.0, 1.5]) and float(loo[3]) == 0.0
    ma = Baseline("moving_average", "js", window=2)
    ma.update(ctx, r)
    assert ma.values([0, 1], torch.zeros(2)).tolist() == pytest.approx([2.5, 10.0])  # window of 2, per context
    assert Baseline("exact", "fkl").values(ctx, r).tolist() == [1.0] * 4
    with pytest.raises(TargetError, match="only for loss=fkl"):
        Baseline("exact", "js")


def test_diversity_metrics():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)
    assert self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)
    assert self_bleu([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) == 0.0


MICRO = """
model: {spec: tiny-llama}
target:
  - type: pointwise
    feature: {kind: regex, pattern: "e"}
loss: LOSS
max_new_tokens: 6
samples_per_context: 16
micro_batch: 16
probe_samples: 32
eval_samples: 16
eval_every: 2
max_steps: 4
save_every: 2
optim: {lr: 0.003}
tensorboard: false
"""


def _micro(tmp_path, loss="js", **extra) -> str:
    path = tmp_path / f"micro-{loss}.yaml"
    path.write_text(MICRO.replace("LOSS", loss) + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return str(path)


@pytest.mark.slow  # minutes of CLI subprocesses / training; runs in CI (make test)
def test_cli_end_to_end_and_resume_after_kill(tmp_path, run_cli):
    cfg = _micro(tmp_path, "rkl")
    full = run_cli("align", cfg, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    for key in ("rate/regex:e", "kl_p_pi", "js", "tv", "kl_pi_a", "distinct_2", "self_bleu", "z/z"):
        assert key in summary["initial"] and key in summary["final"], key
    assert summary["initial"]["kl_pi_a"] == pytest.approx(0.0, abs=0.05)  # policy = base at step 0
    assert summary["steps"] == 4 and summary["samples_seen"] == 64
    evals = read_metrics(tmp_path / "full", "eval")
    assert [r["step"] for r in evals] == [0, 2, 4]
    train = read_metrics(tmp_path / "full", "train")
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train)
    assert (tmp_path / "full" / "target.json").is_file() and (tmp_path / "full" / "final").is_dir()

    killed = run_cli("align", cfg, "--out", tmp_path / "killed", env={"TUNELENS_FAULT_KILL_AT_STEP": "2"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli("align", cfg, "--out", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [(r["step"], r["loss"], r["z/z"]) for r in train]
    lb = [(r["step"], r["loss"], r["z/z"]) for r in read_metrics(tmp_path / "killed", "train")]
    assert la == lb
    s2 = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert s2["resumed_from"] == 2 and s2["initial"] == summary["initial"] and s2["final"] == summary["final"]


def test_cli_errors_name_the_part(tmp_path, run_cli):
    never = tmp_path / "never.yaml"
    never.write_text(MICRO.replace("LOSS", "js").replace('pattern: "e"', 'pattern: "zqxjzqxj"'))
    bad = run_cli("align", never, "--out", tmp_path / "r1")
    assert bad.returncode == 2 and "zero acceptance" in bad.stderr and "regex:zqxjzqxj" in bad.stderr
    bad = run_cli("align", _micro(tmp_path), "--out", tmp_path / "r2", "loss=hellinger")
    assert bad.returncode == 2 and "loss must be one of" in bad.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(MICRO.replace("LOSS", "js").replace("kind: regex", "kind: sentiment"))
    bad = run_cli("align", unknown, "--out", tmp_path / "r3")
    assert bad.returncode == 2 and "target[0].feature: unknown scorer kind 'sentiment'" in bad.stderr


@pytest.mark.slow
def test_lora_with_fixed_and_adaptive_proposals(tmp_path):
    from tunelens.align import AlignConfig, train_align
    from tunelens.config import load_config

    for proposal in ("base", "adaptive"):
        cfg = load_config(AlignConfig, _micro(tmp_path, "fkl"),
                          [f"proposal={proposal}", "proposal_update_every=1", "finetune=lora", "max_steps=3",
                           "baseline=exact"])
        res = train_align(cfg, tmp_path / proposal)
        train = read_metrics(tmp_path / proposal, "train")
        assert [r["step"] for r in train] == [1, 2, 3]
        assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train)
        # q ≠ π after the first update: the importance weights π/q are no longer all equal
        assert train[-1]["pi_over_q/ess_fraction"] < 1.0
        assert res.final["kl_pi_a"] > 0
        assert ("proposal_swapped" in train[-1]) == (proposal == "adaptive")


def test_kl_p_pi_from_base_samples_matches_the_exact_value():
    from tunelens.align.metrics import kl_p_pi_from_base

    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05], dtype=torch.float64)
    pi = torch.tensor([0.1, 0.1, 0.3, 0.4, 0.1], dtype=torch.float64)
    factor = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)  # P = a·factor; x0 outside the support
    p = a * factor / (a * factor).sum()
    ok = p > 0
    exact = float((p[ok] * (p[ok] / pi[ok]).log()).sum())
    x = torch.multinomial(a, 200_000, replacement=True, generator=g)
    log_f = factor.log()[x]
    ctx = [0] * len(x)
    est = kl_p_pi_from_base(pi.log()[x], a.log()[x], log_f, ctx)
    assert est["kl_p_pi_base"] == pytest.approx(exact, abs=0.01)
    assert est["z_base"] == pytest.approx(float((a * factor).sum()), abs=0.005)
    none = kl_p_pi_from_base(pi.log()[x[:3]], a.log()[x[:3]], torch.full((3,), -math.inf), [0, 0, 0])
    assert math.isnan(none["kl_p_pi_base"]) and none["kl_p_pi_base_contexts"] == 0.0


def test_context_offset_and_limit_select_a_window_of_items():
    from tunelens.align.config import ContextConfig
    from tunelens.align.contexts import build_contexts
    from tunelens.models import load_model

    _, tok = load_model("tiny-llama")
    whole = build_contexts(ContextConfig(source="conflicts", path="world_facts", limit=6), tok)
    window = build_contexts(ContextConfig(source="conflicts", path="world_facts", offset=4, limit=2), tok)
    assert [c.meta["id"] for c in window] == [c.meta["id"] for c in whole[4:6]]
    assert [c.index for c in window] == [0, 1]  # indices key Ẑ_c within the run
    texts = build_contexts(ContextConfig(source="texts", texts=["a", "b", "c"], offset=1), tok)
    assert [c.text for c in texts] == [c.text for c in build_contexts(ContextConfig(source="texts", texts=["b", "c"]), tok)]
    with pytest.raises(ConfigError, match="from offset 3"):
        build_contexts(ContextConfig(source="texts", texts=["a", "b", "c"], offset=3), tok)


def test_zero_acceptance_drop_lists_the_context_and_errors_when_none_is_left():
    from tunelens.align.evaluate import probe_base
    from tunelens.align.scoring import AlignModels
    from tunelens.models import load_model

    model, tok = load_model("tiny-llama")
    models = AlignModels(model, tok, model, micro_batch=16, bf16=False)
    contexts = [Context(0, (1,)), Context(1, (2,)), Context(2, (3,))]
    only_first = Target([Pointwise(Feature("first", lambda s: [float(c.index == 0) for c in s.contexts]))])
    common = dict(n_per_context=4, max_new_tokens=3, seed=0)
    with pytest.raises(TargetError, match="zero acceptance.*context 1.*zero_acceptance=drop"):
        probe_base(models, only_first, contexts, PartitionEstimator(3), **common)
    z = PartitionEstimator(3)
    report = probe_base(models, only_first, contexts, z, drop_unaccepted=True, **common)
    assert report["dropped_contexts"] == [1, 2] and report["contexts"][0]["acceptance"] == 1.0
    assert z.log_z(0) == pytest.approx(0.0)  # every sample of context 0 is accepted: Z_0 = 1
    never = Target([Pointwise(Feature("never", lambda s: [0.0] * len(s)))])
    with pytest.raises(TargetError, match="nor of any other context"):
        probe_base(models, never, contexts, PartitionEstimator(3), drop_unaccepted=True, **common)
