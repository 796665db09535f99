"""Figures of a probe report: headline metrics per suite × variant, and per-suite figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HEADLINE = ("ctx_rate", "param_rate", "neither_rate", "ctx_pref_rate", "ctx_prob_mean", "closed_book_param_rate",
            "recall", "contain_acc", "user_mass", "user_mass_renorm", "template_mass")


def plot_probe_report(report: Any, out: str | Path) -> list[Path]:
    """Write ``metrics.png`` (grouped bars) and suite figures (haystack/attention heatmaps); return paths."""
    out = Path(out)
    paths = [_bars(report, out / "metrics.png")]
    for r in report.results:
        kind = r.suite.split(":")[0]
        name = f"{r.suite}__{r.variant}".replace(":", "_").replace("/", "_")
        try:
            if kind == "haystack":
                from tunelens.probes.suites.haystack import haystack_heatmap

                paths.append(haystack_heatmap(r, out / f"{name}.png"))
            elif kind == "attention":
                from tunelens.probes.suites.attention import attention_heatmap

                paths.append(attention_heatmap(r, out / f"{name}.png"))
        except ImportError:  # a suite without its own figure
            continue
    return [Path(p) for p in paths if p]


def _bars(report: Any, path: Path) -> Path:
    rows = [(f"{r.suite}\n{r.variant}", {k: v for k, v in r.metrics.items() if k in HEADLINE}) for r in report.results]
    keys = [k for k in HEADLINE if any(k in m for _, m in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        xs = [i + j * width for i, (_, m) in enumerate(rows) if key in m]
        ys = [m[key] for _, m in rows if key in m]
        ax.bar(xs, ys, width=width, label=key)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([label for label, _ in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"probes: {report.model}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
