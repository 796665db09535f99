"""Filters on finished pairs: response length, repetition, and an instruction-content detector.

The detector mirrors the paper's check that only 0.7% of its non-instructional data looked like
instructions: rules (regular expressions for requests addressed to an assistant, task headers, Q/A and
chat-role markup) over the user turn and the response, plus an optional judge model asked YES/NO through the
teacher interface. It reports the flagged share; flagged pairs are dropped only if ``drop_instruction_like``.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

from tunelens.data.synth.teachers.base import Teacher, TeacherRequest

__all__ = ["FilterConfig", "instruction_rules", "repetition_ratio", "check_response", "judge_instruction_like",
           "JUDGE_PROMPT"]

_RULES: dict[str, re.Pattern[str]] = {
    "imperative_request": re.compile(
        r"(?im)^\s*(?:please\s+)?(?:write|explain|summari[sz]e|translate|list|describe|generate|create|compose|"
        r"give me|tell me|classify|rewrite|paraphrase|answer|solve|calculate|name|suggest|provide|outline|"
        r"identify|compare|convert|edit|draft)\b[^.!?\n]{0,200}[.:?]?\s*$"),
    "assistant_address": re.compile(
        r"(?i)\b(?:can|could|would|will) you (?:please )?(?:help|write|explain|tell|give|show|list|summari[sz]e|"
        r"translate|provide)\b|\bas an ai\b|\byou are an? (?:helpful|ai|assistant|expert)\b|\bi am an ai\b"),
    "task_header": re.compile(
        r"(?im)^\s*(?:#{1,4}\s*)?(?:instruction|input|output|response|task|question|answer|prompt)\s*:"),
    "chat_markup": re.compile(r"(?im)^\s*(?:user|assistant|system|human|ai)\s*:|<\|im_start\|>|\[INST\]"),
    "follow_the_instruction": re.compile(
        r"(?i)\b(?:in (?:no more than|at most|less than) \d+ words|step[- ]by[- ]step|the following "
        r"(?:text|passage|sentence|question)s?|bullet points?)\b"),
}

JUDGE_PROMPT = (
    "Below is a text. Does it contain an instruction, request or question addressed to an AI assistant "
    "(for example 'write a poem', 'explain X', 'answer the following question'), as opposed to ordinary "
    "prose, dialogue in a story, or an article?\n\nText:\n\"\"\"\n{text}\n\"\"\"\n\nAnswer with one word: "
    "YES or NO.")


@dataclass
class FilterConfig:
    min_response_words: int = 8
    max_response_words: Optional[int] = None
    max_repetition: float = 0.5  # share of word trigrams that repeat an earlier trigram
    drop_repetitive: bool = True
    instruction_rules: bool = True
    drop_instruction_like: bool = False  # the paper reported the share and kept the data
    judge: bool = False  # ask the judge teacher (see the ``judge:`` block) about each pair
    judge_limit: Optional[int] = None  # judge only the first N pairs (the share is reported over those)
    rules: list[str] = field(default_factory=lambda: sorted(_RULES))


def instruction_rules(text: str, names: Sequence[str] = tuple(_RULES)) -> list[str]:
    """Names of the instruction rules that fire on ``text``."""
    return [n for n in names if n in _RULES and _RULES[n].search(text)]


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return sum(c - 1 for c in Counter(grams).values()) / len(grams)


def check_response(prompt: str, response: str, cfg: FilterConfig) -> tuple[list[str], list[str]]:
    """(reasons to drop the pair, instruction rules that fired) for one finished pair."""
    drop: list[str] = []
    n = len(response.split())
    if n == 0:
        drop.append("empty_output")
    elif n < cfg.min_response_words:
        drop.append("too_short")
    if cfg.max_response_words is not None and n > cfg.max_response_words:
        drop.append("too_long")
    if cfg.drop_repetitive and repetition_ratio(response) > cfg.max_repetition:
        drop.append("repetitive")
    fired = sorted(set(instruction_rules(prompt, cfg.rules)) | set(instruction_rules(response, cfg.rules))) \
        if cfg.instruction_rules else []
    if fired and cfg.drop_instruction_like:
        drop.append("instruction_like")
    return drop, fired


def judge_instruction_like(judge: Teacher, texts: Sequence[str]) -> list[Optional[bool]]:
    """The judge's verdict per text: True (YES), False (NO) or None (error or an unparseable answer)."""
    reqs = [TeacherRequest(prompt=JUDGE_PROMPT.replace("{text}", t), max_tokens=4) for t in texts]
    verdicts: list[Optional[bool]] = []
    for res in judge.complete(reqs):
        word = re.match(r"\W*(\w+)", res.text or "")
        answer = word.group(1).upper() if (res.ok and word) else ""
        verdicts.append(True if answer == "YES" else False if answer == "NO" else None)
    return verdicts
