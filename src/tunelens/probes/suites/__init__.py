"""Built-in probe suites; each module adds a runner to ``tunelens.probes.runner.SUITES``."""
from __future__ import annotations

from typing import Any

from tunelens.probes.items import load_conflicts, load_memotrap
from tunelens.probes.settings import ProbeSettings, SuiteResult
from tunelens.probes.suites.conflicts import run_conflicts


def _conflicts(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    spec = arg or "world_facts"
    items = load_conflicts(spec, fields=s.fields or None, limit=s.limit)
    return run_conflicts(model, tok, items, variant, s, f"conflicts:{spec}")


def _memotrap(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    spec = arg or "memotrap"
    items = [it.to_conflict() for it in load_memotrap(spec, fields=s.fields or None, limit=s.limit)]
    return run_conflicts(model, tok, items, variant, s, f"memotrap:{spec}")


def _haystack(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    from tunelens.probes.suites.haystack import run_haystack

    return run_haystack(model, tok, arg, variant, s)


def _contextqa(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    from tunelens.probes.suites.contextqa import run_contextqa

    return run_contextqa(model, tok, arg, variant, s)


def _attention(model: Any, tok: Any, arg: str, variant: str, s: ProbeSettings) -> SuiteResult:
    from tunelens.probes.suites.attention import run_attention

    return run_attention(model, tok, arg, variant, s)


def register_all() -> None:
    from tunelens.probes.runner import register_suite

    register_suite("conflicts", _conflicts)
    register_suite("memotrap", _memotrap)
    register_suite("haystack", _haystack)
    register_suite("contextqa", _contextqa)
    register_suite("attention", _attention)
