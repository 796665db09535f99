"""Errors a user can act on. The CLI prints them without a traceback (unless --debug)."""
from __future__ import annotations


class TunelensError(Exception):
    """Base class of every error tunelens raises on purpose."""


class ConfigError(TunelensError):
    """A configuration file, key or value is wrong."""


class ModelLoadError(TunelensError):
    """A model or tokenizer could not be loaded (unknown preset, offline and not cached, bad file)."""


class TemplateError(TunelensError):
    """A chat template could not be rendered, or its spans could not be aligned with the messages."""


class DataError(TunelensError):
    """A dataset record or file is invalid; the message names the file, line and field."""


class TrainingError(TunelensError):
    """Training cannot start or continue (diverged loss, incompatible resume, ...)."""


class CheckpointError(TunelensError):
    """A checkpoint is missing, incomplete or does not match the run."""
