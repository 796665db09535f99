"""Non-instructional fine-tuning data (Xie et al. 2024): raw text -> (first part, teacher continuation) pairs.

``run_synth(SynthConfig, out)`` runs the pipeline (sources, cleaning, chunking, dedup, split, teacher with a
resumable cache, filters) and writes a ``messages`` JSONL with provenance plus a report. Teachers share one
interface (:class:`Teacher`: batched ``complete(requests) -> list[TeacherResult]``): a local HF model, an
OpenAI-compatible endpoint, or ``gold`` (the real continuation).
"""
from __future__ import annotations

from tunelens.data.synth.config import SynthConfig
from tunelens.data.synth.pipeline import SynthResult, run_synth
from tunelens.data.synth.teachers import (GoldTeacher, SamplingParams, Teacher, TeacherConfig, TeacherRequest,
                                          TeacherResult, make_teacher)

__all__ = ["GoldTeacher", "SamplingParams", "SynthConfig", "SynthResult", "Teacher", "TeacherConfig",
           "TeacherRequest", "TeacherResult", "make_teacher", "run_synth"]
