"""``tunelens heads``: head activation patterns (patterns, compare, ablate, compose)."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunelens.cli.data_cmd import parse_fields
from tunelens.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Attention-head activation patterns (Zhao et al. 2024): compute, "
                                             "compare, ablate, compose.")


def _examples(data: Path, limit: int | None, field: list[str], system: str | None) -> list:
    from tunelens.data import load_examples

    return load_examples(data, fields=parse_fields(field) or None, system=system, limit=limit).examples


def _named_dirs(items: list[str], option: str) -> dict[str, Path]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option} {item!r}: expected NAME=DIR.")
        name, path = item.split("=", 1)
        out[name.strip()] = Path(path.strip())
    return out


@app.command("patterns")
def patterns(
    model: str = typer.Option(..., "--model", "-m", help="Preset, HF directory/id or .gguf file."),
    data: Path = typer.Option(..., "--data", "-d", help="Data file (any format `tunelens data` reads)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for patterns.json, per_sample.npy, heatmap.png."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="First N examples."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_length: int = typer.Option(512, "--max-length"),
    aggregation: str = typer.Option("per_sample_abs", "--aggregation", help="per_sample_abs | batch_sum_abs."),
    backend: str = typer.Option("gate", "--backend", help="gate (one pass, any kernel) | eager (reference)."),
    per_token: bool = typer.Option(False, "--per-token", help="Sum token losses and divide by tokens."),
    normalize: str | None = typer.Option(None, "--normalize", help="layer_l2 | minmax | layer_l2+minmax."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (fast on AMX CPUs, noisier)."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights' dtype."),
    field: list[str] = typer.Option([], "--field", help="Field mapping for the data file, canonical=name."),
    system: str | None = typer.Option(None, "--system", help="System prompt added to every example."),
    top: int = typer.Option(10, "--top", help="How many top heads to print."),
) -> None:
    """Compute the L×H activation pattern on the response loss of --data; writes DIR/patterns.json + heatmap."""
    from tunelens.heads import compute_patterns
    from tunelens.heads.stats import concentration
    from tunelens.models import load_model
    from tunelens.report.head_plots import plot_head_heatmap

    examples = _examples(data, limit, field, system)
    m, tok = load_model(model, dtype=dtype)
    pat = compute_patterns(m, tok, examples, aggregation=aggregation, backend=backend, batch_size=batch_size,
                           bf16=bf16, max_length=max_length, per_token=per_token, normalize=normalize,
                           model_name=model)
    pat.settings["data"] = str(data)
    path = pat.save(out)
    png = plot_head_heatmap(pat, out / "heatmap.png", title=f"{model}: AP on {data.name} (n={pat.n_samples})")
    con = Console()
    conc = concentration(pat)
    con.print(f"{pat.n_layers} layers x {pat.n_heads} heads, {pat.n_samples} samples, {pat.n_tokens} response "
              f"tokens, mean loss {pat.mean_loss:.4f}")
    con.print("gini {gini:.3f}  cv {cv:.3f}  entropy_norm {entropy_norm:.3f}".format(**conc))
    k = min(top, pat.matrix.size)
    con.print("top heads (layer, head, AP): " + ", ".join(f"({l},{h},{pat.matrix[l, h]:.3g})"
                                                        for l, h in pat.top_k(k)))
    con.print(f"patterns: {path}\nheatmap: {png}")


@app.command("compare")
def compare(
    dir_a: Path = typer.Argument(..., help="Patterns directory A (e.g. before SFT)."),
    dir_b: Path = typer.Argument(..., help="Patterns directory B (e.g. after SFT); ΔAP = B − A."),
    ks: str = typer.Option("5,10,20", "--k", help="Comma-separated top-k sizes for Jaccard."),
    threshold: float | None = typer.Option(None, "--threshold", help="|ΔAP| above which a head changed "
                                              "(default 10% of A's mean)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the comparison as JSON here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a ΔAP heatmap PNG here."),
) -> None:
    """Correlations, cosine, MSE, top-k Jaccard, concentration of each, and a ΔAP summary."""
    from tunelens.heads import HeadPatterns
    from tunelens.heads.compare import compare_patterns, delta

    a, b = HeadPatterns.load(dir_a), HeadPatterns.load(dir_b)
    try:
        k_list = tuple(int(x) for x in ks.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--k {ks!r}: expected comma-separated integers.") from None
    res = compare_patterns(a, b, ks=k_list, threshold=threshold)
    res["a"]["dir"], res["b"]["dir"] = str(dir_a), str(dir_b)
    table = Table("figure", "value")
    for key, v in res["similarity"].items():
        table.add_row(key, f"{v:.4g}")
    for side in ("a", "b"):
        for key in ("gini", "cv", "entropy_norm"):
            table.add_row(f"{key} ({side.upper()})", f"{res[side][key]:.4f}")
    d = res["delta"]
    for key in ("mean_abs", "max_abs", "mean", "relative_l1", "frac_changed"):
        table.add_row(f"ΔAP {key}", f"{d[key]:.4g}")
    con = Console()
    con.print(table)
    con.print("largest increases (layer, head, Δ): " + ", ".join(f"({l},{h},{v:+.3g})" for l, h, v in d["top_increase"]))
    con.print("largest decreases (layer, head, Δ): " + ", ".join(f"({l},{h},{v:+.3g})" for l, h, v in d["top_decrease"]))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2), encoding="utf-8")
        con.print(f"json: {json_out}")
    if plot:
        from tunelens.report.head_plots import plot_head_heatmap

        con.print(f"plot: {plot_head_heatmap(delta(a, b), plot, title='ΔAP (B − A)', diverging=True, label='ΔAP')}")


@app.command("ablate")
def ablate(
    model: str = typer.Option(..., "--model", "-m"),
    data: Path = typer.Option(..., "--data", "-d", help="Data whose response loss is measured."),
    patterns_dir: Path = typer.Option(..., "--patterns", "-p", help="Patterns directory (its top-k heads)."),
    k: int = typer.Option(5, "--k", help="Number of heads to ablate."),
    mode: str = typer.Option("zero", "--mode", help="zero | mean."),
    n_random: int = typer.Option(5, "--n-random", help="Random k-head draws to compare with."),
    seed: int = typer.Option(0, "--seed"),
    limit: int | None = typer.Option(None, "--limit", "-n"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_length: int = typer.Option(512, "--max-length"),
    bf16: bool = typer.Option(False, "--bf16"),
    dtype: str = typer.Option("float32", "--dtype"),
    field: list[str] = typer.Option([], "--field"),
    probe_suite: str | None = typer.Option(None, "--probe-suite", help="Also run these probe suites per "
                                              "condition (e.g. conflicts:world_facts)."),
    probe_variants: str = typer.Option("chat", "--probe-variants"),
    probe_limit: int | None = typer.Option(None, "--probe-limit"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write ablation.json here (a file path)."),
) -> None:
    """Causal check: ablate the top-k heads by AP vs k random heads; report Δ response loss (and probes)."""
    from tunelens.heads import HeadPatterns
    from tunelens.heads.causal import ablation_check, probe_metrics
    from tunelens.models import load_model

    pat = HeadPatterns.load(patterns_dir)
    examples = _examples(data, limit, field, None)
    m, tok = load_model(model, dtype=dtype)
    probe = None
    if probe_suite:
        from tunelens.probes.settings import ProbeSettings

        probe = probe_metrics(probe_suite, probe_variants, ProbeSettings(limit=probe_limit, bf16=bf16))
    rep = ablation_check(m, tok, examples, pat, k, mode=mode, n_random=n_random, seed=seed, batch_size=batch_size,
                         max_length=max_length, bf16=bf16, probe=probe)
    table = Table("condition", "heads", "loss", "Δloss", "mean |Δ sample loss|", *sorted(rep.top.probe))
    for c in [rep.baseline, rep.top, *rep.random]:
        heads = " ".join(f"{l}.{h}" for l, h in c.heads) or "-"
        table.add_row(c.name, heads, f"{c.loss:.4f}", f"{c.delta_loss:+.4f}", f"{c.abs_delta_loss:.4f}",
                      *[f"{c.probe[key]:.3f}" for key in sorted(rep.top.probe)])
    con = Console(width=max(120, Console().width))
    con.print(table)
    s = rep.summary()
    con.print(f"top-{k} |Δloss| {s['top_abs_delta_loss']:.4f} vs random {s['random_abs_delta_loss_mean']:.4f} ± "
              f"{s['random_abs_delta_loss_std']:.4f}; top beats {s['top_beats_random_frac']:.0%} of random draws")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep.to_json(), indent=2), encoding="utf-8")
        con.print(f"json: {out}")


@app.command("compose")
def compose(
    base: Path = typer.Option(..., "--base", help="Patterns of the model before fine-tuning (ΔAP = X − base)."),
    target: Path = typer.Option(..., "--target", help="Patterns after fine-tuning on the complex task."),
    basic: list[str] = typer.Option(..., "--basic", help="NAME=DIR: patterns after fine-tuning on a basic task "
                                    "(repeat)."),
    control: list[str] = typer.Option([], "--control", help="NAME=DIR: an unrelated task, fitted alone as a control."),
    method: str = typer.Option("nnls", "--method", help="nnls | lstsq."),
    intercept: bool = typer.Option(False, "--intercept"),
    permutations: int = typer.Option(200, "--permutations", help="Shuffled-heads null draws."),
    seed: int = typer.Option(0, "--seed"),
    mixture_total: int | None = typer.Option(None, "--mixture-total", help="Build a mixture of this many examples."),
    mixture_data: list[str] = typer.Option([], "--mixture-data", help="NAME=FILE: data of each basic task."),
    mixture_out: Path | None = typer.Option(None, "--mixture-out", help="JSONL for the mixture (messages)."),
    json_out: Path | None = typer.Option(None, "--json"),
) -> None:
    """Regress the complex task's ΔAP on the basic tasks' ΔAPs (R², adjusted R², shuffled-heads null)."""
    from tunelens.heads import HeadPatterns
    from tunelens.heads.compare import delta
    from tunelens.heads.composition import build_mixture, fit_composition, null_control

    b0 = HeadPatterns.load(base)
    d_target = delta(b0, HeadPatterns.load(target))
    basics = {name: delta(b0, HeadPatterns.load(p)) for name, p in _named_dirs(basic, "--basic").items()}
    fit = fit_composition(d_target, basics, method, intercept)
    null = null_control(d_target, basics, method, intercept, permutations, seed)
    res = {"fit": fit.to_json(), "null_shuffled_heads": null.to_json(), "controls": {}}
    con = Console()
    con.print(f"{method}: " + ", ".join(f"{k}={v:.4f}" for k, v in fit.coefficients.items())
              + f"  R²={fit.r2:.4f}  adj R²={fit.adj_r2:.4f}  (n={fit.n} heads)")
    con.print(f"null (shuffled heads, {permutations}x): mean R² {null.null_mean:.4f}, 95% {null.null_q95:.4f}, "
              f"p={null.p_value:.4f}")
    for name, p in _named_dirs(control, "--control").items():
        c = fit_composition(d_target, {name: delta(b0, HeadPatterns.load(p))}, method, intercept)
        res["controls"][name] = c.to_json()
        con.print(f"control {name}: R²={c.r2:.4f} adj R²={c.adj_r2:.4f}")
    if mixture_total is not None:
        from tunelens.data import load_examples

        files = _named_dirs(mixture_data, "--mixture-data")
        datasets = {name: load_examples(p).examples for name, p in files.items()}
        mix = build_mixture(fit.coefficients, datasets, mixture_total, seed=seed)
        res["mixture"] = {"counts": mix.counts, "total": mixture_total, "seed": seed}
        con.print("mixture: " + ", ".join(f"{k}={v}" for k, v in mix.counts.items()))
        if mixture_out:
            mixture_out.parent.mkdir(parents=True, exist_ok=True)
            with open(mixture_out, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"messages": ex.messages, "task": src, "source": ex.source},
                                        ensure_ascii=False) + "\n" for ex, src in zip(mix.items, mix.sources))
            con.print(f"mixture: {mixture_out}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2), encoding="utf-8")
        con.print(f"json: {json_out}")
