"""probes.engine: cached batched scoring equals a naive full forward; batched greedy generation equals unbatched."""
from __future__ import annotations

import random
from functools import lru_cache

import pytest
import torch

from tunelens.errors import ConfigError
from tunelens.models import load_model
from tunelens.probes.engine import ScoreRequest, generate_greedy, score_continuations

PRESETS = ["tiny-llama", "tiny-gpt2", "tiny-gemma3"]
# Re-draw the random weights wider where the preset's own init makes greedy outputs repeat one token, so
# generation comparisons are sensitive to padding/position/cache mistakes.
WEIGHT_STD = {"tiny-llama": 0.1, "tiny-gpt2": 0.1, "tiny-gemma3": None}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and do not collapse when the CPU is shared (OpenMP spinning)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@lru_cache(maxsize=None)
def _model(preset: str):
    model, tok = load_model(preset)
    if WEIGHT_STD[preset]:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=g) * WEIGHT_STD[preset])
    return model, tok


def _rand_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(10, 8000) for _ in range(n)]


def _requests(seed: int = 0, n: int = 7) -> list[ScoreRequest]:
    """Prompts of 1..40 tokens with 1..4 continuations of 0..6 tokens: every batch is padded both ways."""
    rng = random.Random(seed)
    return [ScoreRequest(_rand_ids(rng, rng.randrange(1, 40)),
                         [_rand_ids(rng, rng.randrange(0, 7)) for _ in range(rng.randrange(1, 5))]) for _ in range(n)]


@torch.no_grad()
def _naive(model, prompt: list[int], cont: list[int]) -> tuple[float, bool]:
    """Reference: one full forward of prompt+continuation, sum of log-softmax at the continuation positions."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].float(), dim=-1)
    rows = logp[len(prompt) - 1: len(prompt) - 1 + len(cont)]
    target = torch.tensor(cont, dtype=torch.long)
    return float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


@pytest.mark.parametrize("preset", PRESETS)
def test_scores_match_naive_reference(preset):
    model, _ = _model(preset)
    reqs = _requests()
    # batch_size 3 over 7 prompts and at most 2 candidate rows per pass: several batches, each with several
    # candidate passes on the same prompt cache
    res = score_continuations(model, reqs, batch_size=3, max_continuation_rows=2, progress=False)
    assert [len(r) for r in res] == [len(q.continuations) for q in reqs]
    for q, rr in zip(reqs, res):
        for c, r in zip(q.continuations, rr):
            ref, greedy = _naive(model, q.prompt_ids, c)
            assert r.n_tokens == len(c)
            assert abs(r.logprob - ref) < 1e-4, (q.prompt_ids, c, r.logprob, ref)
            assert float(r) == r.logprob
            assert r.is_greedy == greedy
    assert res[0][0].logprob < 0 or res[0][0].n_tokens == 0


def test_scores_with_eager_attention():
    model, _ = load_model("tiny-llama", attn_implementation="eager")
    reqs = _requests(seed=2, n=4)
    res = score_continuations(model, reqs, batch_size=4, progress=False)
    for q, rr in zip(reqs, res):
        for c, r in zip(q.continuations, rr):
            assert abs(r.logprob - _naive(model, q.prompt_ids, c)[0]) < 1e-4


def test_is_greedy_and_sliding_window_prompts():
    """Prompts longer than tiny-gemma3's 512-token sliding window, padded in one batch; greedy flags."""
    model, tok = _model("tiny-gemma3")
    rng = random.Random(1)
    prompts = [_rand_ids(rng, 600), _rand_ids(rng, 570)]
    gens = generate_greedy(model, tok, prompts, max_new_tokens=4, progress=False)
    assert gens[1].token_ids == generate_greedy(model, tok, prompts[1:], max_new_tokens=4, progress=False)[0].token_ids
    greedy = gens[0].token_ids
    other = greedy[:2] + [(greedy[2] + 1) % 8000]
    reqs = [ScoreRequest(prompts[0], [greedy, other, greedy[:1]]), ScoreRequest(prompts[1], [gens[1].token_ids])]
    res = score_continuations(model, reqs, progress=False)
    assert [r.is_greedy for r in res[0]] == [True, False, True] and res[1][0].is_greedy
    for q, rr in zip(reqs, res):
        for c, r in zip(q.continuations, rr):
            assert abs(r.logprob - _naive(model, q.prompt_ids, c)[0]) < 1e-4


