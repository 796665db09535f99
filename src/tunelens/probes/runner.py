"""``run(model, tokenizer, suites, variants)``: every suite × variant, one report.

Suite specs: ``conflicts:world_facts``, ``conflicts:capitals``, ``conflicts:PATH`` (a user file, with
``settings.fields`` as field mapping), ``memotrap[:NAME]``, ``contextqa:xquad``, ``contextqa:boolq``,
``contextqa:PATH``, ``haystack``, ``attention[:CONFLICTS_SPEC]``. With ``settings.steer``, every suite runs under
attention steering toward each prompt's user-turn content (heads resolved once, recorded in the settings).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any, Callable, Sequence

from tunelens.errors import ConfigError
from tunelens.probes.prompts import VARIANTS
from tunelens.probes.settings import ProbeReport, ProbeSettings, SuiteResult

SuiteRunner = Callable[[Any, Any, str, str, ProbeSettings], SuiteResult]
SUITES: dict[str, SuiteRunner] = {}


def register_suite(kind: str, runner: SuiteRunner) -> None:
    """Add a suite kind: ``runner(model, tokenizer, argument, variant, settings) -> SuiteResult``."""
    SUITES[kind] = runner


def parse_suites(spec: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"conflicts:world_facts,haystack"`` -> ``[("conflicts", "world_facts"), ("haystack", "")]``."""
    _register_builtin()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ConfigError("No probe suite given; e.g. --suite conflicts:world_facts,haystack.")
    out = []
    for item in items:
        kind, _, arg = item.partition(":")
        if kind not in SUITES:
            raise ConfigError(f"Unknown probe suite {kind!r} (in {item!r}); choose from {', '.join(sorted(SUITES))}.")
        out.append((kind, arg))
    return out


def parse_variants(spec: str | Sequence[str]) -> list[str]:
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [v for v in items if v not in VARIANTS]
    if bad or not items:
        raise ConfigError(f"Unknown prompt variant(s) {bad or items}; choose from {', '.join(VARIANTS)}.")
    return items


def run(model: Any, tokenizer: Any, suites: str | Sequence[str], variants: str | Sequence[str] = ("chat",),
        settings: ProbeSettings | None = None, model_name: str = "") -> ProbeReport:
    """Run every suite under every variant; returns a :class:`ProbeReport` (``.save(dir)`` writes it)."""
    _register_builtin()
    settings = settings or ProbeSettings()
    settings.validate()
    pairs, names = parse_suites(suites), parse_variants(variants)
    was_training = model.training
    model.eval()
    try:
        with _steering(model, tokenizer, settings):
            results = [SUITES[kind](model, tokenizer, arg, variant, settings) for kind, arg in pairs
                       for variant in names]
    finally:
        model.train(was_training)
    return ProbeReport(model=model_name, results=results, settings=asdict(settings))


def _steering(model: Any, tokenizer: Any, settings: ProbeSettings) -> contextlib.AbstractContextManager:
    """``settings.steer`` set: steer every prompt toward its user-turn content (:mod:`tunelens.steer.probing`)."""
    if not settings.steer:
        return contextlib.nullcontext()
    from tunelens.steer.probing import steer_probes

    return steer_probes(model, tokenizer, settings)


def _register_builtin() -> None:
    if SUITES.get("conflicts"):
        return
    from tunelens.probes.suites import register_all

    register_all()
