"""Attention-head activation patterns (Zhao et al. 2024), their statistics, composition and causal checks.

Main entry points: :func:`compute_patterns` -> :class:`HeadPatterns` (an L×H matrix, ``top_k``, ``save``/``load``),
:func:`ablate_heads` (a context manager that zeroes or mean-ablates heads during forward passes).
"""
from __future__ import annotations

from tunelens.heads.ablation import ablate_heads, mean_head_outputs, response_loss
from tunelens.heads.inputs import as_batches
from tunelens.heads.patterns import (
    AGGREGATIONS,
    HeadPatterns,
    aggregate,
    compute_patterns,
    normalize_pattern,
)
from tunelens.heads.sites import HeadSite, check_heads, find_head_sites

__all__ = ["AGGREGATIONS", "HeadPatterns", "HeadSite", "ablate_heads", "aggregate", "as_batches", "check_heads",
           "compute_patterns", "find_head_sites", "mean_head_outputs", "normalize_pattern", "response_loss"]
