"""Supervised fine-tuning: an explicit accelerate training loop over packed, assistant-masked data.

``train_sft(cfg, out)`` writes a run directory (config.yaml, data_report.json, metrics.jsonl,
TensorBoard events, checkpoints/step-N, final/ and summary.json). Calling it again on the same
directory resumes from the newest complete checkpoint and ends exactly where an uninterrupted run
would have. Launch it under ``accelerate launch`` for multi-process data parallelism.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tunelens.chat import load_template_file
from tunelens.data import collate_packed, collate_padded, load_examples, pack_examples, tokenize_examples
from tunelens.errors import TrainingError
from tunelens.models import apply_finetune_mode, count_parameters, load_model, save_model, trainable_parameters
from tunelens.progress import progress_bar
from tunelens.train.batches import BatchPlan, select
from tunelens.train.callbacks import Callback, TrainState
from tunelens.train.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from tunelens.train.config import SFTConfig
from tunelens.train.metrics import MetricsLogger
from tunelens.train.optim import build_optimizer, build_scheduler
from tunelens.train.rundir import prepare_run_dir

FAULT_ENV = "TUNELENS_FAULT_KILL_AT_STEP"  # tests: SIGKILL the process after this step


@dataclass
class TrainResult:
    run_dir: str
    steps: int
    final_loss: float | None
    tokens_trained: int
    wall_s: float
    tokens_per_s: float
    resumed_from: int | None
    stopped_early: bool
    final_model: str | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies (fp32) over positions whose label is not -100."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")


def forward_backward(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], n_global: float,
                     world_size: int, accelerator: Any = None, autocast: Any = nullcontext) -> float:
    """Accumulate the gradient of one optimizer step over micro-batches; return the summed token loss.

    Every token counts equally: each micro-batch's summed loss is divided by the number of target
    tokens of the whole step on all processes (``n_global``), times ``world_size`` because DDP
    averages gradients over processes. So 4 micro-batches of 1 row give the gradient of 1 batch of 4.
    """
    loss_sum = 0.0
    device = next(model.parameters()).device
    for k, batch in enumerate(batches):
        batch = {key: v.to(device) for key, v in batch.items()}
        labels = batch.pop("labels")
        last = k == len(batches) - 1
        sync = accelerator.no_sync(model) if accelerator is not None and not last else nullcontext()
        with sync:
            with autocast():
                logits = model(**batch, use_cache=False).logits
            ce = token_loss_sum(logits, labels)
            scaled = ce * (world_size / max(n_global, 1.0))
            accelerator.backward(scaled) if accelerator is not None else scaled.backward()
        loss_sum += float(ce.detach())
    return loss_sum


def prepare_data(cfg: SFTConfig, tokenizer: Any, model: Any = None) -> tuple[list[Any], dict[str, Any]]:
    """Load, validate, prepare (``data.prep``), render and (optionally) pack the training data; return rows and
    a report. An ``indicate`` prep step adds its token to ``tokenizer`` and ``model`` (before tokenizing)."""
    d = cfg.data
    loaded = load_examples(d.paths, schema=d.schema, fields=dict(d.fields), on_error=d.on_error,
                           system=d.system, limit=d.limit)
    prepared, prep_reports = loaded.examples, []
    if d.prep:
        from tunelens.data.indicator import add_indicator_token
        from tunelens.data.prep import run_prep

        prep = run_prep(prepared, d.prep, model, tokenizer, seed=cfg.seed)
        prepared, prep_reports = prep.examples, prep.reports
        if prep.indicator_token is not None:
            add_indicator_token(model, tokenizer, prep.indicator_token, init_from=prep.indicator_init_from)
    examples, treport = tokenize_examples(prepared, tokenizer, max_length=d.max_length,
                                          train_on=d.train_on, truncation=d.truncation)
    rows = pack_examples(examples, d.max_length) if d.packing else examples
    report = {
        "load": {"n_read": loaded.n_read, "n_examples": len(loaded.examples), "n_rejected": len(loaded.rejected),
                 "rejected": [str(r) for r in loaded.rejected[:200]], "summary": loaded.summary()},
        "prep": prep_reports,
        "tokenize": asdict(treport),
        "rows": len(rows),
        "packing": d.packing,
    }
    return rows, report


def _collate(rows: list[Any], packing: bool, pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """Fixed-width batches (packed rows padded to max_length, others to a multiple of 64): few distinct
    shapes, so the CPU kernels (oneDNN) are built once instead of for every new sequence length."""
    if packing:
        return collate_packed(rows, pad_id, pad_to=max_length)
    return collate_padded(rows, pad_id, pad_to_multiple_of=64)


class _Dist:
    """The few collective operations the loop needs, no-ops in a single process."""

    def __init__(self, accelerator: Any):
        self.acc = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.is_main = accelerator.is_main_process

    def sum(self, value: float | int) -> float:
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()


def train_sft(cfg: SFTConfig, out: str | Path, callbacks: Sequence[Callback] = (), force: bool = False) -> TrainResult:
    """Run (or resume) supervised fine-tuning as configured, writing the run directory ``out``."""
    from accelerate import Accelerator

    cfg.validate()
    out = Path(out)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    dist = _Dist(acc)
    resume_from = prepare_run_dir(out, cfg, force=force, is_main=dist.is_main)
    dist.barrier()
    seed_everything(cfg.seed)

    model, tok = load_model(cfg.model.spec, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                            seed=cfg.model.seed)
    if cfg.model.chat_template:
        tok.chat_template = load_template_file(cfg.model.chat_template)
    model.to(acc.device)
    rows, data_report = prepare_data(cfg, tok, model)  # before LoRA/QK wrapping: prep may score with the model
    model = apply_finetune_mode(model, cfg.finetune, cfg.lora, tuple(cfg.qk_modules))
    model.to(acc.device)
    plan = BatchPlan(len(rows), cfg.batch_size, cfg.grad_accum, dist.world, cfg.seed)
    total_steps = plan.steps_for_epochs(cfg.epochs) if cfg.epochs is not None else cfg.max_steps
    if dist.is_main:
        data_report.update(n_params=count_parameters(model), n_trainable=count_parameters(model, trainable_only=True),
                           rows_per_step=plan.rows_per_step, total_steps=total_steps, world_size=dist.world)
        (out / "data_report.json").write_text(json.dumps(data_report, indent=2), encoding="utf-8")

    optimizer = build_optimizer(trainable_parameters(model), cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps, cfg.optim)
    start, tokens_seen, resumed_loss = 0, 0, None
    if resume_from is not None:
        st = load_checkpoint(resume_from, model, optimizer, scheduler, rank=dist.rank)
        start, tokens_seen = int(st["step"]), int(st.get("tokens_seen", 0))
        resumed_loss = st.get("loss")
    ddp_model, optimizer = acc.prepare(model, optimizer)
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    logger = MetricsLogger(out, enabled=dist.is_main, tensorboard=cfg.tensorboard,
                           resume_step=start if resume_from is not None else None)
    state = TrainState(step=start, max_steps=total_steps, model=model, tokenizer=tok, run_dir=out, config=cfg,
                       is_main=dist.is_main, loss=resumed_loss, tokens_seen=tokens_seen, _log=logger.log)
    autocast = (lambda: torch.autocast(acc.device.type, dtype=torch.bfloat16)) if cfg.precision == "bf16" \
        else nullcontext
    checkpoints = out / "checkpoints"

    def checkpoint(step: int) -> Path:
        path = save_checkpoint(checkpoints, step, model, optimizer, scheduler,
                               {"tokens_seen": state.tokens_seen, "loss": state.loss}, rank=dist.rank,
                               world_size=dist.world, barrier=dist.barrier)
        if dist.is_main:
            prune_checkpoints(checkpoints, cfg.keep_last)
        for cb in callbacks:
            cb.on_save(state, path)
        return path

    _run_hooks(callbacks, "on_train_begin", state, model)
    t0, last_saved, kill_at = time.perf_counter(), start, int(os.environ.get(FAULT_ENV, "0") or 0)
    with progress_bar(total_steps, "sft", enabled=dist.is_main) as bar:
        bar.set(start)
        for step in range(start, total_steps):
            t_step = time.perf_counter()
            micro = plan.micro_batches(step, dist.rank)
            batches = [_collate(select(rows, mb), cfg.data.packing, tok.pad_token_id, cfg.data.max_length)
                       for mb in micro]
            n_input = dist.sum(sum(len(rows[i].input_ids) for mb in micro for i in mb))
            n_global = dist.sum(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
            ddp_model.train()
            loss_sum = forward_backward(ddp_model, batches, n_global, dist.world, acc, autocast)
            loss = dist.sum(loss_sum) / max(n_global, 1.0)
            grad_norm = _grad_norm(acc, ddp_model, cfg.optim.max_grad_norm)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                good = checkpoint(step) if step > last_saved or step == 0 else checkpoints / f"step-{last_saved}"
                raise TrainingError(
                    f"Training diverged at step {step + 1}: loss={loss}, grad_norm={grad_norm}. The update was not "
                    f"applied; the last good state is in {good}. Lower optim.lr, add warmup, or use precision=fp32."
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step, state.loss = step + 1, loss
            state.tokens_seen += int(n_global)
            dt = time.perf_counter() - t_step
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                logger.log(state.step, {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                        "tokens": int(n_global), "input_tokens": int(n_input),
                                        "tokens_seen": state.tokens_seen, "input_tokens_per_s": n_input / dt,
                                        "step_s": dt, "epoch": plan.epoch_of(state.step)})
            _run_hooks(callbacks, "on_step_end", state, model)
            bar.advance(1, status=f"loss {loss:.4f}")
            last = state.step == total_steps or state.should_stop
            if (cfg.save_every and state.step % cfg.save_every == 0) or last:
                checkpoint(state.step)
                last_saved = state.step
            if kill_at and state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if state.should_stop:
                break
    _run_hooks(callbacks, "on_train_end", state, model)
    wall = time.perf_counter() - t0
    final_dir = None
    if cfg.save_final_model and dist.is_main:
        final_dir = str(save_model(model, tok, out / "final"))
    dist.barrier()
    trained = state.tokens_seen - tokens_seen
    result = TrainResult(run_dir=str(out), steps=state.step, final_loss=state.loss, tokens_trained=trained,
                         wall_s=wall, tokens_per_s=trained / wall if wall > 0 else 0.0,
                         resumed_from=start if resume_from is not None else None,
                         stopped_early=state.step < total_steps, final_model=final_dir)
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps({**asdict(result), "data": data_report}, indent=2))
    logger.close()
    return result


def _grad_norm(acc: Any, model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm and max_norm > 0:
        return float(acc.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def _run_hooks(callbacks: Sequence[Callback], hook: str, state: TrainState, model: torch.nn.Module) -> None:
    if not callbacks:
        return
    was_training = model.training
    model.eval()
    try:
        for cb in callbacks:
            getattr(cb, hook)(state)
    finally:
        model.train(was_training)
