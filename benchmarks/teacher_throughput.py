"""Teacher throughput: generated tokens/s of the local HF teacher (batched, bf16 autocast) vs an
OpenAI-compatible endpoint (vLLM CPU if running) on the SAME prompts, measured alternately in one run.

    # start vLLM first (docs/synth.md), then:
    python benchmarks/teacher_throughput.py --base-url http://127.0.0.1:8123/v1 --served-name smollm2
    python benchmarks/teacher_throughput.py --no-endpoint        # HF teacher only

Prompts: the first halves of passages of ../shared/data/prose (Gutenberg, cleaned, 256-token passages),
wrapped in SmolLM2's chat template on both sides (prompt_format=chat). Both sides decode greedily up to
--max-tokens new tokens and stop at EOS; throughput counts the tokens each side actually generated (usage
from the server, token ids locally). Rounds alternate HF / endpoint so both see the same machine load; the
script prints per-round figures, medians and the endpoint/HF ratio.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prompts(n: int, tokenizer) -> list[str]:
    from tunelens.config import load_config
    from tunelens.data.synth import SynthConfig
    from tunelens.data.synth.pipeline import build_pairs
    from collections import Counter

    src = REPO.parent / "shared" / "data" / "prose"
    cfg = load_config(SynthConfig, REPO / "configs" / "synth-gold.yaml",
                      [f"max_pairs={n}", f"sources=[{{path: {src}, glob: 'gutenberg_1*.txt'}}]"])
    pairs = build_pairs(cfg, tokenizer, [], [], Counter())
    return [p.split.prompt for p in pairs]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_side(teacher, texts: list[str]) -> dict:
    from tunelens.data.synth import TeacherRequest

    t0 = time.perf_counter()
    res = teacher.complete([TeacherRequest(prompt=t) for t in texts])
    dt = time.perf_counter() - t0
    errors = sum(not r.ok for r in res)
    toks = sum(r.usage.get("completion_tokens", 0) for r in res)
    return {"seconds": dt, "completion_tokens": toks, "tokens_per_s": toks / dt, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="prompts per round")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--base-url", default="http://127.0.0.1:8123/v1")
    ap.add_argument("--served-name", default="smollm2")
    ap.add_argument("--no-endpoint", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import torch

    from tunelens.data.synth import TeacherRequest
    from tunelens.data.synth.teachers import SamplingParams
    from tunelens.data.synth.teachers.hf import HFTeacher
    from tunelens.data.synth.teachers.openai_api import OpenAITeacher

    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0)
    hf = HFTeacher("smollm2-135m-instruct", params, prompt_format="chat", batch_size=a.hf_batch, bf16=True)
    log(f"model loaded; building {a.n} prompts")
    texts = prompts(a.n, hf.tokenizer)
    log(f"{len(texts)} prompts, {sum(len(hf.encode(TeacherRequest(prompt=t))) for t in texts)} prompt tokens")
    sides = {"hf_bf16": hf}
    if not a.no_endpoint:
        sides["endpoint"] = OpenAITeacher(a.served_name, a.base_url, params, prompt_format="chat",
                                          concurrency=a.concurrency, timeout_s=600, max_retries=0)
    for name, t in sides.items():  # warm-up (not timed): first calls pay for lazy init / graph capture
        log(f"warm-up {name}: {run_side(t, texts[:2])}")
    rounds = []
    for r in range(a.rounds):
        for name, t in sides.items():
            got = run_side(t, texts)
            got.update(side=name, round=r)
            rounds.append(got)
            print(json.dumps(got), flush=True)
    summary = {name: statistics.median(x["tokens_per_s"] for x in rounds if x["side"] == name) for name in sides}
    out = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
           "settings": vars(a), "rounds": rounds, "median_tokens_per_s": summary}
    if "endpoint" in summary:
        out["endpoint_over_hf"] = summary["endpoint"] / summary["hf_bf16"]
    print(json.dumps({k: out[k] for k in ("median_tokens_per_s", "endpoint_over_hf") if k in out}, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
