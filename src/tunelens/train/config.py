"""The SFT recipe as typed dataclasses (YAML + ``key=value`` overrides; see tunelens.config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tunelens.errors import ConfigError
from tunelens.models.finetune import MODES, LoraSettings


@dataclass
class ModelConfig:
    spec: str = "tiny-llama"  # preset name, HF directory or id, or .gguf file
    dtype: str = "float32"  # weights' dtype; keep float32 and use precision=bf16 for autocast
    attn_implementation: str = "sdpa"
    seed: int = 0  # initialisation of random presets
    chat_template: Optional[str] = None  # path to a .jinja file overriding the tokenizer's template


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)
    schema: str = "auto"  # auto | messages | prompt_completion | alpaca | context_qa
    fields: dict[str, str] = field(default_factory=dict)  # canonical field -> field name in the file
    on_error: str = "skip"  # skip | fail
    system: Optional[str] = None
    limit: Optional[int] = None
    train_on: str = "assistant"  # assistant | last | all
    max_length: int = 512
    truncation: str = "right"  # right | drop
    packing: bool = True
    # Data-prep steps run before tokenizing (tunelens.data.prep): curate / augment / indicate, e.g.
    # [{step: curate, drop: 0.25}, {step: indicate, beta: 0.6}]. Empty: none.
    prep: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: str = "full"  # full | lora | qk
    lora: LoraSettings = field(default_factory=LoraSettings)
    qk_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj"])
    batch_size: int = 4  # rows per micro-batch per process
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps; ignored when epochs is set
    epochs: Optional[float] = None
    precision: str = "bf16"  # bf16 (autocast, fp32 master weights) | fp32
    seed: int = 0
    log_every: int = 1
    save_every: int = 50  # 0: only the final checkpoint
    keep_last: int = 2
    save_final_model: bool = True
    tensorboard: bool = True
    compile: bool = False  # torch.compile the model: faster steps after a one-off compile (~1-4 min on CPU)
    # Probes along training (see tunelens.probes.trajectory.trajectory_from_config): suites, variants,
    # every, mode, limit, track, reliance, keep_peak, early_stop_drop, ... Empty: no probes.
    probes: dict[str, Any] = field(default_factory=dict)
    # Head activation patterns along training (see tunelens.heads.callback.heads_from_config): data, every, k,
    # limit, batch_size, max_length, aggregation, ... Empty: none. Logged as `heads` events, saved in RUN/heads/.
    heads: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Reject inconsistent settings with a message naming the key."""
        checks = [
            (self.finetune in MODES, f"finetune must be one of {MODES}, got {self.finetune!r}"),
            (self.precision in ("bf16", "fp32"), f"precision must be bf16 or fp32, got {self.precision!r}"),
            (self.optim.schedule in ("cosine", "linear", "constant"), f"optim.schedule: {self.optim.schedule!r}"),
            (self.data.on_error in ("skip", "fail"), f"data.on_error must be skip or fail, got {self.data.on_error!r}"),
            (self.data.train_on in ("assistant", "last", "all"), f"data.train_on: {self.data.train_on!r}"),
            (self.data.truncation in ("right", "drop"), f"data.truncation: {self.data.truncation!r}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.max_steps >= 1 or self.epochs is not None, "max_steps must be >= 1 (or set epochs)"),
            (self.epochs is None or self.epochs > 0, "epochs must be > 0"),
            (self.data.max_length >= 8, "data.max_length must be >= 8"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (len(self.optim.betas) == 2, "optim.betas must have two values"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (bool(self.data.paths), "data.paths is empty: give at least one data file"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"Bad SFT config: {msg}.")
        if self.data.prep:
            from tunelens.data.prep import validate_prep

            validate_prep(self.data.prep)
