"""One fine-tuning run of the testbed: a variant at a seed, through ``tunelens.train.train_sft`` with the
trajectory probe (``tunelens.probes.run`` on the counterfactual conflicts file + in-distribution accuracy)."""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelens.data.schemas import Example
from tunelens.testbed.config import EvalConfig, TestbedConfig
from tunelens.testbed.evalsets import answer_accuracy
from tunelens.testbed.mixtures import write_jsonl

TRACK = ("reliance", "reliance_prob", "closed_book", "id_acc")


@dataclass
class EvalSets:
    conflicts: Path  # counterfactual conflicts file (held-out people)
    indistribution: list[Example]
    counterfactual_train: Path  # swapped contexts of train people (augmentation source)


def make_evaluate(ecfg: EvalConfig, sets: EvalSets, indicator: str | None = None) -> Callable[[Any, Any], dict]:
    """``evaluate(model, tok)``: reliance (conflicts probe), closed-book rate and ID accuracy; with an
    ``indicator``, the same again with it appended to every user turn, under keys prefixed ``ind/``."""
    from tunelens.probes.runner import run
    from tunelens.probes.settings import ProbeSettings

    base = ProbeSettings(mode=ecfg.mode, batch_size=ecfg.batch_size, bf16=True, progress=False,
                         no_context_control=True, max_new_tokens=4)
    main = "ctx_pref_rate" if ecfg.mode == "loglik" else "ctx_rate"

    def evaluate(model: Any, tok: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for prefix, ind in [("", None)] + ([("ind/", indicator)] if indicator else []):
            report = run(model, tok, [f"conflicts:{sets.conflicts}"], ["chat"], replace(base, indicator=ind))
            m = report.results[0].metrics
            out[prefix + "reliance"] = m[main]
            out[prefix + "reliance_known"] = m[main + "_known"]
            out[prefix + "closed_book"] = m["closed_book_param_rate"]
            if "ctx_prob_mean" in m:
                out[prefix + "reliance_prob"] = m["ctx_prob_mean"]
            acc = answer_accuracy(model, tok, sets.indistribution, batch_size=ecfg.batch_size, indicator=ind)
            out.update({prefix + k: v for k, v in acc.items()})
        return out

    return evaluate


def sft_config(cfg: TestbedConfig, model_spec: str, data_path: Path, seed: int, finetune: str,
               lr: float | None = None) -> Any:
    from tunelens.train.config import SFTConfig

    f = cfg.finetune
    sft = SFTConfig()
    sft.model.spec = model_spec
    sft.data.paths = [str(data_path)]
    sft.data.schema = "messages"
    sft.data.max_length = f.max_length
    sft.data.packing = True
    sft.finetune = finetune
    sft.qk_modules = list(cfg.mitigations.qk_modules)
    sft.batch_size = f.batch_size
    sft.max_steps = f.steps
    sft.precision = f.precision
    sft.seed = seed
    sft.optim.lr = lr or f.lr
    sft.optim.warmup_steps = f.warmup_steps
    sft.optim.schedule = f.schedule
    sft.save_every = 0
    sft.keep_last = 1
    sft.save_final_model = False
    sft.tensorboard = False
    return sft


def run_fingerprint(cfg: TestbedConfig, variant: str, seed: int) -> str:
    """Hash of everything that determines one run (not seeds/variants lists, workers, threads, plots, cache,
    nor the settings of other variants' mitigations)."""
    import hashlib
    from dataclasses import asdict

    from tunelens.testbed.config import VARIANT_SETTINGS

    d = asdict(cfg)
    for k in ("seeds", "variants", "workers", "threads", "pretrain_threads", "plots", "cache_dir"):
        d.pop(k)
    d["mitigations"] = {k: d["mitigations"][k] for k in VARIANT_SETTINGS[variant]}
    return hashlib.sha256(json.dumps([d, variant, seed], sort_keys=True).encode()).hexdigest()[:16]


def run_variant(cfg: TestbedConfig, variant: str, seed: int, model_dir: Path, sets: EvalSets, out: Path,
                world: Any = None) -> dict[str, Any]:
    """Prepare and fine-tune one variant at one seed into ``out``; returns its record (also ``out/result.json``).

    A finished run of the same configuration (``result.json`` with the same fingerprint) is returned as it is.
    """
    from tunelens.probes.trajectory import TrajectoryCallback, TrajectoryOptions
    from tunelens.testbed.variants import prepare_variant
    from tunelens.testbed.world import generate_world
    from tunelens.train import train_sft

    done = out / "result.json"
    fingerprint = run_fingerprint(cfg, variant, seed)
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("fingerprint") == fingerprint:
            return record
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    world = world or generate_world(cfg.world)
    prep = prepare_variant(variant, cfg, world, seed, model_dir, out, sets.counterfactual_train)
    data_path = write_jsonl(prep.examples, out / "train.jsonl")
    t_prep = time.perf_counter() - t0
    keys: Sequence[str] = TRACK + tuple(f"ind/{k}" for k in TRACK) if prep.indicator else TRACK
    callback = TrajectoryCallback(make_evaluate(cfg.eval, sets, prep.indicator),
                                  TrajectoryOptions(every=cfg.eval.every, track=list(keys),
                                                    reliance="ind/reliance" if prep.indicator else "reliance",
                                                    threshold=cfg.eval.threshold))
    result = train_sft(sft_config(cfg, prep.model_spec, data_path, seed, prep.finetune, prep.lr), out / "sft",
                       callbacks=[callback], force=True)
    record = {"variant": variant, "seed": seed, "fingerprint": fingerprint, "indicator": prep.indicator,
              "prepare": prep.report,
              "prepare_s": t_prep, "train_s": result.wall_s, "steps": result.steps, "final_loss": result.final_loss,
              "trajectory": callback.summary()}
    done.write_text(json.dumps(record, indent=1))
    return record
