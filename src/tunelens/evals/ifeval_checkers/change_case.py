"""change_case:* checkers and language:response_language (language detection: ``langdetect``, seeded).

When ``langdetect`` cannot decide (e.g. no letters), the language part of a check passes, as in IFEval's
reference scorer.
"""
from __future__ import annotations

from tunelens.evals.ifeval_checkers.registry import checker, compare
from tunelens.evals.ifeval_checkers.text_util import detect_language, word_tokens


@checker("change_case:capital_word_frequency", required=("capital_frequency", "capital_relation"))
def capital_word_frequency(response: str, capital_frequency: int, capital_relation: str) -> bool:
    """The number of all-capital words is ``< capital_frequency`` or ``>= capital_frequency``."""
    capitals = [w for w in word_tokens(response) if w.isupper()]
    return compare(len(capitals), capital_relation, capital_frequency)


@checker("change_case:english_capital")
def english_capital(response: str) -> bool:
    """All letters upper case, and the text is English."""
    return response.isupper() and detect_language(response) in ("en", None)


@checker("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    """All letters lower case, and the text is English."""
    return response.islower() and detect_language(response) in ("en", None)


@checker("language:response_language", required=("language",))
def response_language(response: str, language: str) -> bool:
    """The response is in ``language`` (ISO 639-1 code, as ``langdetect`` reports it)."""
    return detect_language(response) in (language, None)
