"""keywords:* checkers (case-insensitive; keywords are matched literally)."""
from __future__ import annotations

import re

from tunelens.evals.ifeval_checkers.registry import checker, compare


@checker("keywords:existence", required=("keywords",))
def existence(response: str, keywords: list[str]) -> bool:
    """Every keyword occurs somewhere in the response."""
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


@checker("keywords:frequency", required=("keyword", "frequency", "relation"))
def frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword occurs ``< frequency`` (less than) or ``>= frequency`` (at least) times."""
    return compare(len(re.findall(re.escape(keyword), response, flags=re.IGNORECASE)), relation, frequency)


@checker("keywords:forbidden_words", required=("forbidden_words",))
def forbidden_words(response: str, forbidden_words: list[str]) -> bool:
    """None of the words occurs as a whole word."""
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE) for w in forbidden_words)


@checker("keywords:letter_frequency", required=("letter", "let_frequency", "let_relation"))
def letter_frequency(response: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    """The letter (any case) occurs ``< let_frequency`` or ``>= let_frequency`` times."""
    return compare(response.lower().count(letter.lower()), let_relation, let_frequency)
