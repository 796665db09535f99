"""f-DPG on an exact toy: a 6-token vocabulary, continuations of at most 4 tokens (781 sequences), a tiny
autoregressive policy whose every sequence probability is enumerated, so p, Z and every D_f are exact.

Checked: the enumeration is a distribution; E_π[(f′(π/p) − B)∇log π] equals the autograd gradient of the
exact D_f (each loss); the Monte-Carlo estimate from sampled batches (on-policy and with a proposal's importance
weights) matches it within a tolerance derived from the estimator's standard error; training lowers the
exact divergence; Ẑ is unbiased; λ fitting hits the exact moments; reverse KL stays finite outside the support.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunelens.align import (Baseline, Context, Distributional, Feature, PartitionEstimator, Pointwise, Reward, Samples,
                            Target, fdpg_loss, get_divergence, pseudo_reward, sample, sequence_logprobs)
from tunelens.align.metrics import divergences

V, EOS, BOS, L = 6, 5, 0, 4
CTX = Context(0, (BOS,))


class ToyTokenizer:
    eos_token_id = EOS
    bos_token_id = BOS
    pad_token_id = 4

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def toy_model(seed: int, scale: float = 0.3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16, bos_token_id=BOS, eos_token_id=EOS,
                      pad_token_id=4, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0, scale)
    m.generation_config.eos_token_id = EOS
    return m.float().eval()


def perturbed(seed: int, eps: float = 0.05, around: LlamaForCausalLM | None = None) -> LlamaForCausalLM:
    """A copy of ``around`` (default the base toy model) with Gaussian noise of scale ``eps`` on its matrices:
    a policy or proposal near it, so that the estimators' ratios (p/π, π/q) are not heavy-tailed."""
    import copy

    m = copy.deepcopy(around) if around is not None else toy_model(0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=g) * eps)
    return m


def all_sequences() -> list[list[int]]:
    out = []
    non_eos = [t for t in range(V) if t != EOS]
    for k in range(1, L):
        out += [list(p) + [EOS] for p in itertools.product(non_eos, repeat=k - 1)]
    out += [list(p) + [t] for p in itertools.product(non_eos, repeat=L - 1) for t in range(V)]
    return out


SEQS = all_sequences()
ALL = Samples([CTX] * len(SEQS), SEQS, [ToyTokenizer().decode(s) for s in SEQS])


def count_ones(s: Samples) -> list[float]:
    return [float(t.count(1)) for t in s.token_ids]


def has_one(s: Samples) -> list[float]:
    return [float(1 in t) for t in s.token_ids]


def reward_target() -> Target:
    return Target([Reward(Feature("ones", count_ones), beta=2.0)])


def pointwise_target() -> Target:
    return Target([Pointwise(Feature("has_one", has_one))])


def exact_logp(a: LlamaForCausalLM, target: Target) -> tuple[torch.Tensor, float]:
    log_a = sequence_logprobs(a, ALL.contexts, ALL.token_ids, pad_id=4)
    log_P = log_a + target.log_factor(ALL)
    log_z = float(torch.logsumexp(log_P, 0))
    return log_P - log_z, log_z


def exact_divergence(name: str, log_pi: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Σ_x p f(π/p), with π·f′(∞) where p = 0 (differentiable in log_pi)."""
    div = get_divergence(name)
    log_p = log_p.to(log_pi.dtype)
    inside = torch.isfinite(log_p)
    d = (torch.exp(log_p[inside]) * div.f(log_pi[inside] - log_p[inside])).sum()
    if (~inside).any():
        tail = float(div.f_prime(torch.tensor([math.inf], dtype=torch.float64))[0])
        d = d + torch.exp(log_pi[~inside]).sum() * tail
    return d


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten().clone() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters()])


def exact_gradient(policy, name, log_p) -> torch.Tensor:
    policy.zero_grad()
    log_pi = sequence_logprobs(policy, ALL.contexts, ALL.token_ids, pad_id=4, grad=True)
    exact_divergence(name, log_pi.double(), log_p).backward()
    return flat_grad(policy)


def estimator_expectation(policy, name, log_p, baseline: float) -> torch.Tensor:
    """E_π[(f′ − B)∇log π] by enumeration: the estimator's exact expectation."""
    policy.zero_grad()
    log_pi = sequence_logprobs(policy, ALL.contexts, ALL.token_ids, pad_id=4, grad=True)
    r, _ = pseudo_reward(get_divergence(name), log_pi.detach(), log_p)
    weights = torch.exp(log_pi.detach().double())
    (-(weights * (r - baseline)).float() * log_pi).sum().backward()
    return flat_grad(policy)


def test_enumeration_is_a_distribution():
    pi = toy_model(1)
    log_pi = sequence_logprobs(pi, ALL.contexts, ALL.token_ids, pad_id=4)
    assert len(SEQS) == 781
    assert float(torch.logsumexp(log_pi, 0).exp()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name,target", [("fkl", "pointwise"), ("js", "pointwise"), ("tv", "pointwise"),
                                         ("rkl", "reward"), ("chi2", "reward"), ("alpha", "reward"),
                                         ("fkl", "reward"), ("js", "reward")])
