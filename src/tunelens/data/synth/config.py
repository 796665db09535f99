"""``SynthConfig``: the recipe of a ``tunelens synth`` run (YAML + ``key=value`` overrides)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tunelens.data.synth.chunk import ChunkConfig
from tunelens.data.synth.clean import CleanConfig
from tunelens.data.synth.dedup import DedupConfig
from tunelens.data.synth.filters import FilterConfig
from tunelens.data.synth.sources import SourceSpec
from tunelens.data.synth.split import SplitConfig
from tunelens.data.synth.teachers import KINDS, TeacherConfig
from tunelens.errors import ConfigError

__all__ = ["SynthConfig"]


@dataclass
class SynthConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    clean: CleanConfig = field(default_factory=CleanConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    judge: Optional[TeacherConfig] = None  # used when filters.judge is true
    max_pairs: Optional[int] = None  # a seeded sample of this many passages after dedup (None: all)
    seed: int = 0
    system: Optional[str] = None  # a system message put in every output record (None: none)
    cache_path: Optional[str] = None  # teacher cache JSONL (default <out>/teacher_cache.jsonl); share it across runs
    request_batch: int = 64  # requests per teacher call; the cache is flushed after each

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources is empty: give at least one file, folder, .jsonl or datasets directory")
        for i, s in enumerate(self.sources):
            if not s.path:
                raise ConfigError(f"sources[{i}].path is empty")
            if s.kind not in ("auto", "text", "jsonl", "datasets"):
                raise ConfigError(f"sources[{i}].kind must be auto|text|jsonl|datasets, got {s.kind!r}")
        if self.teacher.kind not in KINDS:
            raise ConfigError(f"teacher.kind must be one of {KINDS}, got {self.teacher.kind!r}")
        if self.filters.judge and self.judge is None:
            raise ConfigError("filters.judge is true but there is no judge: block (a teacher config)")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError("max_pairs must be >= 1 (or null for all)")
        if self.request_batch < 1:
            raise ConfigError("request_batch must be >= 1")
        for part in (self.chunk, self.dedup, self.split):
            part.validate()
