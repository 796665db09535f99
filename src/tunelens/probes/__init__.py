"""Context-reliance probes: knowledge conflicts, needle in a haystack, contextual QA, attention allocation.

Each submodule lists its public names in ``__all__``; this package re-exports them (add a submodule by adding
one import line and one entry to ``__all__`` below).
"""
from tunelens.probes import engine, prompts
from tunelens.probes.engine import *  # noqa: F401,F403
from tunelens.probes.prompts import *  # noqa: F401,F403

__all__ = [*engine.__all__, *prompts.__all__]
