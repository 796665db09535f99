"""Rule-based checkers for IFEval's instructions (Zhou et al. 2023), written for tunelens.

``check(instruction_id, response, kwargs)`` -> bool; ``CHECKERS`` lists the supported ids. Importing this package
registers every checker module.
"""
from tunelens.evals.ifeval_checkers import (  # noqa: F401  (registration side effect)
    change_case,
    content,
    detectable_format,
    keywords,
    length,
    startend,
)
from tunelens.evals.ifeval_checkers.registry import CHECKERS, Checker, check, clean_kwargs, get_checker

__all__ = ["CHECKERS", "Checker", "check", "clean_kwargs", "get_checker"]
