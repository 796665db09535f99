"""f-divergence alignment (f-DPG): energy-based targets, Ẑ estimation, the f′-parameterised loss, metrics.

Python API: ``train_align(AlignConfig(...), out)``; building blocks: :func:`build_target` /
:class:`Target` (pointwise, distributional with :func:`fit_lambda`, reward factors), :func:`get_divergence`,
:func:`pseudo_reward`, :func:`fdpg_loss`, :class:`PartitionEstimator`, :class:`Baseline`, :func:`sample`.
"""
from tunelens.align.config import AlignConfig, ContextConfig
from tunelens.align.fdivergence import LOSSES, FDivergence, divergence_from_samples, fdpg_loss, get_divergence, pseudo_reward
from tunelens.align.features import Feature, TargetError, build_feature
from tunelens.align.partition import Baseline, PartitionEstimator, ess, max_weight
from tunelens.align.samples import Context, Samples
from tunelens.align.sampling import sample, sequence_logprobs
from tunelens.align.targets import Distributional, Pointwise, Reward, Target, build_target, fit_lambda
from tunelens.align.trainer import AlignResult, train_align

__all__ = [
    "AlignConfig", "ContextConfig", "LOSSES", "FDivergence", "divergence_from_samples", "fdpg_loss", "get_divergence",
    "pseudo_reward", "Feature", "TargetError", "build_feature", "Baseline", "PartitionEstimator", "ess", "max_weight",
    "Context", "Samples", "sample", "sequence_logprobs", "Distributional", "Pointwise", "Reward", "Target",
    "build_target", "fit_lambda", "AlignResult", "train_align",
]