def test_pseudo_reward_expectation_is_the_exact_gradient(name, target):
    a, pi = toy_model(0), toy_model(1)
    log_p, _ = exact_logp(a, pointwise_target() if target == "pointwise" else reward_target())
    g_exact = exact_gradient(pi, name, log_p)
    g_est = estimator_expectation(pi, name, log_p, baseline=0.3)  # any constant baseline leaves it unbiased
    assert torch.allclose(g_est, g_exact, atol=1e-5, rtol=1e-3), (g_est - g_exact).abs().max()
    assert g_exact.norm() > 1e-3


def mc_gradient_batches(policy, name, log_p_all, n_batches, batch, proposal=None, seed=0):
    """Independent batch estimates of ∇D_f: fdpg_loss on sampled batches (importance weights when a proposal)."""
    index = {tuple(s): i for i, s in enumerate(SEQS)}
    div = get_divergence(name)
    grads = []
    tok = ToyTokenizer()
    for k in range(n_batches):
        g = torch.Generator().manual_seed(seed * 1000 + k)
        src = proposal if proposal is not None else policy
        drawn = sample(src, tok, [CTX] * batch, max_new_tokens=L, generator=g)
        rows = [index[tuple(t)] for t in drawn.samples.token_ids]
        log_p = log_p_all[rows]
        policy.zero_grad()
        lp = sequence_logprobs(policy, drawn.samples.contexts, drawn.samples.token_ids, pad_id=4, grad=True)
        r, _ = pseudo_reward(div, lp.detach(), log_p)
        b = Baseline("leave_one_out", name).values([0] * batch, r)
        log_q = None if proposal is None else drawn.logprob
        fdpg_loss(lp, r, b, log_q).backward()
        grads.append(flat_grad(policy))
    return torch.stack(grads)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name,target,use_proposal", [
    ("js", "pointwise", False), ("rkl", "reward", True),
    pytest.param("fkl", "pointwise", False, marks=SLOW), pytest.param("tv", "pointwise", False, marks=SLOW),
    pytest.param("rkl", "reward", False, marks=SLOW), pytest.param("alpha", "reward", False, marks=SLOW),
    pytest.param("fkl", "pointwise", True, marks=SLOW),
    pytest.param("js", "reward", True, marks=SLOW)])
def test_monte_carlo_gradient_matches_exact(name, target, use_proposal):
    """(χ² is checked only in expectation above: its pseudo-reward 1 − (p/π)² is too heavy-tailed for a
    Monte-Carlo standard error to mean anything at test sizes.)"""
    a, pi = toy_model(0), perturbed(1)
    log_p, _ = exact_logp(a, pointwise_target() if target == "pointwise" else reward_target())
    g_exact = exact_gradient(pi, name, log_p)
    # close to π: at eps=0.04 the weights π/q already have sd ≈ 7 and max ≈ 80 over 512 draws, so 24 batches
    # give no reliable standard error (the test then passed or failed by the luck of the seed)
    proposal = perturbed(2, eps=0.01, around=pi) if use_proposal else None
    est = mc_gradient_batches(pi, name, log_p, n_batches=24, batch=128, proposal=proposal)
    mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
    # within Monte-Carlo error: E‖mean − g‖² = Σ var/K, so the squared error must be of the order of Σ se²
    ratio = float(((mean - g_exact) ** 2).sum() / (se ** 2).sum())
    # with importance weights the standard error from 24 batches is itself noisy: over sampling seeds 0-3 the ratio
    # was 0.38-3.52 for fkl (pointwise) and 0.12-1.35 for rkl (reward), so the bound is looser there
    assert ratio < (5.0 if use_proposal else 3.0), ratio
    # and the estimate is informative (its error is small compared to the gradient)
    cos = torch.nn.functional.cosine_similarity(mean, g_exact, dim=0)
    assert cos > 0.9, float(cos)


@pytest.mark.parametrize("name", ["js", pytest.param("fkl", marks=SLOW), pytest.param("rkl", marks=SLOW),
                                  pytest.param("tv", marks=SLOW)])
