"""Shared fixtures: paths to the repository and ../shared/data, and a runner for the real ``tunelens`` CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ALPACA = SHARED_DATA / "instructions" / "alpaca_en_demo_llamafactory.json"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (always there for developers and CI)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests read real data from ../shared beside the repository.")
    return SHARED_DATA


@pytest.fixture(scope="session")
def alpaca_path(shared_data: Path) -> Path:
    """999 real Alpaca-style instruction records (JSON list of instruction/input/output)."""
    assert ALPACA.is_file(), f"{ALPACA} is missing"
    return ALPACA


def cli_env(**extra: str) -> dict[str, str]:
    """The environment the CLI runs in under test: quiet (CI=true), offline, never a GPU."""
    env = dict(os.environ)
    env.update(CI="true", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("TUNELENS_DEBUG", None)
    env.update(extra)
    return env


def _cli_command(args) -> list[str]:
    return [sys.executable, "-m", "tunelens.cli.main", *map(str, args)]


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli("sft", cfg, "--out", out, cwd=..., env={...}, timeout=...)`` runs ``python -m tunelens.cli.main``."""

    def run(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(_cli_command(args), cwd=cwd or REPO, env=cli_env(**(env or {})), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    return run


@pytest.fixture(scope="session")
def start_cli() -> Callable[..., subprocess.Popen]:
    """Like ``run_cli`` but returns the running ``Popen`` (text pipes) so several CLI processes can overlap."""

    def start(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(_cli_command(args), cwd=cwd or REPO, env=cli_env(**(env or {})), text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return start
