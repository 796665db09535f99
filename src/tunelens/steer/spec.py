"""``--steer alpha=0.9,heads=all|FILE|auto,...``: the steering settings of a probe run, and resolving its heads.

Keys: ``alpha`` (0 < α <= 1), ``heads`` (``all``, a ``{"layer": [heads]}`` JSON file, or ``auto``), and for
``heads=auto``: ``select`` (``gradient`` | ``attention`` | ``ap`` one-pass attribution, ``profile`` one head at a
time, ``profile-layer`` layers then heads), ``k`` (heads kept), ``dev`` (conflicts set the selection runs on;
default ``capitals``, disjoint from the default probe set ``world_facts``), ``dev_n`` (items), ``dev_variant``
(prompt variant of the dev prompts), ``profile_alpha`` (α while profiling; default ``alpha``), ``top_layers``
(``profile-layer``); ``scale_generated`` (true: generated tokens are scaled too).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tunelens.errors import ConfigError
from tunelens.steer.context import check_alpha
from tunelens.steer.heads import HeadSet, resolve_heads

__all__ = ["SELECT_METHODS", "SteerSpec", "parse_steer_spec", "select_spec_heads"]

SELECT_METHODS = ("gradient", "attention", "ap", "profile", "profile-layer")
#: keys a probe run adds to its ``settings.steer`` record (ignored when the record is parsed again)
RECORD_KEYS = ("resolved_heads", "n_heads", "highlight", "selection", "steered_forwards")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass
class SteerSpec:
    alpha: float = 0.9
    heads: str = "all"
    select: str = "gradient"
    k: int = 16
    dev: str = "capitals"
    dev_n: int = 32
    dev_variant: str = "chat"
    profile_alpha: float | None = None
    top_layers: int = 4
    scale_generated: bool = False

    def validate(self) -> SteerSpec:
        self.alpha = check_alpha(self.alpha)
        if self.profile_alpha is not None:
            self.profile_alpha = check_alpha(self.profile_alpha)
        if not self.heads:
            raise ConfigError("--steer heads= is empty; use all, auto or a head-set JSON file.")
        if self.select not in SELECT_METHODS:
            raise ConfigError(f"--steer select={self.select!r}: choose one of {', '.join(SELECT_METHODS)}.")
        for name in ("k", "dev_n", "top_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--steer {name} must be >= 1, got {getattr(self, name)}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _convert(name: str, raw: str, kind: Any) -> Any:
    try:
        if name in ("alpha", "profile_alpha"):
            return float(raw)
        if name in ("k", "dev_n", "top_layers"):
            return int(raw)
        if name == "scale_generated":
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError
            return raw.lower() in _TRUE
    except ValueError:
        raise ConfigError(f"--steer {name}={raw!r} is not a valid {kind}.") from None
    return raw


def parse_steer_spec(text: str | dict[str, Any] | SteerSpec) -> SteerSpec:
    """``"alpha=0.9,heads=all"`` (or a dict of the same keys) -> a validated :class:`SteerSpec`."""
    if isinstance(text, SteerSpec):
        return text.validate()
    known = {f.name: f.type for f in fields(SteerSpec)}
    if isinstance(text, dict):
        items = {k: v for k, v in text.items() if k not in RECORD_KEYS}
    else:
        items = {}
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            key, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"--steer: expected key=value, got {part!r} (e.g. alpha=0.9,heads=all).")
            items[key.strip()] = _convert(key.strip(), value.strip(), known.get(key.strip(), "value"))
    unknown = sorted(set(items) - set(known))
    if unknown:
        raise ConfigError(f"--steer: unknown key(s) {unknown}; known: {', '.join(known)}.")
    items = {k: v for k, v in items.items() if not (k == "profile_alpha" and v is None)}
    return SteerSpec(**items).validate()


def select_spec_heads(model: Any, tokenizer: Any, spec: SteerSpec, progress: bool = True,
                      bf16: bool = False) -> tuple[HeadSet, dict[str, Any] | None]:
    """The spec's head set; for ``heads=auto`` runs the selection (under bf16 autocast if ``bf16``) and returns
    its record too."""
    if spec.heads != "auto":
        return resolve_heads(model, spec.heads), None
    from tunelens.steer.devset import build_devset, load_dev_items
    from tunelens.steer.select import attribute_heads, profile_heads

    items = load_dev_items(spec.dev, spec.dev_n)
    device = next(model.parameters()).device
    dev = build_devset(tokenizer, items, spec.dev_variant, device=device, bf16=bf16)
    was_training = model.training
    model.eval()
    try:
        if spec.select.startswith("profile"):
            sel = profile_heads(model, dev, alpha=spec.profile_alpha or spec.alpha, k=spec.k,
                                granularity="layer" if spec.select == "profile-layer" else "head",
                                top_layers=spec.top_layers, progress=progress)
        else:
            sel = attribute_heads(model, dev, method=spec.select, k=spec.k, tokenizer=tokenizer, items=items,
                                  progress=progress)
    finally:
        model.train(was_training)
    record = sel.to_json()
    record["settings"]["dev"] = spec.dev
    return sel.heads, record
