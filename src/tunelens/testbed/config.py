"""The testbed recipe: world, corpus, model, pretraining, mixture, fine-tuning, evaluation and variants."""
from __future__ import annotations

from dataclasses import dataclass, field

from tunelens.errors import ConfigError
from tunelens.testbed.corpus import CorpusConfig
from tunelens.testbed.mixtures import MixtureConfig
from tunelens.testbed.pretrain import ArchConfig, PretrainConfig
from tunelens.testbed.world import WorldConfig

VARIANTS = ("vanilla", "no_cs_s", "curate", "counterfactual", "qk", "indicator")
# the mitigation settings each variant reads (a run's fingerprint includes only these)
VARIANT_SETTINGS = {"vanilla": (), "no_cs_s": (), "curate": ("curate_drop_fraction", "curate_format"),
                    "counterfactual": ("counterfactual_fraction", "counterfactual_source"), "qk": ("qk_modules", "qk_lr"),
                    "indicator": ("indicator_beta", "indicator_layer", "indicator_token")}


@dataclass
class FinetuneConfig:
    steps: int = 200
    batch_size: int = 4  # packed rows of max_length tokens per step
    max_length: int = 128
    lr: float = 1e-3
    warmup_steps: int = 10
    schedule: str = "constant"  # cosine | linear | constant
    precision: str = "bf16"


@dataclass
class EvalConfig:
    every: int = 20  # probe every N fine-tuning steps
    mode: str = "loglik"  # conflicts probe mode: loglik | generate
    n_counterfactual: int = 120
    n_indistribution: int = 60  # held-out examples per mixture kind
    threshold: float = 0.15  # inversion above this is flagged
    batch_size: int = 64


@dataclass
class MitigationConfig:
    curate_drop_fraction: float = 0.25  # curate: drop this share with the lowest no-context target perplexity
    curate_format: str = "raw"  # raw: score "question answer" as the corpus writes it | chat: the chat template
    counterfactual_fraction: float = 0.1  # counterfactual: add this share of counterfactual-context examples
    counterfactual_source: str = "conflicts"  # conflicts: swapped contexts of train people's facts | substitution
    indicator_beta: float = 0.6  # indicator: flag examples whose context-dependency score exceeds beta
    indicator_layer: int | None = None  # default: the middle layer of the seed model
    indicator_token: str = "[IND]"
    qk_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj"])
    qk_lr: float | None = None  # learning rate of the qk variant (None: finetune.lr); few parameters train


@dataclass
class TestbedConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ArchConfig = field(default_factory=ArchConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mitigations: MitigationConfig = field(default_factory=MitigationConfig)
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    workers: int = 2  # fine-tuning runs in parallel processes
    threads: int = 1  # torch threads per worker
    pretrain_threads: int = 0  # torch threads for pretraining (0: workers * threads; 1 on a busy machine)
    cache_dir: str | None = None  # pretrained-model cache (default: $TUNELENS_TESTBED_CACHE or ~/.cache/...)
    plots: bool = True

    def validate(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"variants: {bad or 'empty'}; choose from {list(VARIANTS)}.")
        if len(set(self.variants)) != len(self.variants) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError("variants and seeds must be non-empty lists without repeats.")
        if self.workers < 1 or self.threads < 1:
            raise ConfigError("workers and threads must be >= 1.")
        if self.eval.mode not in ("loglik", "generate"):
            raise ConfigError(f"eval.mode must be loglik or generate, got {self.eval.mode!r}.")
        if self.eval.every < 1 or self.finetune.steps < 1:
            raise ConfigError("eval.every and finetune.steps must be >= 1.")
        if self.mitigations.counterfactual_source not in ("substitution", "conflicts"):
            raise ConfigError("mitigations.counterfactual_source must be substitution or conflicts.")
        if self.mitigations.curate_format not in ("raw", "chat"):
            raise ConfigError("mitigations.curate_format must be raw or chat.")
        if not 0 <= self.mitigations.curate_drop_fraction < 1:
            raise ConfigError("mitigations.curate_drop_fraction must lie in [0, 1).")
        self.world.validate()
        self.mixture.validate()
