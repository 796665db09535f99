"""Training: the SFT loop, optimizers and schedules, checkpoints/resume, metrics and callbacks."""
from tunelens.train.callbacks import Callback, TrainState
from tunelens.train.checkpoint import latest_checkpoint, list_checkpoints
from tunelens.train.config import DataConfig, ModelConfig, OptimConfig, SFTConfig
from tunelens.train.metrics import MetricsLogger, read_metrics
from tunelens.train.sft import TrainResult, token_loss_sum, train_sft

__all__ = [
    "Callback", "TrainState", "latest_checkpoint", "list_checkpoints", "DataConfig", "ModelConfig", "OptimConfig",
    "SFTConfig", "MetricsLogger", "read_metrics", "TrainResult", "token_loss_sum", "train_sft",
]
