"""tunelens reverse-KL f-DPG vs TRL's RLOO (KL-penalised) on the same reward target, in one run.

Target: p(x) ∝ a(x)·exp(r(x)/β) with r(x) = 1[x contains the word "yet"]; reverse KL to p is exactly the
KL-penalised objective E_π[r] − β·KL(π‖a) that TRL's RLOO optimises (rewards minus beta·KL, leave-one-out
baseline). Both start from the same small prose model (benchmarks/align_pretrain_tiny.py), draw the same
number of samples (steps × batch) from the same prompt, with the same learning rate and Adam; afterwards the
same tunelens sampler draws ``--eval`` samples from each final policy to measure E[r] and KL(π‖a).
Prints samples/s, E[r] and the ratios. The machine is shared: compare only numbers from the same run.

    PYTHONPATH=src python benchmarks/align_speed.py --model runs/tiny-prose --steps 15 --batch 64
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from tunelens.align import AlignConfig, ContextConfig, train_align
from tunelens.align.contexts import build_contexts
from tunelens.align.sampling import sample, score_in_batches
from tunelens.models import load_model
from tunelens.train.config import ModelConfig, OptimConfig

WORD = re.compile(r"(?<!\w)yet(?!\w)", re.IGNORECASE)
PROMPT = "It was"


def reward_texts(texts: list[str]) -> list[float]:
    return [float(WORD.search(t) is not None) for t in texts]


def trl_reward(completions, **kwargs) -> list[float]:
    return reward_texts(list(completions))


def run_tunelens(args, out: Path) -> tuple[float, torch.nn.Module]:
    cfg = AlignConfig(model=ModelConfig(spec=args.model), loss="rkl", baseline="leave_one_out",
                      target=[{"type": "reward", "feature": {"kind": "python", "function": "align_speed:reward_texts"},
                               "beta": args.beta}],
                      contexts=ContextConfig(source="texts", texts=[PROMPT], variant="raw"),
                      samples_per_context=args.batch, micro_batch=args.batch, max_new_tokens=args.max_new_tokens,
                      probe_samples=args.batch, eval_samples=16, eval_every=0, max_steps=args.steps,
                      optim=OptimConfig(lr=args.lr, schedule="constant", weight_decay=0.0, max_grad_norm=1.0),
                      precision="fp32", save_every=0, tensorboard=False, save_final_model=True, seed=args.seed)
    res = train_align(cfg, out)  # res.wall_s: the training loop only (not model loading, the probe or step-0 eval)
    model, _ = load_model(res.final_model)
    return res.wall_s, model


def run_trl(args, out: Path) -> tuple[float, torch.nn.Module]:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    model, tok = load_model(args.model)
    ds = Dataset.from_dict({"prompt": [PROMPT] * (args.steps * args.batch)})
    cfg = RLOOConfig(output_dir=str(out), per_device_train_batch_size=args.batch, num_generations=args.batch,
                     max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                     beta=args.beta, learning_rate=args.lr, lr_scheduler_type="constant", max_steps=args.steps,
                     num_iterations=1, use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
                     seed=args.seed, max_grad_norm=1.0, weight_decay=0.0, disable_dropout=True)
    trainer = RLOOTrainer(model=model, reward_funcs=[trl_reward], args=cfg, train_dataset=ds, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return wall, trainer.model


@torch.no_grad()
def evaluate(model, base, tok, n: int, max_new: int, seed: int) -> dict[str, float]:
    ctx = build_contexts(ContextConfig(source="texts", texts=[PROMPT], variant="raw"), tok)
    drawn = sample(model, tok, ctx * n, max_new_tokens=max_new, batch_size=128, generator=torch.Generator().manual_seed(seed))
    log_a = score_in_batches(base, drawn.samples, pad_id=tok.pad_token_id, batch_size=128, bf16=False)
    return {"reward": sum(reward_texts(drawn.samples.texts)) / n, "kl_pi_a": float((drawn.logprob - log_a).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/tiny-prose")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import sys
    sys.path.insert(0, str(Path(__file__).parent))  # align_speed:reward_texts importable by the python feature
    base, tok = load_model(args.model)
    results = {"base": evaluate(base, base, tok, args.eval, args.max_new_tokens, 123)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("tunelens_rkl_dpg", run_tunelens), ("trl_rloo", run_trl)):
            wall, model = fn(args, Path(tmp) / name)
            n = args.steps * args.batch
            results[name] = {"wall_s": wall, "samples": n, "samples_per_s": n / wall,
                             **evaluate(model.eval(), base, tok, args.eval, args.max_new_tokens, 123)}
            print(name, results[name], flush=True)
    t, r = results["tunelens_rkl_dpg"], results["trl_rloo"]
    results["ratio_samples_per_s"] = t["samples_per_s"] / r["samples_per_s"]
    results["args"] = vars(args)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
