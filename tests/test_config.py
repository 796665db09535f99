"""Config loading: list entries addressable from key=value overrides, bad overrides -> ConfigError."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunelens.align.config import AlignConfig
from tunelens.config import load_config
from tunelens.errors import ConfigError
from tunelens.train import SFTConfig

REPO = Path(__file__).resolve().parents[1]


def test_override_reaches_into_a_list_entry():
    cfg = load_config(AlignConfig, REPO / "configs/align-tiny-pointwise.yaml", ["target.0.feature.pattern=abc"])
    assert cfg.target[0]["feature"]["pattern"] == "abc"
    assert cfg.target[0]["type"] == "pointwise"  # the rest of the entry is kept


def test_plain_overrides_still_merge():
    cfg = load_config(SFTConfig, REPO / "configs/sft-tiny.yaml", ["max_steps=3", "optim.lr=0.1"])
    assert cfg.max_steps == 3 and cfg.optim.lr == 0.1


@pytest.mark.parametrize("bad, needle", [(["max_steps=abc"], "max_steps"), (["nokey=1"], "nokey"),
                                         (["data.paths.5=x"], "data.paths[5]")])
def test_bad_overrides_name_the_key(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(SFTConfig, REPO / "configs/sft-tiny.yaml", bad)
