"""detectable_content:* checkers: placeholders and postscripts; punctuation:no_comma."""
from __future__ import annotations

import re

from tunelens.evals.ifeval_checkers.registry import checker


@checker("detectable_content:number_placeholders", required=("num_placeholders",))
def number_placeholders(response: str, num_placeholders: int) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders such as ``[address]``."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


@checker("detectable_content:postscript", required=("postscript_marker",))
def postscript(response: str, postscript_marker: str) -> bool:
    """A postscript starting with the marker (``P.S.`` also matches ``p. s.``; ``P.P.S`` likewise)."""
    marker = postscript_marker.strip().lower()
    if marker == "p.p.s":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "p.s.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker) + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


@checker("punctuation:no_comma")
def no_comma(response: str) -> bool:
    return "," not in response
