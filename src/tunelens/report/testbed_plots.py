"""Figures of a testbed run directory: per variant, reliance / ID accuracy / training loss against step."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tunelens.train.metrics import read_metrics


def _runs(out: Path, variants: Sequence[str] | None, seeds: Sequence[int] | None) -> dict[str, list[tuple[int, dict]]]:
    by_variant: dict[str, list[tuple[int, dict]]] = {}
    for path in sorted(out.glob("runs/*/seed-*/result.json")):
        rec = json.loads(path.read_text())
        if (variants is not None and rec["variant"] not in variants) or (seeds is not None and rec["seed"] not in seeds):
            continue
        rec["_dir"] = path.parent
        by_variant.setdefault(rec["variant"], []).append((rec["seed"], rec))
    return by_variant


def _series(rec: dict, key: str) -> tuple[list[int], list[float]]:
    pts = [(p["step"], p["metrics"][key]) for p in rec["trajectory"]["points"] if key in p["metrics"]]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_testbed(out: str | Path, variants: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Path]:
    """Write ``plots/variants.png`` (a row per variant: reliance, ID accuracy, loss; a line per seed) and
    ``plots/reliance_by_variant.png`` (seed-mean reliance of every variant); returns the paths."""
    out = Path(out)
    runs = _runs(out, variants, seeds)
    if not runs:
        return []
    if variants is not None:
        runs = {v: runs[v] for v in variants if v in runs}
    (out / "plots").mkdir(exist_ok=True)
    names = list(runs)
    fig, axes = plt.subplots(len(names), 3, figsize=(13, 2.8 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        for seed, rec in runs[name]:
            prefix = "ind/" if rec.get("indicator") else ""
            row[0].plot(*_series(rec, prefix + "reliance"), marker=".", label=f"seed {seed}")
            if prefix:
                row[0].plot(*_series(rec, "reliance"), ls=":", color="grey", alpha=0.7)
            row[1].plot(*_series(rec, prefix + "id_acc"), marker=".", label=f"seed {seed}")
            train = read_metrics(rec["_dir"] / "sft", "train")
            row[2].plot([r["step"] for r in train], [r["loss"] for r in train], alpha=0.7, label=f"seed {seed}")
        row[0].set_ylabel(name)
        row[0].set_ylim(-0.02, 1.02)
        row[1].set_ylim(-0.02, 1.02)
        for ax in row:
            ax.grid(alpha=0.3)
    axes[0][0].set_title("context reliance (counterfactual, P(ctx > mem))")
    axes[0][1].set_title("in-distribution accuracy")
    axes[0][2].set_title("training loss")
    axes[0][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("fine-tuning step")
    fig.tight_layout()
    p1 = out / "plots" / "variants.png"
    fig.savefig(p1, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in names:
        curves = []
        for _, rec in runs[name]:
            prefix = "ind/" if rec.get("indicator") else ""
            curves.append(_series(rec, prefix + "reliance"))
        steps = curves[0][0]
        same = [c[1] for c in curves if c[0] == steps]
        ax.plot(steps, np.mean(same, axis=0), marker=".", label=f"{name} (n={len(same)})")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("context reliance (seed mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = out / "plots" / "reliance_by_variant.png"
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return [p1, p2]
