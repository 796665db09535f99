"""startend:* and combination:* checkers."""
from __future__ import annotations

from tunelens.evals.ifeval_checkers.registry import checker


@checker("startend:quotation")
def quotation(response: str) -> bool:
    """The whole response is wrapped in double quotes."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@checker("startend:end_checker", required=("end_phrase",))
def end_checker(response: str, end_phrase: str) -> bool:
    """The response ends with ``end_phrase`` (case-insensitive; surrounding quotes ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@checker("combination:repeat_prompt", required=("prompt_to_repeat",))
def repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    """The response starts by repeating the request verbatim (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


@checker("combination:two_responses")
def two_responses(response: str) -> bool:
    """Exactly two different responses separated by ``******``."""
    parts = response.split("******")
    valid = []
    for i, part in enumerate(parts):
        if part.strip():
            valid.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()