def test_training_lowers_the_exact_divergence(name):
    a, pi = toy_model(0), toy_model(1)
    log_p, _ = exact_logp(a, reward_target() if name == "rkl" else pointwise_target())
    index = {tuple(s): i for i, s in enumerate(SEQS)}

    def exact() -> float:
        with torch.no_grad():
            lpi = sequence_logprobs(pi, ALL.contexts, ALL.token_ids, pad_id=4).double()
        return float(exact_divergence(name, lpi, log_p))

    before = exact()
    opt = torch.optim.Adam(pi.parameters(), lr=0.02)
    base = Baseline("moving_average", name, window=256)
    for step in range(40):
        drawn = sample(pi, ToyTokenizer(), [CTX] * 128, max_new_tokens=L, generator=torch.Generator().manual_seed(step))
        lp_rows = log_p[[index[tuple(t)] for t in drawn.samples.token_ids]]
        lp = sequence_logprobs(pi, drawn.samples.contexts, drawn.samples.token_ids, pad_id=4, grad=True)
        r, _ = pseudo_reward(get_divergence(name), lp.detach(), lp_rows)
        b = base.values([0] * 128, r)
        base.update([0] * 128, r)
        opt.zero_grad()
        fdpg_loss(lp, r, b).backward()
        opt.step()
    after = exact()
    assert after < 0.6 * before, (before, after)


def test_partition_estimate_is_unbiased():
    a = toy_model(0)
    target = pointwise_target()
    _, log_z = exact_logp(a, target)
    estimates = []
    for k in range(30):
        z = PartitionEstimator(1)
        drawn = sample(a, ToyTokenizer(), [CTX] * 64, max_new_tokens=L, generator=torch.Generator().manual_seed(k))
        z.update([0] * 64, target.log_factor(drawn.samples))  # q = a: weight P/a = b
        estimates.append(math.exp(z.log_z(0)))
    est = torch.tensor(estimates)
    se = float(est.std() / math.sqrt(len(est)))
    assert abs(float(est.mean()) - math.exp(log_z)) < 4 * se
    assert 0.05 < math.exp(log_z) < 0.95  # a non-trivial acceptance rate under a


def test_lambda_fit_hits_exact_moments():
    a = toy_model(0)
    feat = Feature("ones", count_ones)
    target = Target([Distributional([feat], [1.5])])
    drawn = sample(a, ToyTokenizer(), [CTX] * 4000, max_new_tokens=L, generator=torch.Generator().manual_seed(3))
    target.fit(drawn.samples)
    lam = target.factors[0].lambdas[0]
    # exact moment of p_λ ∝ a·exp(λφ) by enumeration: within the Monte-Carlo error of the 4000 probe samples.
    # The tilt is large (E_a[φ] = 0.36 → 1.5), so the SNIS fit is noisy: probe seeds 0-7 gave exact moments
    # 1.43-1.64 (sd ≈ 0.08); 0.25 is about 3 sd.
    log_a = sequence_logprobs(a, ALL.contexts, ALL.token_ids, pad_id=4)
    phi = torch.tensor(count_ones(ALL), dtype=torch.float64)
    p = torch.softmax(log_a + lam * phi, 0)
    assert float(p @ phi) == pytest.approx(1.5, abs=0.25)
    mean_a = float(torch.softmax(log_a, 0) @ phi)
    assert mean_a < 1.2 and lam > 0  # the base has fewer ones: λ must push up


def test_reverse_kl_out_of_support_is_finite():
    a, pi = toy_model(0), toy_model(1)
    log_p, _ = exact_logp(a, pointwise_target())
    drawn = sample(pi, ToyTokenizer(), [CTX] * 256, max_new_tokens=L, generator=torch.Generator().manual_seed(0))
    index = {tuple(s): i for i, s in enumerate(SEQS)}
    lp_rows = log_p[[index[tuple(t)] for t in drawn.samples.token_ids]]
    assert torch.isinf(lp_rows).any()
    lp = sequence_logprobs(pi, drawn.samples.contexts, drawn.samples.token_ids, pad_id=4, grad=True)
    r, clipped = pseudo_reward(get_divergence("rkl"), lp.detach(), lp_rows, max_log_ratio=20.0)
    assert torch.isfinite(r).all() and clipped.any()
    assert (r[clipped] == -21.0).all()  # −f′ at the clip: −(1 + 20)
    b = Baseline("moving_average", "rkl").values([0] * 256, r)
    loss = fdpg_loss(lp, r, b)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(torch.isfinite(p.grad).all() for p in pi.parameters())
    d = divergences(drawn.logprob, lp_rows, [0] * 256)
    assert d["kl_pi_p"] == math.inf and math.isfinite(d["kl_pi_p_in_support"]) and math.isfinite(d["js"])
