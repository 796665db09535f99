"""The checker registry: instruction id -> checker function, with its keyword arguments validated.

A checker takes the response and the instruction's keyword arguments and returns whether the response follows
the instruction. Checkers register themselves with :func:`checker`; :func:`check` looks one up (an unknown id is
a :class:`~tunelens.errors.ConfigError` listing the known ones) and validates the arguments first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tunelens.errors import ConfigError, DataError

RELATIONS = ("less than", "at least")


@dataclass(frozen=True)
class Checker:
    instruction_id: str
    fn: Callable[..., bool]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


CHECKERS: dict[str, Checker] = {}


def checker(instruction_id: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()):
    """Register ``fn(response, **kwargs) -> bool`` as the checker of ``instruction_id``."""
    def wrap(fn: Callable[..., bool]) -> Callable[..., bool]:
        if instruction_id in CHECKERS:
            raise ValueError(f"duplicate IFEval checker {instruction_id!r}")
        CHECKERS[instruction_id] = Checker(instruction_id, fn, required, optional)
        return fn
    return wrap


def get_checker(instruction_id: str) -> Checker:
    try:
        return CHECKERS[instruction_id]
    except KeyError:
        raise ConfigError(f"Unknown IFEval instruction id {instruction_id!r}; known ids: "
                          f"{', '.join(sorted(CHECKERS))}.") from None


def clean_kwargs(instruction_id: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The checker's arguments: None values dropped (IFEval's files pad with nulls), missing/unknown ones rejected."""
    spec = get_checker(instruction_id)
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    missing = [k for k in spec.required if k not in args]
    unknown = [k for k in args if k not in spec.required and k not in spec.optional]
    if missing or unknown:
        raise DataError(f"IFEval instruction {instruction_id!r}: missing arguments {missing}, unknown arguments "
                        f"{unknown} (expects {list(spec.required)}, optional {list(spec.optional)}).")
    if "relation" in args and args["relation"] not in RELATIONS:
        raise DataError(f"IFEval instruction {instruction_id!r}: relation must be one of {RELATIONS}, "
                        f"got {args['relation']!r}.")
    for key in ("capital_relation", "let_relation"):
        if key in args and args[key] not in RELATIONS:
            raise DataError(f"IFEval instruction {instruction_id!r}: {key} must be one of {RELATIONS}, "
                            f"got {args[key]!r}.")
    return args


def check(instruction_id: str, response: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Whether ``response`` follows instruction ``instruction_id`` with arguments ``kwargs``."""
    args = clean_kwargs(instruction_id, kwargs)
    return bool(get_checker(instruction_id).fn(response, **args))


def compare(value: int, relation: str, threshold: int) -> bool:
    """IFEval's two relations: ``less than`` is strict, ``at least`` is inclusive."""
    return value < threshold if relation == "less than" else value >= threshold
