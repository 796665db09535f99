"""Settings shared by every probe suite, and the result record each suite × variant returns."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from tunelens.errors import ConfigError


@dataclass
class ProbeSettings:
    """How probes run. Every field is recorded with the results."""

    mode: str = "generate"  # conflicts/memotrap: generate | loglik
    limit: Optional[int] = None  # first N items of each suite
    batch_size: int = 8
    bf16: bool = False
    max_new_tokens: int = 24  # conflicts / contextqa generation budget
    system: Optional[str] = None
    context_only_instruction: bool = False
    indicator: Optional[str] = None  # e.g. "[IND]" appended to the user turn
    no_context_control: bool = True  # conflicts: also ask the question alone (what the model knows)
    max_prompt_tokens: Optional[int] = None  # default: the model's limit minus the generation budget
    truncation: str = "middle"  # where an over-long context is cut: middle | start
    fields: dict[str, str] = field(default_factory=dict)  # field mapping for user files
    haystack_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024])
    haystack_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    haystack_new_tokens: int = 100  # paper B scores recall on the first 100 generated tokens
    response_prefix: bool = False  # haystack: open the answer with the needle's first words
    steer: Optional[dict[str, Any]] = None  # attention steering toward the user turn (tunelens.steer.SteerSpec keys)
    progress: bool = True

    def validate(self) -> None:
        if self.mode not in ("generate", "loglik"):
            raise ConfigError(f"mode must be generate or loglik, got {self.mode!r}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}.")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.haystack_new_tokens < 1:
            raise ConfigError("batch_size, max_new_tokens and haystack_new_tokens must be >= 1.")
        if any(not 0.0 <= d <= 1.0 for d in self.haystack_depths):
            raise ConfigError(f"haystack_depths must lie in [0, 1], got {self.haystack_depths}.")
        if self.steer is not None:
            from tunelens.steer.spec import parse_steer_spec

            parse_steer_spec(self.steer)
        if any(n < 16 for n in self.haystack_lengths):
            raise ConfigError(f"haystack_lengths must be >= 16 tokens, got {self.haystack_lengths}.")


@dataclass
class SuiteResult:
    """Metrics of one suite under one prompt variant, with per-item records."""

    suite: str
    variant: str
    mode: str
    n: int
    metrics: dict[str, float]
    settings: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0  # prompts whose context was cut to fit the model

    def summary(self) -> dict[str, Any]:
        """Everything but the per-item records (what results.json holds)."""
        d = asdict(self)
        d.pop("records")
        return d


@dataclass
class ProbeReport:
    """All suite × variant results of one probe run."""

    model: str
    results: list[SuiteResult]
    settings: dict[str, Any]

    def flat(self) -> dict[str, float]:
        """``{"suite/variant/metric": value}`` for logging along training."""
        return {f"{r.suite}/{r.variant}/{k}": float(v) for r in self.results for k, v in r.metrics.items()
                if isinstance(v, (int, float))}

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "settings": self.settings, "results": [r.summary() for r in self.results]}

    def save(self, out: str | Path) -> Path:
        """Write ``results.json`` and ``records/<suite>__<variant>.jsonl``; returns the directory."""
        out = Path(out)
        (out / "records").mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        for r in self.results:
            name = f"{r.suite}__{r.variant}".replace("/", "_").replace(":", "_")
            with open(out / "records" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                for rec in r.records:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return out
