"""length_constraints:* checkers: words, sentences, paragraphs (``***``-separated or blank-line-separated)."""
from __future__ import annotations

import re

from tunelens.evals.ifeval_checkers.registry import checker, compare
from tunelens.evals.ifeval_checkers.text_util import count_sentences, count_words

_FIRST_WORD_STOP = set(".,?!'\"")


@checker("length_constraints:number_words", required=("num_words", "relation"))
def number_words(response: str, num_words: int, relation: str) -> bool:
    return compare(count_words(response), relation, num_words)


@checker("length_constraints:number_sentences", required=("num_sentences", "relation"))
def number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(response), relation, num_sentences)


@checker("length_constraints:number_paragraphs", required=("num_paragraphs",))
def number_paragraphs(response: str, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by the markdown divider ``***``.

    An empty piece before the first or after the last divider is not counted; an empty piece in between
    (two dividers in a row) fails the check.
    """
    pieces = re.split(r"\s?\*\*\*\s?", response)
    count = len(pieces)
    for i, piece in enumerate(pieces):
        if not piece.strip():
            if i in (0, len(pieces) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


@checker("length_constraints:nth_paragraph_first_word", required=("num_paragraphs", "nth_paragraph", "first_word"))
def nth_paragraph_first_word(response: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """``num_paragraphs`` blank-line-separated paragraphs, the ``nth_paragraph``-th (1-based) starting with
    ``first_word`` (case-insensitive, leading quotes and trailing punctuation ignored)."""
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count or nth_paragraph < 1 or nth_paragraph > len(paragraphs):
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in _FIRST_WORD_STOP:
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()
