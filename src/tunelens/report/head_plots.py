"""Heatmaps of attention-head patterns (layers × heads)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_head_heatmap"]


def plot_head_heatmap(matrix: Any, out: str | Path, title: str = "head activation pattern", diverging: bool = False,
                      label: str = "AP") -> Path:
    """Save an L×H heatmap (layer on the y axis, head on the x axis) to ``out``; ``diverging`` centres the colour
    scale at 0 (for ΔAP). Returns the PNG path."""
    m = np.asarray(getattr(matrix, "matrix", matrix), dtype=np.float64)
    layers, heads = m.shape
    fig, ax = plt.subplots(figsize=(min(max(5.5, 2 + 0.45 * heads), 14), min(max(3.0, 1.5 + 0.3 * layers), 12)))
    if diverging:
        lim = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    else:
        im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads)) if heads <= 32 else None
    ax.set_yticks(range(layers)) if layers <= 48 else None
    ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
