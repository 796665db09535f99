"""detectable_format:* checkers: bullet lists, highlights, sections, JSON, titles, fixed answers."""
from __future__ import annotations

import json
import re

from tunelens.evals.ifeval_checkers.registry import checker

CONSTRAINED_ANSWERS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@checker("detectable_format:number_bullet_lists", required=("num_bullets",))
def number_bullet_lists(response: str, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` markdown bullet lines (``* item`` or ``- item``)."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


@checker("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """Contains one of the fixed answers ``My answer is yes./no./maybe.``."""
    text = response.strip()
    return any(answer in text for answer in CONSTRAINED_ANSWERS)


@checker("detectable_format:number_highlighted_sections", required=("num_highlights",))
def number_highlighted_sections(response: str, num_highlights: int) -> bool:
    """At least ``num_highlights`` non-empty ``*highlighted*`` (or ``**bold**``) spans on one line."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


@checker("detectable_format:multiple_sections", required=("section_spliter", "num_sections"))
def multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    """At least ``num_sections`` sections introduced by ``<section_spliter> <number>`` (e.g. ``SECTION 1``)."""
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", response)
    return len(parts) - 1 >= num_sections


@checker("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The whole response parses as JSON (an optional ```json fence around it is allowed)."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence):]
            break
    if text.endswith("```"):
        text = text[:-3]
    try:
        json.loads(text.strip())
    except ValueError:
        return False
    return True


@checker("detectable_format:title")
def title(response: str) -> bool:
    """A non-empty title in double angular brackets, ``<<title>>``."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))
