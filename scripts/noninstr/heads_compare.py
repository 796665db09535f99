"""Compare head activation patterns after non-instructional (teacher, gold) and instruction fine-tuning
(docs/noninstructional.md, "Beyond the paper").

Reads ROOT/ap-<model>-<probe>/ (written by `tunelens heads patterns`) for the base model and the fine-tuned ones,
and reports per probe set: each model's held-out response loss and AP concentration; ΔAP = AP_model − AP_base
for each fine-tuned model (relative L1, the layers holding most of |ΔAP|); and, for each pair of fine-tuned
models, the similarity of their AP and of their ΔAP (Pearson, Spearman, cosine, top-k Jaccard of the heads with
the largest |ΔAP|). As a noise reference, the split-half agreement of each model's own ΔAP (AP recomputed from
the saved per-sample scores on the even and on the odd samples) says how large a correlation the probe size
allows at all, and a bootstrap over probe samples (the same resampled samples for every model, since all are
measured on the same probe) gives a 95% interval for each pair's ΔAP Pearson correlation. AP's overall scale follows the response loss (a model that
fits the probe better has smaller gradients everywhere), so the scale-free version is reported too: ΔAP of the
patterns each divided by its sum (ΣAP/ΣAP_base is the scale change).

  python scripts/noninstr/heads_compare.py --root runs/noninstr/heads --models base teacher gold instr \
      --probes prose instr --json runs/noninstr/heads/compare.json
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from tunelens.heads import HeadPatterns
from tunelens.heads.compare import delta_summary
from tunelens.heads.stats import concentration, similarity, topk_jaccard

KS = (5, 10, 20)
BOOTSTRAP = 1000


def half_patterns(p: HeadPatterns) -> tuple[np.ndarray, np.ndarray]:
    """AP (per-sample |score| mean, the default aggregation) on the even and on the odd samples."""
    s = abs_scores(p)
    return s[0::2].mean(axis=0), s[1::2].mean(axis=0)


def abs_scores(p: HeadPatterns) -> np.ndarray:
    """|per-sample score| ``[n, L, H]``; their mean over samples is the default AP."""
    if p.per_sample is None or p.settings.get("aggregation") != "per_sample_abs" or p.settings.get("normalize"):
        raise SystemExit("resampling needs per_sample.npy, per_sample_abs aggregation and no normalisation")
    return np.abs(np.asarray(p.per_sample, dtype=np.float64))


def bootstrap_delta_pearson(base: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, seed: int = 0) -> list[float]:
    """95% percentile interval of Pearson(ΔAP_a, ΔAP_b) over ``n`` resamples of the (shared) probe samples."""
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n):
        idx = rng.integers(0, base.shape[0], base.shape[0])
        b0 = base[idx].mean(axis=0)
        da, db = (a[idx].mean(axis=0) - b0).ravel(), (b[idx].mean(axis=0) - b0).ravel()
        rs.append(float(np.corrcoef(da, db)[0, 1]))
    return [float(np.percentile(rs, 2.5)), float(np.percentile(rs, 97.5))]


def layer_shares(d: np.ndarray) -> list[float]:
    """Share of the total |ΔAP| held by each layer."""
    a = np.abs(d).sum(axis=1)
    return (a / a.sum()).tolist()


def delta_similarity(da: np.ndarray, db: np.ndarray) -> dict[str, float]:
    """Correlations of two ΔAP matrices, and the top-k Jaccard of the heads that moved most (|ΔAP|)."""
    out = {k: v for k, v in similarity(da, db, ks=()).items() if k != "mse"}
    for k in KS:
        out[f"jaccard_abs@{k}"] = topk_jaccard(np.abs(da), np.abs(db), k)
    return out


def compare_probe(root: Path, probe: str, models: list[str]) -> dict:
    pats = {m: HeadPatterns.load(root / f"ap-{m}-{probe}") for m in models}
    base, tuned = models[0], models[1:]
    res: dict = {"n_samples": pats[base].n_samples, "shape": list(pats[base].shape), "models": {}, "pairs": {}}
    halves = {m: half_patterns(p) for m, p in pats.items()}
    for m, p in pats.items():
        row = {"loss": p.mean_loss, **concentration(p)}
        if m != base:
            d = p.matrix - pats[base].matrix
            summary = delta_summary(pats[base], p)
            shares = layer_shares(d)
            row.update({"scale": float(p.matrix.sum() / pats[base].matrix.sum()),
                        "delta_relative_l1": summary["relative_l1"], "delta_mean": summary["mean"],
                        "frac_changed": summary["frac_changed"], "layer_shares": shares,
                        "top_layers": sorted(range(len(shares)), key=lambda i: -shares[i])[:3],
                        "top_increase": summary["top_increase"], "top_decrease": summary["top_decrease"]})
            dh = [halves[m][i] - halves[base][i] for i in (0, 1)]
            row["split_half_delta"] = delta_similarity(dh[0], dh[1])
        res["models"][m] = row
    for a, b in itertools.combinations(tuned, 2):
        da, db = pats[a].matrix - pats[base].matrix, pats[b].matrix - pats[base].matrix
        res["pairs"][f"{a}~{b}"] = {"ap": similarity(pats[a], pats[b], KS), "delta": delta_similarity(da, db)}
        shape = lambda m: pats[m].matrix / pats[m].matrix.sum()
        res["pairs"][f"{a}~{b}"]["delta"]["pearson_shape"] = float(np.corrcoef(
            (shape(a) - shape(base)).ravel(), (shape(b) - shape(base)).ravel())[0, 1])
        res["pairs"][f"{a}~{b}"]["delta"]["pearson_ci95"] = bootstrap_delta_pearson(
            abs_scores(pats[base]), abs_scores(pats[a]), abs_scores(pats[b]), BOOTSTRAP)
    return res


def print_markdown(probe: str, r: dict) -> None:
    print(f"\nprobe `{probe}` ({r['n_samples']} samples, {r['shape'][0]}x{r['shape'][1]} heads)\n")
    print("| model | response loss | Gini | CV | ΣAP / ΣAP_base | ΔAP rel. L1 | heads changed |"
          " top layers (share of abs ΔAP) | split-half ΔAP Pearson |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, row in r["models"].items():
        if "layer_shares" not in row:
            print(f"| {m} | {row['loss']:.3f} | {row['gini']:.3f} | {row['cv']:.3f} | – | – | – | – | – |")
            continue
        tops = ", ".join(f"{i} ({row['layer_shares'][i]:.0%})" for i in row["top_layers"])
        print(f"| {m} | {row['loss']:.3f} | {row['gini']:.3f} | {row['cv']:.3f} | {row['scale']:.3f} | "
              f"{row['delta_relative_l1']:.3f} | {row['frac_changed']:.0%} | {tops} | "
              f"{row['split_half_delta']['pearson']:.2f} |")
    print("\n| pair | AP Pearson | AP Spearman | AP Jaccard@10 | ΔAP Pearson [95% bootstrap] | ΔAP Spearman |"
          " ΔAP cosine | ΔAP Pearson, AP/ΣAP | abs ΔAP Jaccard@5 | @10 | @20 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for pair, v in r["pairs"].items():
        a, d = v["ap"], v["delta"]
        print(f"| {pair} | {a['pearson']:.3f} | {a['spearman']:.3f} | {a['jaccard@10']:.2f} | {d['pearson']:.3f} "
              f"[{d['pearson_ci95'][0]:.2f}, {d['pearson_ci95'][1]:.2f}] | {d['spearman']:.3f} | {d['cosine']:.3f} | {d['pearson_shape']:.3f} | {d['jaccard_abs@5']:.2f} | {d['jaccard_abs@10']:.2f} | "
              f"{d['jaccard_abs@20']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/noninstr/heads")
    ap.add_argument("--models", nargs="+", default=["base", "teacher", "gold", "instr"],
                    help="the first is the reference (ΔAP = AP_model − AP_first)")
    ap.add_argument("--probes", nargs="+", default=["prose", "instr"])
    ap.add_argument("--json")
    args = ap.parse_args()
    root = Path(args.root)
    results = {probe: compare_probe(root, probe, args.models) for probe in args.probes}
    for probe, r in results.items():
        print_markdown(probe, r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
