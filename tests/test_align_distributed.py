"""align under data parallelism: each process samples a slice of the step's rows, all of them see every sample.

By construction (tunelens.align.trainer._local_rows), the rows and sampling uniforms of N processes concatenate
to exactly those of one process, so with the same micro-batch shapes a 2-process run draws the same samples,
holds the same Ẑ and baselines, and takes the same gradient (the DDP average of two half-batch means is the
full-batch mean) as a 1-process run, up to floating-point summation order.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from launch import accelerate_cli

from tunelens.align import AlignConfig, Context
from tunelens.align.sampling import sample
from tunelens.align.trainer import _local_rows
from tunelens.models import load_model
from tunelens.train.metrics import read_metrics

RECIPE = """
model: {spec: tiny-llama}
target:
  - type: pointwise
    feature: {kind: regex, pattern: "[0-9]"}
loss: js
max_new_tokens: 8
samples_per_context: 16
micro_batch: 8
probe_samples: 64
eval_samples: 32
eval_every: 0
max_steps: 3
save_every: 0
save_final_model: false
precision: fp32
optim: {lr: 0.003}
tensorboard: false
"""


def test_process_slices_concatenate_to_the_single_process_rows():
    cfg = AlignConfig(samples_per_context=6, max_new_tokens=5, seed=3)
    contexts = [Context(i, (1, i + 2)) for i in range(3)]
    ctx_ids = [0, 2]
    one_rows, one_u, lo = _local_rows(cfg, contexts, ctx_ids, 7, SimpleNamespace(world=1, rank=0))
    assert lo == 0 and len(one_rows) == 12 and one_u.shape == (12, 5)
    parts = [_local_rows(cfg, contexts, ctx_ids, 7, SimpleNamespace(world=3, rank=r)) for r in range(3)]
    assert [p[2] for p in parts] == [0, 4, 8]
    assert sum((p[0] for p in parts), []) == one_rows
    assert torch.equal(torch.cat([p[1] for p in parts]), one_u)
    other_step = _local_rows(cfg, contexts, ctx_ids, 8, SimpleNamespace(world=1, rank=0))[1]
    assert not torch.equal(other_step, one_u)


def test_sampling_a_slice_with_its_uniforms_reproduces_those_rows():
    model, tok = load_model("tiny-llama")
    ctx = [Context(0, (tok.bos_token_id or 1,))] * 8
    u = torch.rand(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = sample(model, tok, ctx, max_new_tokens=6, batch_size=4, uniforms=u)
    halves = [sample(model, tok, ctx[i:i + 4], max_new_tokens=6, batch_size=4, uniforms=u[i:i + 4]) for i in (0, 4)]
    assert whole.samples.token_ids == halves[0].samples.token_ids + halves[1].samples.token_ids
    assert torch.allclose(whole.logprob, torch.cat([h.logprob for h in halves]))
    assert len(set(map(tuple, whole.samples.token_ids))) > 1  # the rows are different draws
    with pytest.raises(ValueError, match="uniforms has shape"):
        sample(model, tok, ctx, max_new_tokens=6, uniforms=u[:4])


@pytest.mark.slow  # two CLI runs, one of them under `accelerate launch` with 2 CPU processes (~1 min)
def test_two_process_run_matches_one_process_run(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # one process with micro_batch 8 scores the same 8-row halves as each of the two processes below
    one = subprocess.run([sys.executable, "-m", "tunelens.cli.main", "align", str(path), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = accelerate_cli(2, "align", str(path), "--out", str(tmp_path / "two"))
    two = subprocess.run(launcher, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s1["samples_seen"] == s2["samples_seen"] == 48
    # the probe of the base and the step-0 evaluation run on identical weights with identical seeds
    assert s1["initial"] == s2["initial"]
    t1, t2 = read_metrics(tmp_path / "one", "train"), read_metrics(tmp_path / "two", "train")
    assert [r["step"] for r in t1] == [r["step"] for r in t2] == [1, 2, 3]
    for a, b in zip(t1, t2):
        # the same samples (acceptance is a count over them), hence the same Ẑ, pseudo-rewards and baselines;
        # the rank-0 log of a 2-process run is the gathered state that _check_replicas_agree verified on rank 1
        assert a["accept_rate_batch"] == b["accept_rate_batch"]
        for key in ("z/z", "pseudo_reward", "baseline", "advantage_std", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
    for key in ("rate/all_constraints", "kl_pi_a", "distinct_2"):
        assert s2["final"][key] == pytest.approx(s1["final"][key], rel=1e-3, abs=1e-6), key
