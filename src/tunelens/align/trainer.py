"""f-DPG training: minimise D_f(π‖p) for an energy-based target p, with an explicit accelerate loop.

``train_align(cfg, out)`` writes a run directory like SFT's (config.yaml, target.json, metrics.jsonl with
``train`` and ``eval`` events, TensorBoard, checkpoints/step-N, final/, summary.json with the evaluation at
step 0 and at the end). Calling it again on the same directory resumes exactly: every step draws its samples
from a generator seeded by (seed, step, process) and Ẑ, baselines, λ and the proposal are checkpointed.

One step: pick ``contexts_per_step`` contexts; draw ``samples_per_context`` continuations of each from the
proposal q (the policy itself by default); score log a, log π and the target's factors; update Ẑ_c; compute
the pseudo-reward R = −f′(π/p) and the baseline B; descend −mean[(π/q)(R − B) ∇log π].
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunelens.align.config import AlignConfig
from tunelens.align.contexts import build_contexts
from tunelens.align.evaluate import evaluate_policy, probe_base
from tunelens.align.fdivergence import fdpg_loss, get_divergence, pseudo_reward
from tunelens.align.metrics import weight_metrics
from tunelens.align.partition import Baseline, PartitionEstimator
from tunelens.align.sampling import sequence_logprobs
from tunelens.align.scoring import AlignModels
from tunelens.align.targets import build_target
from tunelens.errors import ConfigError, TrainingError
from tunelens.models import apply_finetune_mode, load_model, save_model, trainable_parameters
from tunelens.progress import progress_bar
from tunelens.train.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from tunelens.train.metrics import MetricsLogger
from tunelens.train.optim import build_optimizer, build_scheduler
from tunelens.train.rundir import prepare_run_dir
from tunelens.train.sft import _Dist, _grad_norm, seed_everything

FAULT_ENV = "TUNELENS_FAULT_KILL_AT_STEP"
EVAL_SEED_OFFSET = 7919


@dataclass
class AlignResult:
    run_dir: str
    steps: int
    samples_seen: int
    wall_s: float
    samples_per_s: float
    resumed_from: int | None
    initial: dict[str, float]
    final: dict[str, float]
    final_model: str | None


def _load_models(cfg: AlignConfig, device: torch.device) -> AlignModels:
    m = cfg.model
    policy, tok = load_model(m.spec, dtype=m.dtype, attn_implementation=m.attn_implementation, seed=m.seed)
    base = None
    if cfg.finetune != "lora" or (cfg.base and cfg.base != m.spec):
        base, base_tok = load_model(cfg.base or m.spec, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                    seed=m.seed)
        if base_tok.get_vocab() != tok.get_vocab():
            raise ConfigError(f"base {cfg.base!r} and policy {m.spec!r} have different tokenizers; f-DPG needs "
                              "both to score the same token sequences.")
        base.to(device).eval()
        for p in base.parameters():
            p.requires_grad_(False)
    policy = apply_finetune_mode(policy, cfg.finetune, cfg.lora)
    policy.to(device)
    return AlignModels(policy, tok, base, cfg.micro_batch, cfg.precision == "bf16")


def _step_contexts(cfg: AlignConfig, n_contexts: int, step: int) -> list[int]:
    k = min(cfg.contexts_per_step, n_contexts)
    rng = np.random.default_rng([cfg.seed, step, 17])
    return sorted(rng.choice(n_contexts, size=k, replace=False).tolist())


def _local_rows(cfg: AlignConfig, contexts: list, ctx_ids: list[int], step: int,
                dist: _Dist) -> tuple[list, torch.Tensor, int]:
    """This process's contiguous slice of the step's rows, their sampling uniforms, and the slice's offset.

    The step's global rows (each context repeated ``samples_per_context`` times) and one uniform matrix for all
    of them come from (seed, step) alone, so the gathered samples of N processes are exactly the samples one
    process would draw, in the same order.
    """
    rows = [contexts[c] for c in ctx_ids for _ in range(cfg.samples_per_context)]
    per = len(rows) // dist.world
    lo = dist.rank * per
    gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, step]).integers(2**62)))
    uniforms = torch.rand(len(rows), cfg.max_new_tokens, dtype=torch.float64, generator=gen)
    return rows[lo:lo + per], uniforms[lo:lo + per], lo


def _check_replicas_agree(acc: Any, dist: _Dist, z: PartitionEstimator, baseline: Baseline, step: int) -> None:
    """Every process must hold the same Ẑ and baseline state (they all update from the gathered samples)."""
    if dist.world == 1:
        return
    hist = baseline.state_dict()  # fixed-length digest: the gather needs equal shapes even when states differ
    state = [*(v if math.isfinite(v) else -1e300 for v in z.log_sum), *map(float, z.count),
             float(sum(sum(h) for h in hist.values())), float(sum(len(h) for h in hist.values()))]
    mine = torch.tensor(state, dtype=torch.float64)
    every = _gather(acc, dist.world, mine.unsqueeze(0))
    if not torch.equal(every.min(0).values, every.max(0).values):
        raise TrainingError(f"f-DPG step {step}: processes disagree on Ẑ / baseline state "
                            f"(max spread {float((every.max(0).values - every.min(0).values).max()):.3g}); the "
                            "estimates must come from the gathered samples of every process.")


def _gather(acc: Any, world: int, t: torch.Tensor) -> torch.Tensor:
    if world == 1:
        return t
    return acc.gather(t.to(acc.device)).cpu()


def train_align(cfg: AlignConfig, out: str | Path, force: bool = False) -> AlignResult:
    """Run (or resume) f-DPG as configured, writing the run directory ``out``."""
    from accelerate import Accelerator

    cfg.validate()
    out = Path(out)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    dist = _Dist(acc)
    if cfg.samples_per_context % dist.world:
        raise ConfigError(f"samples_per_context ({cfg.samples_per_context}) must be divisible by the number of "
                          f"processes ({dist.world}): each process draws an equal slice of every step's samples.")
    resume_from = prepare_run_dir(out, cfg, force=force, is_main=dist.is_main)
    dist.barrier()
    seed_everything(cfg.seed)
    models = _load_models(cfg, acc.device)
    contexts = build_contexts(cfg.contexts, models.tokenizer)
    target = build_target(cfg.target)
    div = get_divergence(cfg.loss, cfg.alpha)
    z = PartitionEstimator(len(contexts))
    baseline = Baseline(cfg.baseline, cfg.loss, cfg.baseline_window, cfg.baseline_per_context)
    optimizer = build_optimizer(trainable_parameters(models.policy), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.max_steps, cfg.optim)
    ev = dict(n_per_context=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + EVAL_SEED_OFFSET,
              n_base=cfg.eval_base_samples)

    start, samples_seen, initial, last_eval = 0, 0, {}, None
    if resume_from is not None:
        st = load_checkpoint(resume_from, models.policy, optimizer, scheduler, rank=dist.rank)
        start, samples_seen, initial = int(st["step"]), int(st["samples_seen"]), st["initial"]
        last_eval = st.get("last_eval")  # the evaluation a finished run ends with, when it is resumed again
        z.load_state_dict(st["z"])
        baseline.load_state_dict(st["baseline"])
        target.load_state(st["lambdas"])
        dropped = set(st.get("dropped_contexts", []))
        if st.get("proposal_active"):
            models.load_proposal(load_file(str(resume_from / "proposal.safetensors")))
    else:
        report = probe_base(models, target, contexts, z, n_per_context=cfg.probe_samples,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1, fit_tol=cfg.fit_tol,
                            drop_unaccepted=cfg.zero_acceptance == "drop")
        dropped = set(report["dropped_contexts"])
        if dist.is_main:
            (out / "target.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    contexts = [c for c in contexts if c.index not in dropped]  # Ẑ_c and baselines stay keyed by c.index
    eval_ctx = contexts[: max(1, cfg.eval_contexts)]
    logger = MetricsLogger(out, enabled=dist.is_main, tensorboard=cfg.tensorboard,
                           resume_step=start if resume_from is not None else None)
    if resume_from is None:
        initial = evaluate_policy(models, target, eval_ctx, z, **ev) if dist.is_main else {}
        logger.log(0, initial, event="eval")
    ddp, optimizer = acc.prepare(models.policy, optimizer)
    checkpoints = out / "checkpoints"
    kill_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    final = dict(last_eval if last_eval is not None else initial)
    t0, seen0 = time.perf_counter(), samples_seen

    def checkpoint(step: int) -> None:
        state = {"samples_seen": samples_seen, "z": z.state_dict(), "baseline": baseline.state_dict(),
                 "lambdas": target.state(), "initial": initial, "last_eval": final,
                 "dropped_contexts": sorted(dropped),
                 "proposal_active": models.proposal_model is not None}
        path = save_checkpoint(checkpoints, step, models.policy, optimizer, scheduler, state, rank=dist.rank,
                               world_size=dist.world, barrier=dist.barrier)
        if dist.is_main and models.proposal_model is not None:
            save_file(models.proposal_state(), str(path / "proposal.safetensors"))
        if dist.is_main:
            prune_checkpoints(checkpoints, cfg.keep_last)

    with progress_bar(cfg.max_steps, f"align ({cfg.loss})", enabled=dist.is_main) as bar:
        bar.set(start)
        for step in range(start, cfg.max_steps):
            t_step = time.perf_counter()
            ctx_ids = _step_contexts(cfg, len(contexts), step)
            rows, uniforms, lo = _local_rows(cfg, contexts, ctx_ids, step, dist)
            which = {"policy": "policy", "base": "base", "adaptive": "proposal"}[cfg.proposal]
            drawn = models.sample(which, rows, cfg.max_new_tokens, uniforms=uniforms)
            s, log_q = drawn.samples, drawn.logprob
            log_a = log_q if which == "base" or (which == "proposal" and models.proposal_model is None) \
                else models.score("base", s)
            log_pi = log_q if which == "policy" else models.score("policy", s)
            log_P = log_a + target.log_factor(s)
            # every process sees the whole step's samples for Ẑ and the baselines, so their states stay equal
            ctx_all = _gather(acc, dist.world, torch.tensor(s.context_index))
            logw_all = _gather(acc, dist.world, (log_P - log_q).double())
            lpi_all = _gather(acc, dist.world, log_pi.double())
            lP_all = _gather(acc, dist.world, log_P.double())
            lq_all = _gather(acc, dist.world, log_q.double())
            z.update(ctx_all.tolist(), logw_all)
            log_p_all = lP_all - z.log_z_of(ctx_all.tolist())
            r_all, clipped = pseudo_reward(div, lpi_all, log_p_all, cfg.max_log_ratio)
            b_all = baseline.values(ctx_all.tolist(), r_all)
            baseline.update(ctx_all.tolist(), r_all)
            r_loc, b_loc = r_all[lo:lo + len(s)], b_all[lo:lo + len(s)]
            ddp.train()
            loss_sum = 0.0
            for i in range(0, len(s), cfg.micro_batch):
                sl = slice(i, i + cfg.micro_batch)
                last = i + cfg.micro_batch >= len(s)
                with (acc.no_sync(ddp) if dist.world > 1 and not last else nullcontext()):
                    lp = sequence_logprobs(ddp, s.contexts[sl], s.token_ids[sl], pad_id=models.pad_id,
                                           bf16=models.bf16, grad=True)
                    lq = None if which == "policy" else log_q[sl].to(lp.device)
                    loss = fdpg_loss(lp, r_loc[sl].to(lp.device), b_loc[sl].to(lp.device), lq, denominator=len(s))
                    acc.backward(loss)
                loss_sum += float(loss.detach())
            grad_norm = _grad_norm(acc, ddp, cfg.optim.max_grad_norm)
            if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                raise TrainingError(f"f-DPG step {step + 1} ({cfg.loss}): non-finite loss {loss_sum} or gradient "
                                    f"norm {grad_norm}; the update was not applied. Lower optim.lr or use fp32.")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            samples_seen += len(ctx_all)
            _check_replicas_agree(acc, dist, z, baseline, step + 1)
            done = step + 1
            swapped = False
            if cfg.proposal == "adaptive" and done % cfg.proposal_update_every == 0:
                swapped = _maybe_swap_proposal(models, lpi_all, log_p_all, lq_all)
            dt = time.perf_counter() - t_step
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                adv = r_all - b_all
                rec = {"loss": dist.sum(loss_sum) / dist.world, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                       "pseudo_reward": float(r_all.mean()), "baseline": float(b_all.mean()),
                       "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
                       "clipped_fraction": float(clipped.double().mean()), "samples_seen": samples_seen,
                       "samples_per_s": len(ctx_all) / dt, "step_s": dt,
                       "accept_rate_batch": float(torch.isfinite(lP_all).double().mean()),
                       **({"proposal_swapped": float(swapped)} if cfg.proposal == "adaptive" else {}),
                       **weight_metrics(lpi_all - lq_all, "pi_over_q/"),
                       **{f"z/{k}": v for k, v in z.summary(sorted(set(ctx_all.tolist()))).items()}}
                logger.log(done, rec, event="train")
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps:
                if dist.is_main:
                    final = evaluate_policy(models, target, eval_ctx, z, **ev)
                    logger.log(done, final, event="eval")
                dist.barrier()
            bar.advance(1, status=f"Ẑ {z.summary().get('z', float('nan')):.3g}")
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps:
                checkpoint(done)
            if kill_at and done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    wall = time.perf_counter() - t0
    final_dir = None
    if cfg.save_final_model and dist.is_main:
        final_dir = str(save_model(models.policy, models.tokenizer, out / "final"))
    dist.barrier()
    trained = samples_seen - seen0
    result = AlignResult(str(out), cfg.max_steps, samples_seen, wall, trained / wall if wall > 0 else 0.0,
                         start if resume_from is not None else None, initial, final, final_dir)
    if dist.is_main:
        summary = {**asdict(result), "loss": cfg.loss, "model": cfg.model.spec, "world_size": dist.world,
                   "change": {k: final[k] - initial[k] for k in final if k in initial
                              and isinstance(final[k], float) and math.isfinite(final[k] - initial[k])}}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
    logger.close()
    return result


def _maybe_swap_proposal(models: AlignModels, log_pi: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> bool:
    """Replace q by a snapshot of π when the IS estimate of KL(p‖π) is below KL(p‖q) (GDC's adaptive proposal)."""
    ok = torch.isfinite(log_p)
    if not ok.any():
        return False
    w = torch.exp(log_p[ok] - log_q[ok])
    kl_p_pi = float((w * (log_p[ok] - log_pi[ok])).sum() / log_p.numel())
    kl_p_q = float((w * (log_p[ok] - log_q[ok])).sum() / log_p.numel())
    if kl_p_pi < kl_p_q:
        models.snapshot_policy_as_proposal()
        return True
    return False
