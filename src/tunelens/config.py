"""Typed configs: dataclasses loaded from YAML, overridden from the CLI, saved fully resolved.

Every recipe is a dataclass. ``load_config(Cls, path, overrides)`` merges, in order, the dataclass
defaults, the YAML file and ``key=value`` overrides (dotted keys reach nested dataclasses). Unknown
keys and ill-typed values raise :class:`~tunelens.errors.ConfigError` naming the key and the file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunelens.errors import ConfigError

T = TypeVar("T")


def parse_overrides(items: Sequence[str]) -> list[str]:
    """Normalise CLI overrides: ``key=value`` and ``--key value`` / ``--key=value`` become ``key=value``."""
    out: list[str] = []
    i = 0
    items = list(items)
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                out.append(key)
            elif i + 1 < len(items):
                out.append(f"{key}={items[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"Override '{item}' has no value; write '{key}=VALUE'.")
        elif "=" in item:
            out.append(item)
        else:
            raise ConfigError(f"Override '{item}' is not of the form key=value.")
        i += 1
    return [o.replace("-", "_", o.index("=")) if "-" in o.split("=", 1)[0] else o for o in out]


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``cls`` instance from its defaults, an optional YAML file and ``key=value`` overrides."""
    base = OmegaConf.structured(cls)
    source = "defaults"
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"Config file not found: {path}")
            source = str(path)
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ConfigError(f"{path}{where}: not valid YAML ({problem}).") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: the top level must be a mapping of config keys.")
            base = OmegaConf.merge(base, OmegaConf.create(raw))
        dotlist = parse_overrides(overrides)
        if dotlist:
            source = "command-line overrides" if path is None else f"{path} or command-line overrides"
            try:
                overrides_cfg = OmegaConf.from_dotlist(dotlist)
            except yaml.YAMLError as exc:
                raise ConfigError(f"A command-line override is not a valid value ({dotlist}): "
                                  f"{str(exc).splitlines()[0]}") from exc
            for item in dotlist:  # update() (not merge) so that list entries can be addressed: target.0.x=1
                key = item.partition("=")[0]
                OmegaConf.update(base, key, OmegaConf.select(overrides_cfg, key), merge=True)
        obj = OmegaConf.to_object(base)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"Bad config key '{key}' in {source}: {msg}") from exc
    except (TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"Bad config value in {source}: {str(exc).splitlines()[0]}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(a) | set(b))
    diffs: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        name = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(config_diff(va, vb, name + "."))
        elif va != vb:
            diffs.append(f"{name}: {va!r} -> {vb!r}")
    return diffs
