"""Which attention heads to steer: ``"all"``, a head-set file ``{"layer": [heads]}``, or a mapping / pairs.

A :class:`HeadSet` is a validated, sorted ``{layer: (heads...)}`` mapping for one model (layers and heads are
checked against the model's config, so an index out of range fails before anything runs). PASTA's head-config
files (``{"13": [5, 7], "14": [0]}``) load as they are; ``save`` writes the same format.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from tunelens.errors import ConfigError

__all__ = ["HeadSet", "HeadSpec", "model_shape", "resolve_heads"]

HeadSpec = Union[str, Path, Mapping[Any, Iterable[int]], Iterable[tuple[int, int]], "HeadSet"]


def model_shape(model: Any) -> tuple[int, int]:
    """(attention layers, query heads per layer) from the model's (text) config."""
    config = model.config
    config = getattr(config, "get_text_config", lambda: config)() or config
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise ConfigError(f"{type(model).__name__}: its config gives no num_hidden_layers/num_attention_heads, "
                          "so head indices cannot be checked; pass a model with a standard decoder config.")
    return layers, heads


@dataclass(frozen=True)
class HeadSet:
    """Steered heads of a model with ``n_layers`` layers of ``n_heads`` heads: ``heads[layer]`` sorted tuples."""

    heads: dict[int, tuple[int, ...]]
    n_layers: int
    n_heads: int

    def __post_init__(self) -> None:
        for layer, hs in self.heads.items():
            if not 0 <= layer < self.n_layers:
                raise ConfigError(f"head set: layer {layer} is out of range; the model has layers 0..{self.n_layers - 1}.")
            bad = [h for h in hs if not 0 <= h < self.n_heads]
            if bad:
                raise ConfigError(f"head set: layer {layer} heads {bad} are out of range; the model has heads "
                                  f"0..{self.n_heads - 1} per layer.")

    @classmethod
    def all(cls, n_layers: int, n_heads: int) -> HeadSet:
        return cls({l: tuple(range(n_heads)) for l in range(n_layers)}, n_layers, n_heads)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], n_layers: int, n_heads: int) -> HeadSet:
        out: dict[int, set[int]] = {}
        for layer, head in pairs:
            out.setdefault(int(layer), set()).add(int(head))
        return cls({l: tuple(sorted(hs)) for l, hs in sorted(out.items())}, n_layers, n_heads)

    @classmethod
    def from_mapping(cls, mapping: Mapping[Any, Iterable[int]], n_layers: int, n_heads: int,
                     where: str = "head set") -> HeadSet:
        pairs = []
        for key, hs in mapping.items():
            try:
                layer = int(key)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: layer key {key!r} is not an integer.") from None
            if isinstance(hs, (str, bytes)) or not isinstance(hs, Iterable):
                raise ConfigError(f"{where}: layer {key!r} must map to a list of head indices, got {hs!r}.")
            for h in hs:
                if isinstance(h, bool) or not isinstance(h, int):
                    raise ConfigError(f"{where}: layer {key!r} has a non-integer head {h!r}.")
                pairs.append((layer, h))
        return cls.from_pairs(pairs, n_layers, n_heads)

    @classmethod
    def load(cls, path: str | Path, n_layers: int, n_heads: int) -> HeadSet:
        """Read a ``{"layer": [heads]}`` JSON file (PASTA's head-config format)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"head set file {path} does not exist.") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object {{\"layer\": [heads]}}, got {type(data).__name__}.")
        return cls.from_mapping(data, n_layers, n_heads, where=str(path))

    def to_json(self) -> dict[str, list[int]]:
        return {str(l): list(hs) for l, hs in sorted(self.heads.items()) if hs}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    def pairs(self) -> list[tuple[int, int]]:
        return [(l, h) for l, hs in sorted(self.heads.items()) for h in hs]

    def __len__(self) -> int:
        return sum(len(hs) for hs in self.heads.values())

    def of_layer(self, layer: int) -> tuple[int, ...]:
        return self.heads.get(layer, ())

    def is_full_layer(self, layer: int) -> bool:
        return len(self.of_layer(layer)) == self.n_heads


def resolve_heads(model: Any, spec: HeadSpec) -> HeadSet:
    """A :class:`HeadSet` for ``model`` from ``"all"``, a JSON file path, a ``{layer: [heads]}`` mapping,
    ``(layer, head)`` pairs, or a HeadSet (re-checked against this model)."""
    n_layers, n_heads = model_shape(model)
    if isinstance(spec, HeadSet):
        return HeadSet(dict(spec.heads), n_layers, n_heads)
    if isinstance(spec, str) and spec == "all":
        return HeadSet.all(n_layers, n_heads)
    if isinstance(spec, (str, Path)):
        return HeadSet.load(spec, n_layers, n_heads)
    if isinstance(spec, Mapping):
        return HeadSet.from_mapping(spec, n_layers, n_heads)
    try:
        pairs = [(int(l), int(h)) for l, h in spec]
    except (TypeError, ValueError):
        raise ConfigError(f"heads must be 'all', a JSON file, a {{layer: [heads]}} mapping or (layer, head) pairs; "
                          f"got {spec!r}.") from None
    return HeadSet.from_pairs(pairs, n_layers, n_heads)
