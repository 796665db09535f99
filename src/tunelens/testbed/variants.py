"""Fine-tuning variants: what each changes in the data, the starting model or the trained parameters.

* ``vanilla``        the configured mixture;
* ``no_cs_s``        the mixture without its C+S and S kinds (the rest renormalised): the causal test;
* ``curate``         drop the lowest-``k`` share by no-context target perplexity under the pretrained model
                     (:func:`tunelens.data.curate.curate_by_parametric_perplexity`);
* ``counterfactual`` add a share of counterfactual-context examples (:func:`tunelens.data.augment.augment_counterfactual`),
                     from swapped contexts of the *train* people's facts (or by answer substitution);
* ``qk``             update only the query/key projections;
* ``indicator``      append ``[IND]`` to examples whose context-dependency score under the pretrained model
                     exceeds ``beta`` (:func:`tunelens.data.indicator.indicate`), add the token to the model;
                     probes run with and without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelens.data.schemas import Example
from tunelens.testbed.config import TestbedConfig
from tunelens.testbed.mixtures import build_mixture, drop_kinds, kind_counts
from tunelens.testbed.world import World

CONTEXT_TEMPLATE = "Context: {context}\nQuestion: {question}"  # the mixture's (and the probe's) user turn
# The pretrained model has never seen the chat template: curation scores "question answer" as its corpus writes it.
RAW_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"


@dataclass
class PreparedVariant:
    examples: list[Example]
    model_spec: str
    finetune: str = "full"
    indicator: str | None = None  # probes also run with this suffix
    lr: float | None = None  # overrides finetune.lr
    report: dict[str, Any] = field(default_factory=dict)


def _load(model_dir: str | Path) -> tuple[Any, Any]:
    from tunelens.models import load_model

    return load_model(str(model_dir))


def prepare_variant(name: str, cfg: TestbedConfig, world: World, seed: int, model_dir: Path, work: Path,
                    counterfactual_train: Path) -> PreparedVariant:
    """Build the training examples (and starting model) of variant ``name`` for ``seed``."""
    m = cfg.mitigations
    if name == "no_cs_s":
        examples = build_mixture(world, drop_kinds(cfg.mixture, ["C+S", "S"]), seed)
        return PreparedVariant(examples, str(model_dir), report={"kinds": kind_counts(examples)})
    examples = build_mixture(world, cfg.mixture, seed)
    if name == "vanilla":
        return PreparedVariant(examples, str(model_dir), report={"kinds": kind_counts(examples)})
    if name == "qk":
        return PreparedVariant(examples, str(model_dir), "qk", lr=m.qk_lr,
                               report={"kinds": kind_counts(examples), "lr": m.qk_lr or cfg.finetune.lr})
    if name == "curate":
        from tunelens.data.context import ContextSpec
        from tunelens.data.curate import curate_by_parametric_perplexity

        model, tok = _load(model_dir)
        rep = curate_by_parametric_perplexity(examples, model, tok, m.curate_drop_fraction, batch_size=64, bf16=True,
                                              spec=ContextSpec(missing="as_is"), progress=False,
                                              chat_template=RAW_TEMPLATE if m.curate_format == "raw" else None)
        return PreparedVariant(rep.kept, str(model_dir), report={
            "kinds": kind_counts(rep.kept), "dropped_kinds": kind_counts(rep.dropped),
            "drop_fraction": m.curate_drop_fraction, "n_dropped": len(rep.dropped), "format": m.curate_format})
    if name == "counterfactual":
        from tunelens.data.augment import augment_counterfactual

        source = counterfactual_train if m.counterfactual_source == "conflicts" else None
        rep = augment_counterfactual(examples, m.counterfactual_fraction, conflicts=source, seed=seed,
                                     context_template=CONTEXT_TEMPLATE)
        for ex in rep.added:
            ex.meta["kind"] = "counterfactual"
        return PreparedVariant(rep.examples, str(model_dir), report={
            "kinds": kind_counts(rep.examples), "n_added": len(rep.added), "fraction": m.counterfactual_fraction,
            "source": m.counterfactual_source})
    if name == "indicator":
        from tunelens.data.indicator import add_indicator_token, indicate
        from tunelens.models import save_model

        model, tok = _load(model_dir)
        rep = indicate(examples, model, tok, m.indicator_beta, token=m.indicator_token, layer=m.indicator_layer,
                       batch_size=64, bf16=True, progress=False)
        flagged = [ex for ex in rep.examples if ex.meta.get("indicator")]
        add_indicator_token(model, tok, m.indicator_token)
        seed_dir = save_model(model, tok, work / "start_model")
        return PreparedVariant(rep.examples, str(seed_dir), indicator=m.indicator_token, report={
            "kinds": kind_counts(rep.examples), "flagged_share": len(flagged) / len(rep.examples),
            "flagged_kinds": kind_counts(flagged), "beta": m.indicator_beta, "layer": rep.layer})
    raise ValueError(f"unknown variant {name!r}")
