"""``run_testbed(cfg, out)``: world -> pretrained model (cached) -> evaluation sets -> every variant x seed
fine-tuned with the trajectory probe -> ``out/summary.json``, ``out/summary.md`` and plots.

Run directory::

    out/config.yaml            resolved TestbedConfig
    out/pretrain.json          pretraining report (closed-book recall, loss, cache key, whether it was cached)
    out/eval/                  counterfactual.json (conflicts format), counterfactual_train.json, indistribution.jsonl
    out/runs/<variant>/seed-<s>/   train.jsonl, result.json, sft/ (metrics.jsonl, trajectory.json, ...)
    out/summary.json           per-run numbers, per-variant mean/sd and differences from vanilla, checks, timings
    out/summary.md             the same table in markdown
    out/plots/*.png            reliance, ID accuracy and loss against step, per variant
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from tunelens.config import save_config
from tunelens.progress import progress_bar
from tunelens.testbed.config import TestbedConfig
from tunelens.testbed.evalsets import (
    counterfactual_items,
    indistribution_set,
    write_conflicts,
)
from tunelens.testbed.finetune import EvalSets, run_variant
from tunelens.testbed.mixtures import write_jsonl
from tunelens.testbed.pretrain import ensure_pretrained
from tunelens.testbed.summary import (
    aggregate,
    format_table,
    reproduction_checks,
    run_summary,
)
from tunelens.testbed.world import World, generate_world


def build_eval_sets(cfg: TestbedConfig, world: World, out: Path) -> EvalSets:
    ev = out / "eval"
    cf = counterfactual_items(world, cfg.eval.n_counterfactual, cfg.mixture.distractors, seed=cfg.world.seed)
    cf_train = counterfactual_items(world, 10 ** 6, cfg.mixture.distractors, seed=cfg.world.seed, people="train")
    ids = indistribution_set(world, cfg.mixture, cfg.eval.n_indistribution, seed=cfg.world.seed)
    write_jsonl(ids, ev / "indistribution.jsonl")
    return EvalSets(conflicts=write_conflicts(cf, ev / "counterfactual.json"), indistribution=ids,
                    counterfactual_train=write_conflicts(cf_train, ev / "counterfactual_train.json"))


def _init_worker(threads: int) -> None:
    import os

    os.environ["TUNELENS_QUIET"] = "1"  # the parent shows one bar over all runs; workers' bars would interleave
    torch.set_num_threads(threads)
    _quiet_transformers()


def _quiet_transformers() -> None:
    """No per-load progress bars from transformers (dozens of model loads per testbed run)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _job(cfg: TestbedConfig, variant: str, seed: int, model_dir: Path, sets: EvalSets, out: Path) -> dict[str, Any]:
    return run_variant(cfg, variant, seed, model_dir, sets, out / "runs" / variant / f"seed-{seed}")


def run_testbed(cfg: TestbedConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run the whole testbed into ``out``; returns the summary (also written to ``out/summary.json``)."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.pretrain_threads or cfg.workers * cfg.threads)
    _quiet_transformers()
    try:
        world = generate_world(cfg.world)
        model_dir, pre = ensure_pretrained(world, cfg.corpus, cfg.model, cfg.pretrain, cfg.cache_dir, progress=progress)
        (out / "pretrain.json").write_text(json.dumps({**pre, "model_dir": str(model_dir)}, indent=2))
        t_pre = time.perf_counter() - t0
        sets = build_eval_sets(cfg, world, out)
        jobs = [(v, s) for s in cfg.seeds for v in cfg.variants]
        records = _run_jobs(cfg, jobs, model_dir, sets, out, progress)
    finally:
        torch.set_num_threads(threads_before)
    runs = [run_summary(r) for r in records]
    summary = {
        "pretrain": {"cache_hit": pre["cache_hit"], "key": pre["key"], "n_params": pre["n_params"],
                     "closed_book_recall": pre["closed_book_recall"], "wall_s": pre["wall_s"]},
        "runs": runs,
        "table": aggregate(runs),
        "checks": reproduction_checks(runs, cfg.eval.threshold),
        "timing": {"pretrain_or_cache_s": t_pre, "total_s": time.perf_counter() - t0, "workers": cfg.workers,
                   "threads_per_worker": cfg.threads},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(format_table(summary["table"]) + "\n")
    if cfg.plots:
        from tunelens.report.testbed_plots import plot_testbed

        summary["plots"] = [str(p) for p in plot_testbed(out, cfg.variants, cfg.seeds)]
    summary["timing"]["total_s"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _run_jobs(cfg: TestbedConfig, jobs: list[tuple[str, int]], model_dir: Path, sets: EvalSets, out: Path,
              progress: bool) -> list[dict[str, Any]]:
    records: dict[tuple[str, int], dict[str, Any]] = {}
    with progress_bar(len(jobs), "testbed runs", enabled=progress) as bar:
        if cfg.workers == 1:
            torch.set_num_threads(cfg.threads)
            for v, s in jobs:
                records[(v, s)] = _job(cfg, v, s, model_dir, sets, out)
                bar.advance(1, status=f"{v} seed {s}")
        else:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(cfg.threads,)) as pool:
                futures = {pool.submit(_job, cfg, v, s, model_dir, sets, out): (v, s) for v, s in jobs}
                for fut in as_completed(futures):
                    records[futures[fut]] = fut.result()
                    bar.advance(1, status="{} seed {}".format(*futures[fut]))
    return [records[j] for j in jobs]
