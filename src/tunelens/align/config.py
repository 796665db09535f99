"""The f-DPG recipe as a typed dataclass (YAML + ``key=value`` overrides; see tunelens.config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tunelens.align.fdivergence import LOSSES
from tunelens.align.partition import BASELINES
from tunelens.errors import ConfigError
from tunelens.models.finetune import MODES, LoraSettings
from tunelens.train.config import ModelConfig, OptimConfig

PROPOSALS = ("policy", "base", "adaptive")
CONTEXT_SOURCES = ("none", "texts", "conflicts")


@dataclass
class ContextConfig:
    """Where the conditioning prompts come from: one target p_c and one Z_c per context.

    ``none``: a single empty context (the BOS token); ``texts``: the strings in ``texts``, rendered with the
    prompt ``variant`` (raw | chat | alpaca | tulu); ``conflicts``: knowledge-conflict items (``path``: a
    built-in name such as world_facts, or a file), prompt = context + question, meta = answers. ``offset`` and
    ``limit`` select items ``[offset, offset + limit)`` of the source.
    """

    source: str = "none"
    texts: list[str] = field(default_factory=list)
    path: Optional[str] = None
    offset: int = 0  # skip the first N items/texts (e.g. hold them out for a before/after probe)
    limit: Optional[int] = None
    variant: str = "raw"
    system: Optional[str] = None


@dataclass
class AlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    base: Optional[str] = None  # spec of the base a(x); None: the policy's initial weights
    # product of factors: [{type: pointwise|distributional|reward, feature(s): {kind: ...}, moments, beta}]
    target: list[Any] = field(default_factory=list)
    loss: str = "js"  # fkl | rkl | js | tv | chi2 | alpha
    alpha: float = 0.5  # for loss=alpha
    max_log_ratio: float = 20.0  # reverse KL: clip log(π/p) here (out-of-support samples)
    baseline: str = "moving_average"  # moving_average | leave_one_out | exact | none
    baseline_window: int = 1024
    baseline_per_context: bool = True
    proposal: str = "policy"  # policy (on-policy) | base (fixed q = a) | adaptive (q = a, replaced by π when closer)
    proposal_update_every: int = 16
    contexts: ContextConfig = field(default_factory=ContextConfig)
    contexts_per_step: int = 1
    samples_per_context: int = 128  # per optimizer step, all processes together
    micro_batch: int = 64  # rows per forward pass (sampling and scoring)
    max_new_tokens: int = 20
    probe_samples: int = 512  # per context, drawn from the base at start: Ẑ initialisation, λ fitting
    zero_acceptance: str = "error"  # a context none of whose probe samples is accepted: error | drop (not trained)
    fit_tol: float = 1e-4
    eval_every: int = 10
    eval_samples: int = 256  # per evaluation context
    eval_contexts: int = 4  # the first N contexts are evaluated
    eval_base_samples: int = 0  # > 0: also KL(p‖π) on this many base samples per context (kl_p_pi_base)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, schedule="constant", weight_decay=0.0))
    finetune: str = "full"  # full | lora
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_steps: int = 100
    precision: str = "bf16"  # bf16 autocast | fp32
    seed: int = 0
    log_every: int = 1
    save_every: int = 50
    keep_last: int = 2
    save_final_model: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        """Reject inconsistent settings with a message naming the key."""
        checks = [
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.baseline in BASELINES, f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}"),
            (self.baseline != "exact" or self.loss == "fkl", "baseline=exact exists only for loss=fkl"),
            (self.zero_acceptance in ("error", "drop"),
             f"zero_acceptance must be error or drop, got {self.zero_acceptance!r}"),
            (self.proposal in PROPOSALS, f"proposal must be one of {', '.join(PROPOSALS)}, got {self.proposal!r}"),
            (self.contexts.source in CONTEXT_SOURCES,
             f"contexts.source must be one of {', '.join(CONTEXT_SOURCES)}, got {self.contexts.source!r}"),
            (self.finetune in ("full", "lora"), f"finetune must be full or lora, got {self.finetune!r}"),
            (self.finetune in MODES, f"finetune: {self.finetune!r}"),
            (self.precision in ("bf16", "fp32"), f"precision must be bf16 or fp32, got {self.precision!r}"),
            (bool(self.target), "target is empty: give at least one factor"),
            (self.samples_per_context >= 2, "samples_per_context must be >= 2"),
            (self.contexts_per_step >= 1, "contexts_per_step must be >= 1"),
            (self.micro_batch >= 1, "micro_batch must be >= 1"),
            (self.contexts.offset >= 0, "contexts.offset must be >= 0"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.probe_samples >= 1, "probe_samples must be >= 1"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: only at start and end)"),
            (self.eval_samples >= 2, "eval_samples must be >= 2"),
            (self.eval_base_samples >= 0, "eval_base_samples must be >= 0 (0: off)"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.max_log_ratio > 0, "max_log_ratio must be > 0"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"Bad align config: {msg}.")
