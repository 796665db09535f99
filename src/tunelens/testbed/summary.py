"""Per-seed and per-variant summaries of testbed runs, and the reproduction checks.

Per run (variant x seed), from the trajectory the probe recorded: reliance peak, step of peak, final,
``inversion = peak - final`` (tunelens.probes.metrics.summarize_trajectory), final in-distribution
accuracy and the ID accuracy at the reliance peak. Per variant: mean and sample standard deviation over
seeds, and the difference of the means from ``vanilla``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev
from typing import Any

TABLE_KEYS = ("reliance_initial", "reliance_peak", "step_of_peak", "reliance_final", "rise", "inversion",
              "id_acc_final", "id_acc_at_peak", "closed_book_final")


def _value_at(points: Sequence[dict[str, Any]], key: str, step: int) -> float:
    return next((p["metrics"][key] for p in points if p["step"] == step and key in p["metrics"]), math.nan)


def run_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one run; the indicator variant's come from the probes *with* [IND]."""
    traj = record["trajectory"]
    prefix = "ind/" if record.get("indicator") else ""
    rel = traj["metrics"][prefix + "reliance"]
    acc = traj["metrics"][prefix + "id_acc"]
    points = traj["points"]
    out = {"variant": record["variant"], "seed": record["seed"], "reliance_initial": rel["initial"],
           "reliance_peak": rel["peak"], "step_of_peak": rel["step_of_peak"], "reliance_final": rel["final"],
           "rise": rel["peak"] - rel["initial"], "inversion": rel["inversion"], "inverted": rel["inverted"],
           "id_acc_initial": acc["initial"], "id_acc_final": acc["final"], "id_acc_at_peak": _value_at(points, prefix + "id_acc", rel["step_of_peak"]),
           "closed_book_final": traj["metrics"].get(prefix + "closed_book", {}).get("final", math.nan),
           "final_loss": record.get("final_loss"), "train_s": record.get("train_s"),
           "prepare": record.get("prepare", {})}
    if prefix:  # the same numbers without the indicator at evaluation time
        plain = traj["metrics"]["reliance"]
        out.update(reliance_final_no_ind=plain["final"], inversion_no_ind=plain["inversion"],
                   id_acc_final_no_ind=traj["metrics"]["id_acc"]["final"])
    return out


def _stats(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": mean(vals), "sd": stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean/sd over seeds of every table key, and mean differences from vanilla."""
    variants: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        variants.setdefault(r["variant"], []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for name, rs in variants.items():
        keys = TABLE_KEYS + tuple(k for k in ("reliance_final_no_ind", "inversion_no_ind", "id_acc_final_no_ind")
                                  if k in rs[0])
        table[name] = {k: _stats([r[k] for r in rs]) for k in keys}
        table[name]["seeds"] = sorted(r["seed"] for r in rs)
        table[name]["n_inverted"] = sum(bool(r["inverted"]) for r in rs)
    if "vanilla" in table:
        base = table["vanilla"]
        for name, row in table.items():
            row["vs_vanilla"] = {k: row[k]["mean"] - base[k]["mean"]
                                 for k in ("reliance_final", "inversion", "id_acc_final")}
    return table


def reproduction_checks(runs: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The issue's criteria, computed from the runs (nothing here is assumed)."""
    def of(v: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["variant"] == v]

    checks: dict[str, Any] = {"threshold": threshold}
    van = of("vanilla")
    if van:
        checks["vanilla_inversion_per_seed"] = [r["inversion"] for r in van]
        checks["vanilla_inverts_every_seed"] = all(r["inversion"] >= threshold for r in van)
        checks["vanilla_id_acc_rises_after_peak"] = all(r["id_acc_final"] >= r["id_acc_at_peak"] for r in van)
    ablation = of("no_cs_s")
    if ablation:
        checks["no_cs_s_inversion_per_seed"] = [r["inversion"] for r in ablation]
        checks["no_cs_s_no_inversion_every_seed"] = all(r["inversion"] < threshold for r in ablation)
    return checks


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """A markdown table: per variant, mean +- sd of the headline numbers and the change from vanilla."""
    head = ("| variant | seeds | reliance initial | reliance peak | step of peak | final reliance | inversion | "
            "final ID acc | d final reliance | d inversion | d ID acc |")
    lines = [head, "|" + "---|" * 11]
    def ms(row: dict[str, Any], k: str, fmt: str = ".3f") -> str:
        return f"{row[k]['mean']:{fmt}} ± {row[k]['sd']:{fmt}}"

    for name, row in table.items():
        d = row.get("vs_vanilla", {})
        lines.append(f"| {name} | {len(row['seeds'])} | {ms(row, 'reliance_initial')} | {ms(row, 'reliance_peak')} | "
                     f"{ms(row, 'step_of_peak', '.0f')} | "
                     f"{ms(row, 'reliance_final')} | {ms(row, 'inversion')} | {ms(row, 'id_acc_final')} | "
                     f"{d.get('reliance_final', math.nan):+.3f} | {d.get('inversion', math.nan):+.3f} | "
                     f"{d.get('id_acc_final', math.nan):+.3f} |")
    return "\n".join(lines)
