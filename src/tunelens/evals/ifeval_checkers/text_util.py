"""Text helpers shared by the IFEval checkers: word counting, sentence splitting, language detection.

Words are runs of ``\\w`` characters (what IFEval's ``RegexpTokenizer(r"\\w+")`` counts). Sentences come from a
rule-based splitter (abbreviations, initials, decimals, websites, ellipses and closing quotes handled), not from
NLTK's Punkt model, which needs a data download; counts can differ from the official scorer on unusual text.
"""
from __future__ import annotations

import functools
import re

_WORD = re.compile(r"\w+")
# tokens as NLTK's word_tokenize would roughly produce them: words (with inner apostrophes/periods) and punctuation
_TOKEN = re.compile(r"(?:[A-Za-z]\.){2,}|\w+(?:['’]\w+)*|[^\w\s]+")

_ALPHA = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s"
             r"|This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs."""
    return len(_WORD.findall(text))


def word_tokens(text: str) -> list[str]:
    """Words and punctuation runs (acronyms such as ``U.S.`` stay one token)."""
    return _TOKEN.findall(text)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ``.``, ``?`` and ``!`` that end a sentence (rule-based)."""
    t = " " + text + "  "
    t = t.replace("\n", " ")
    t = re.sub(_PREFIXES, "\\1<prd>", t)
    t = re.sub(_WEBSITES, "<prd>\\1", t)
    t = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", t)
    t = re.sub(r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>", t)
    t = t.replace("Ph.D.", "Ph<prd>D<prd>")
    t = re.sub(r"\s" + _ALPHA + "[.] ", " \\1<prd> ", t)
    t = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", t)
    t = re.sub(_ALPHA + "[.]" + _ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>\\3<prd>", t)
    t = re.sub(_ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>", t)
    t = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", t)
    t = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", t)
    t = re.sub(" " + _ALPHA + "[.]", " \\1<prd>", t)
    for closing in ("”", '"'):  # move the terminal mark after a closing quote
        for mark in ".!?":
            t = t.replace(mark + closing, closing + mark)
    for mark in ".?!":
        t = t.replace(mark, mark + "<stop>")
    t = t.replace("<prd>", ".")
    sentences = [s.strip() for s in t.split("<stop>")]
    return [s for s in sentences if s]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def detect_language(text: str) -> str | None:
    """ISO 639-1 code from ``langdetect`` (seeded, so deterministic); None when it cannot decide."""
    detect, failure = _langdetect()
    try:
        return detect(text)
    except failure:
        return None


@functools.lru_cache(maxsize=1)
def _langdetect():
    try:
        import langdetect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError as exc:  # pragma: no cover - declared dependency
        from tunelens.errors import ConfigError
        raise ConfigError("IFEval's language checks need `langdetect` (pip install langdetect).") from exc
    langdetect.DetectorFactory.seed = 0
    return langdetect.detect, LangDetectException
