"""Teachers behind one interface (:class:`Teacher`): a local HF model, an OpenAI-compatible endpoint, ``gold``.

``make_teacher(cfg)`` builds one from a :class:`TeacherConfig` (the ``teacher:`` block of a synth recipe).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tunelens.data.synth.teachers.base import (FINISH_REASONS, SamplingParams, Teacher, TeacherRequest,
                                               TeacherResult, content_hash, request_messages)
from tunelens.data.synth.teachers.gold import GoldTeacher
from tunelens.errors import ConfigError

__all__ = ["FINISH_REASONS", "GoldTeacher", "HFTeacher", "OpenAITeacher", "SamplingParams", "Teacher",
           "TeacherConfig", "TeacherRequest", "TeacherResult", "content_hash", "make_teacher", "request_messages"]

KINDS = ("hf", "openai", "gold")


@dataclass
class TeacherConfig:
    """The ``teacher:`` block. ``kind``: hf | openai | gold. Keys a kind does not use are ignored."""

    kind: str = "hf"
    model: str = "smollm2-135m-instruct"  # hf: preset/dir/.gguf; openai: the served model name
    prompt_format: str = "completion"  # completion | chat
    template: str = "{text}"  # chat: the user message; {text} is the passage's first part
    system: Optional[str] = None
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    # hf
    batch_size: int = 8
    bf16: bool = True
    dtype: str = "float32"
    max_prompt_tokens: int = 1536
    # openai
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the environment variable holding the key
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, stop=tuple(self.stop))


def make_teacher(cfg: TeacherConfig, loaded: Any = None) -> Teacher:
    """Build the teacher a config names (``loaded``: an already loaded ``(model, tokenizer)`` for ``hf``)."""
    if cfg.kind == "gold":
        return GoldTeacher()
    if cfg.kind == "hf":
        from tunelens.data.synth.teachers.hf import HFTeacher

        return HFTeacher(cfg.model, cfg.sampling(), prompt_format=cfg.prompt_format, template=cfg.template,
                         system=cfg.system, batch_size=cfg.batch_size, bf16=cfg.bf16, dtype=cfg.dtype,
                         max_prompt_tokens=cfg.max_prompt_tokens, seed=cfg.seed, loaded=loaded)
    if cfg.kind == "openai":
        from tunelens.data.synth.teachers.openai_api import OpenAITeacher

        return OpenAITeacher(cfg.model, cfg.base_url, cfg.sampling(), api_key_env=cfg.api_key_env,
                             prompt_format=cfg.prompt_format, template=cfg.template, system=cfg.system,
                             concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                             backoff_s=cfg.backoff_s)
    raise ConfigError(f"teacher.kind must be one of {KINDS}, got {cfg.kind!r}")


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import torch or openai
    if name == "HFTeacher":
        from tunelens.data.synth.teachers.hf import HFTeacher

        return HFTeacher
    if name == "OpenAITeacher":
        from tunelens.data.synth.teachers.openai_api import OpenAITeacher

        return OpenAITeacher
    raise AttributeError(name)
