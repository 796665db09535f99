"""tunelens: instruction-tune causal LMs without losing their reliance on context, and measure it."""
from __future__ import annotations

__version__ = "0.1.0"

from tunelens.errors import TunelensError  # noqa: E402

__all__ = ["TunelensError", "__version__"]
