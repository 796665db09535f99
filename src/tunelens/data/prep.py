"""Config-driven data preparation: a list of ``curate`` / ``augment`` / ``indicate`` steps run in order.

Used by SFT (``data.prep`` in the recipe) and usable on its own. Each step is a mapping with a ``step`` key and
that step's options (unknown keys are errors naming the step)::

    data:
      prep:
        - {step: curate, drop: 0.25}                       # score with the model being fine-tuned
        - {step: augment, fraction: 0.1, conflicts: world_facts, mode: add}
        - {step: indicate, beta: 0.6, layer: 4, token: "[IND]"}

``curate`` and ``indicate`` score with the model being fine-tuned (before training) unless ``model`` names
another spec (loaded once per step). When an ``indicate`` step ran, SFT adds its token to the model being
fine-tuned (:func:`tunelens.data.indicator.add_indicator_token`) so the new row is trained (full fine-tuning;
with LoRA/QK-only the row keeps its initial value).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelens.data.context import ContextSpec
from tunelens.data.schemas import DEFAULT_CONTEXT_TEMPLATE, Example
from tunelens.errors import ConfigError

__all__ = ["PREP_STEPS", "PrepResult", "run_prep", "validate_prep"]

#: step -> {option: default}
PREP_STEPS: dict[str, dict[str, Any]] = {
    "curate": {"drop": 0.25, "model": None, "batch_size": 8, "bf16": False, "missing": "error",
               "context_key": "context", "question_key": "question"},
    "augment": {"fraction": 0.1, "conflicts": None, "mode": "add", "seed": None, "type_key": "answer_type",
                "context_template": DEFAULT_CONTEXT_TEMPLATE, "conflict_fields": None},
    "indicate": {"beta": 0.6, "model": None, "layer": None, "token": "[IND]", "batch_size": 4, "bf16": False,
                 "init_from": None},
}


@dataclass
class PrepResult:
    """The prepared examples, one JSON-ready report per step, and the indicator token if a step added one."""

    examples: list[Example]
    reports: list[dict[str, Any]] = field(default_factory=list)
    indicator_token: str | None = None
    indicator_init_from: str | None = None


def validate_prep(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Steps with their defaults filled in; :class:`ConfigError` naming ``data.prep[i]`` on a bad step."""
    out = []
    for i, raw in enumerate(steps):
        where = f"data.prep[{i}]"
        if not isinstance(raw, Mapping) or "step" not in raw:
            raise ConfigError(f"{where}: expected a mapping with a 'step' key (one of {sorted(PREP_STEPS)})")
        name = raw["step"]
        if name not in PREP_STEPS:
            raise ConfigError(f"{where}.step: {name!r} is not one of {sorted(PREP_STEPS)}")
        unknown = sorted(set(raw) - set(PREP_STEPS[name]) - {"step"})
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {unknown} for step {name!r}; "
                              f"known: {sorted(PREP_STEPS[name])}")
        out.append({"step": name, **PREP_STEPS[name], **{k: v for k, v in raw.items() if k != "step"}})
    return out


def _scorer(opts: Mapping[str, Any], model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if opts["model"] is None:
        if model is None:
            raise ConfigError(f"prep step {opts['step']!r} needs a model: give 'model: SPEC' or run it from SFT")
        return model, tokenizer
    from tunelens.models import load_model

    return load_model(str(opts["model"]))


def run_prep(examples: Sequence[Example], steps: Sequence[Mapping[str, Any]], model: Any = None,
             tokenizer: Any = None, *, seed: int = 0, chat_template: str | None = None,
             progress: bool = False) -> PrepResult:
    """Run ``steps`` (see the module docstring) on ``examples`` in order."""
    result = PrepResult(list(examples))
    for opts in validate_prep(steps):
        name = opts["step"]
        if name == "curate":
            from tunelens.data.curate import curate_by_parametric_perplexity

            m, tok = _scorer(opts, model, tokenizer)
            spec = ContextSpec(opts["context_key"], opts["question_key"], missing=opts["missing"])
            rep = curate_by_parametric_perplexity(result.examples, m, tok, float(opts["drop"]),
                                                  batch_size=int(opts["batch_size"]), bf16=bool(opts["bf16"]),
                                                  spec=spec, chat_template=chat_template, progress=progress)
            result.examples, report = rep.kept, rep.to_dict()
            report.pop("scores")
        elif name == "augment":
            from tunelens.data.augment import augment_counterfactual

            rep = augment_counterfactual(result.examples, float(opts["fraction"]), conflicts=opts["conflicts"],
                                         seed=seed if opts["seed"] is None else int(opts["seed"]),
                                         mode=opts["mode"], context_template=opts["context_template"],
                                         type_key=opts["type_key"],
                                         conflict_fields=dict(opts["conflict_fields"] or {}) or None)
            result.examples, report = rep.examples, rep.to_dict()
        else:
            from tunelens.data.indicator import indicate

            m, tok = _scorer(opts, model, tokenizer)
            rep = indicate(result.examples, m, tok, float(opts["beta"]), token=opts["token"], layer=opts["layer"],
                           batch_size=int(opts["batch_size"]), bf16=bool(opts["bf16"]),
                           chat_template=chat_template, progress=progress)
            result.examples, report = rep.examples, rep.to_dict()
            report.pop("scores")
            result.indicator_token, result.indicator_init_from = opts["token"], opts["init_from"]
        result.reports.append(report)
    return result
