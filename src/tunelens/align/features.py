"""Features φ(x) of sampled continuations: the building blocks of pointwise, distributional and reward targets.

A feature maps a :class:`~tunelens.align.samples.Samples` batch to one float per sample. Built-in kinds
(``kind`` in a config dict): ``contains`` (a word or phrase), ``regex``, ``classifier`` (a local
transformers text-classification pipeline: probability of ``label``, or 0/1 above ``threshold``),
``context_answer`` (the output contains the context's answer: the conflicts probe's "context" outcome),
``length`` (number of tokens) and ``python`` (``module:function`` taking a list of texts, or texts and
contexts). Every call is checked: an exception, a wrong number of values or a NaN raises
:class:`TargetError` naming the feature.
"""
from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from tunelens.align.samples import Samples
from tunelens.errors import ConfigError, TunelensError


class TargetError(TunelensError):
    """A target or one of its scorers cannot be evaluated (raised, NaN, infeasible, zero acceptance)."""


@dataclass
class Feature:
    """A named, checked function from samples to floats."""

    name: str
    fn: Callable[[Samples], Sequence[float]]

    def __call__(self, samples: Samples) -> list[float]:
        try:
            values = list(self.fn(samples))
        except TunelensError:
            raise
        except Exception as exc:  # a user scorer failing must stop training, never yield a silent zero
            raise TargetError(f"scorer '{self.name}' raised {type(exc).__name__}: {exc}") from exc
        if len(values) != len(samples):
            raise TargetError(f"scorer '{self.name}' returned {len(values)} values for {len(samples)} samples.")
        out = []
        for i, v in enumerate(values):
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise TargetError(f"scorer '{self.name}' returned a non-number {v!r} for sample {i}.") from None
            if math.isnan(f):
                raise TargetError(f"scorer '{self.name}' returned NaN for sample {i} (text {samples.texts[i][:80]!r}).")
            out.append(f)
        return out


def _contains(word: str, case_sensitive: bool = False, whole_word: bool = True) -> Callable[[Samples], list[float]]:
    if not word:
        raise ConfigError("feature 'contains' needs a non-empty 'word'.")
    flags = 0 if case_sensitive else re.IGNORECASE
    pat = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)" if whole_word else re.escape(word), flags)
    return lambda s: [float(pat.search(t) is not None) for t in s.texts]


def _regex(pattern: str, case_sensitive: bool = True) -> Callable[[Samples], list[float]]:
    try:
        pat = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"feature 'regex': bad pattern {pattern!r}: {exc}") from exc
    return lambda s: [float(pat.search(t) is not None) for t in s.texts]


def _context_answer(whole_words: bool = False) -> Callable[[Samples], list[float]]:
    from tunelens.probes.metrics import contains

    def fn(s: Samples) -> list[float]:
        out = []
        for ctx, text in zip(s.contexts, s.texts):
            if "answer" not in ctx.meta:
                raise TargetError(f"feature 'context_answer' needs contexts with an answer (context {ctx.index} has "
                                  "none): use contexts.source=conflicts.")
            out.append(float(contains(text, ctx.meta["answer"], whole_words=whole_words)))
        return out
    return fn


def _length() -> Callable[[Samples], list[float]]:
    return lambda s: [float(len(t)) for t in s.token_ids]


def _classifier(model: str, label: str, threshold: float | None = None, batch_size: int = 32,
                device: str = "cpu") -> Callable[[Samples], list[float]]:
    from transformers import pipeline

    try:
        clf = pipeline("text-classification", model=model, device=device, top_k=None)
    except Exception as exc:
        raise ConfigError(f"feature 'classifier': could not load the local model {model!r}: {exc}") from exc

    def fn(s: Samples) -> list[float]:
        results = clf(list(s.texts), batch_size=batch_size, truncation=True)
        probs = []
        for row in results:
            scores = {r["label"]: r["score"] for r in row}
            if label not in scores:
                raise TargetError(f"classifier {model!r} has no label {label!r}; its labels are {sorted(scores)}.")
            probs.append(scores[label])
        return [float(p >= threshold) for p in probs] if threshold is not None else probs
    return fn


def _python(function: str | Callable) -> Callable[[Samples], list[float]]:
    if callable(function):
        fn = function
    else:
        mod, _, name = str(function).partition(":")
        if not name:
            raise ConfigError(f"feature 'python': function must be 'module:name', got {function!r}.")
        try:
            fn = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"feature 'python': cannot import {function!r}: {exc}") from exc
    n_params = len(inspect.signature(fn).parameters)
    if n_params >= 2:
        return lambda s: fn(list(s.texts), list(s.contexts))
    return lambda s: fn(list(s.texts))


KINDS: dict[str, Callable[..., Callable[[Samples], Sequence[float]]]] = {
    "contains": _contains, "regex": _regex, "context_answer": _context_answer, "length": _length,
    "classifier": _classifier, "python": _python,
}


def build_feature(spec: Mapping[str, Any] | Feature | Callable, where: str = "feature") -> Feature:
    """A :class:`Feature` from a config dict ``{kind: ..., **arguments}``, a Feature, or a callable on texts."""
    if isinstance(spec, Feature):
        return spec
    if callable(spec):
        return Feature(getattr(spec, "__name__", "python"), _python(spec))
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'kind' (one of {', '.join(KINDS)}), got {spec!r}.")
    args = {k: v for k, v in spec.items() if k not in ("kind", "name")}
    kind = spec["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown scorer kind {kind!r}; choose one of {', '.join(KINDS)}.")
    try:
        fn = KINDS[kind](**args)
    except TypeError as exc:
        raise ConfigError(f"{where} ({kind}): bad arguments {sorted(args)}: {exc}") from exc
    default = f"{kind}:{args.get('word') or args.get('pattern') or args.get('label') or args.get('function') or ''}"
    return Feature(str(spec.get("name") or default.rstrip(":")), fn)
