"""Matplotlib figures of a run directory (headless Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tunelens.train.metrics import read_metrics  # noqa: E402


def plot_trajectory(run_dir: str | Path, metrics: Sequence[str] | None = None, out: str | Path | None = None) -> Path:
    """Probe metrics (left axis) and training loss (right axis) against step; returns the PNG path."""
    run_dir = Path(run_dir)
    probes = read_metrics(run_dir, "probe")
    train = read_metrics(run_dir, "train")
    keys = list(metrics) if metrics else sorted({k for r in probes for k in r if k not in ("step", "event")})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in probes if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("probe metric")
    ax.grid(alpha=0.3)
    if train:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in train], [r["loss"] for r in train], color="grey", alpha=0.5, label="train loss")
        ax2.set_ylabel("training loss")
        ax2.legend(loc="upper right", fontsize=8)
    if keys:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{run_dir.name}: context reliance along training")
    fig.tight_layout()
    path = Path(out) if out else run_dir / "trajectory.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
