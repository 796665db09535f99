"""Per-row highlights that travel with a KV cache object.

The steering handler stores each sequence's highlight on the cache (``cache.__dict__[ROWS_ATTR]``, ``[batch,
prompt_len]``). While :func:`track_cache_rows` is active, ``Cache.batch_select_indices``, ``Cache.reorder_cache``
and ``Cache.batch_repeat_interleave`` apply the same row operation to it, so rows that are dropped (finished
sequences), forked (scoring several continuations on one prompt cache; ``copy.copy`` shares the attribute
and the fork's ``batch_select_indices`` rebinds its own), beam-reordered or repeated keep their highlight.
Caches without the attribute are untouched. The patch is reference-counted and removed when the last
context exits.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["ROWS_ATTR", "track_cache_rows"]

ROWS_ATTR = "_tunelens_steer_rows"

_LOCK = threading.Lock()
_DEPTH = 0
_ORIGINALS: dict[str, Callable] = {}


def _select(rows: torch.Tensor, index: Any) -> torch.Tensor:
    return rows.index_select(0, torch.as_tensor(index, device=rows.device, dtype=torch.long))


def _repeat(rows: torch.Tensor, repeats: Any) -> torch.Tensor:
    return rows.repeat_interleave(int(repeats), dim=0)


_TRANSFORMS = {"batch_select_indices": _select, "reorder_cache": _select, "batch_repeat_interleave": _repeat}


def _wrap(name: str, original: Callable) -> Callable:
    transform = _TRANSFORMS[name]

    def method(self: Any, arg: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, arg, *args, **kwargs)
        rows = self.__dict__.get(ROWS_ATTR)
        if rows is not None:
            self.__dict__[ROWS_ATTR] = transform(rows, arg)
        return out

    method.__name__ = name
    method.__wrapped__ = original  # type: ignore[attr-defined]
    return method


@contextmanager
def track_cache_rows() -> Iterator[None]:
    """Make cache row operations carry the steering rows along (see module docstring)."""
    global _DEPTH
    from transformers.cache_utils import Cache

    with _LOCK:
        if _DEPTH == 0:
            for name in _TRANSFORMS:
                original = Cache.__dict__.get(name)
                if original is not None:
                    _ORIGINALS[name] = original
                    setattr(Cache, name, _wrap(name, original))
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                for name, original in _ORIGINALS.items():
                    setattr(Cache, name, original)
                _ORIGINALS.clear()
