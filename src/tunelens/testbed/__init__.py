"""Synthetic testbed for context-parametric inversion (Goyal et al., ICLR 2025) and its mitigations.

``run_testbed(TestbedConfig(), out)`` generates a world of facts, pretrains a tiny Llama on it (cached by
config hash), builds instruction mixtures whose examples are tagged C / C+S / S / generic, fine-tunes every
variant (vanilla, no_cs_s, curate, counterfactual, qk, indicator) over seeds with the trajectory probe, and
writes ``summary.json`` and plots. CLI: ``tunelens testbed run configs/testbed.yaml --out DIR``.
"""
from tunelens.testbed.config import (
           VARIANTS,
           EvalConfig,
           FinetuneConfig,
           MitigationConfig,
           TestbedConfig,
)
from tunelens.testbed.corpus import CorpusConfig, build_corpus
from tunelens.testbed.evalsets import (
           answer_accuracy,
           counterfactual_items,
           indistribution_set,
)
from tunelens.testbed.mixtures import KINDS, MixtureConfig, build_mixture, drop_kinds
from tunelens.testbed.pretrain import (
           ArchConfig,
           PretrainConfig,
           cache_key,
           closed_book_recall,
           ensure_pretrained,
)
from tunelens.testbed.runner import run_testbed
from tunelens.testbed.summary import (
           aggregate,
           format_table,
           reproduction_checks,
           run_summary,
)
from tunelens.testbed.world import RELATIONS, Fact, World, WorldConfig, generate_world

__all__ = [
           "KINDS",
           "RELATIONS",
           "VARIANTS",
           "ArchConfig",
           "CorpusConfig",
           "EvalConfig",
           "Fact",
           "FinetuneConfig",
           "MitigationConfig",
           "MixtureConfig",
           "PretrainConfig",
           "TestbedConfig",
           "World",
           "WorldConfig",
           "aggregate",
           "answer_accuracy",
           "build_corpus",
           "build_mixture",
           "cache_key",
           "closed_book_recall",
           "counterfactual_items",
           "drop_kinds",
           "ensure_pretrained",
           "format_table",
           "generate_world",
           "indistribution_set",
           "reproduction_checks",
           "run_summary",
           "run_testbed",
]