def test_prompt_runs_once_and_candidates_reuse_its_cache():
    model, _ = _model("tiny-llama")
    reqs = [ScoreRequest(list(range(100, 150)), [[5, 6, 7], [8, 9], [10]]),
            ScoreRequest(list(range(200, 230)), [[11, 12, 13, 14]])]
    seen: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        a = score_continuations(model, reqs, batch_size=8, progress=False)
        # one pass over both (left-padded) prompts, then one pass of the 4 candidates without their last token
        assert seen == [(2, 50), (4, 3)]
        seen.clear()
        b = score_continuations(model, reqs, batch_size=8, max_continuation_rows=2, progress=False)
        # candidates in two passes (longest first) on the same, unmodified prompt cache
        assert seen == [(2, 50), (2, 3), (2, 1)]
    finally:
        hook.remove()
    assert [r.logprob for rr in a for r in rr] == pytest.approx([r.logprob for rr in b for r in rr], abs=1e-5)


def test_order_determinism_and_empty_continuation():
    model, _ = _model("tiny-gpt2")
    reqs = _requests(seed=3, n=6)
    reqs[2].continuations.append([])
    a = score_continuations(model, reqs, batch_size=2, progress=False)
    b = score_continuations(model, reqs, batch_size=2, progress=False)
    assert a == b
    assert (a[2][-1].logprob, a[2][-1].n_tokens, a[2][-1].is_greedy) == (0.0, 0, True)
    rev = score_continuations(model, reqs[::-1], batch_size=6, progress=False)[::-1]
    for ra, rb in zip(a, rev):
        assert [x.logprob for x in ra] == pytest.approx([x.logprob for x in rb], abs=1e-4)


def test_bf16_autocast_close_to_fp32():
    model, _ = _model("tiny-llama")
    reqs = _requests(seed=4, n=4)
    f32 = score_continuations(model, reqs, progress=False)
    b16 = score_continuations(model, reqs, bf16=True, progress=False)
    diffs = [abs(x.logprob - y.logprob) / max(x.n_tokens, 1) for rx, ry in zip(f32, b16) for x, y in zip(rx, ry)]
    assert max(diffs) < 0.25 and any(d > 0 for d in diffs)  # really ran in bf16, and stayed close


def test_score_errors():
    model, _ = _model("tiny-llama")
    with pytest.raises(ConfigError, match="empty"):
        score_continuations(model, [ScoreRequest([], [[1]])], progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        score_continuations(model, [], batch_size=0, progress=False)


def _prompts(seed: int = 0, n: int = 7) -> list[list[int]]:
    rng = random.Random(seed)
    return [_rand_ids(rng, rng.randrange(1, 40)) for _ in range(n)]


@pytest.mark.parametrize("preset", PRESETS)
def test_batched_generation_equals_unbatched(preset):
    model, tok = _model(preset)
    prompts = _prompts()
    batched = generate_greedy(model, tok, prompts, max_new_tokens=12, batch_size=3, progress=False)
    single = [generate_greedy(model, tok, [p], max_new_tokens=12, batch_size=1, progress=False)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    # and the one-at-a-time loop is plain greedy decoding
    ref = model.generate(torch.tensor([prompts[0]]), attention_mask=torch.ones(1, len(prompts[0]), dtype=torch.long),
                         max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert single[0].token_ids == ref[0, len(prompts[0]):].tolist()
    assert all(g.stopped == "length" and len(g.token_ids) == 12 for g in batched)


def test_generation_stops_at_eos_and_stop_strings():
    model, tok = _model("tiny-gpt2")
    prompts = _prompts(seed=5, n=3)
    free = generate_greedy(model, tok, prompts, max_new_tokens=16, progress=False)
    row = next(i for i, g in enumerate(free) if len(set(g.token_ids[:6])) == 6)
    ids = free[row].token_ids
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [ids[4]]  # this token, first produced at step 4, now ends the sequence
    try:
        got = generate_greedy(model, tok, prompts, max_new_tokens=16, batch_size=2, progress=False)
    finally:
        model.generation_config.eos_token_id = saved
    assert got[row].stopped == "eos" and got[row].token_ids == ids[:4]
    assert got[row].text == tok.decode(ids[:4], skip_special_tokens=True)
    # a stop string completed by token 3: text is cut before it, ids run through token 3
    full = tok.decode(ids[:4], skip_special_tokens=True)
    stop = full[len(tok.decode(ids[:3], skip_special_tokens=True)):].strip() or full[-1]
    got = generate_greedy(model, tok, prompts, max_new_tokens=16, stop_strings=[stop], progress=False)
    g = got[row]
    assert g.stopped == "stop_string" and stop not in g.text
    assert g.text == full[: full.find(stop)] and g.token_ids == ids[: len(g.token_ids)]
    assert len(g.token_ids) <= 4
    assert generate_greedy(model, tok, prompts[:1], max_new_tokens=0, progress=False)[0].token_ids == []
