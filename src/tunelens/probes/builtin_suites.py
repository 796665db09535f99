"""Built-in probe suites: their files under the shared data directory, and how that directory is found."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tunelens.errors import DataError

__all__ = ["BUILTIN_SUITES", "SHARED_DATA_ENV", "builtin_path", "shared_data_dir", "suite_kind"]

#: Environment variable naming the shared data directory (the folder holding ``conflicts/`` ...).
SHARED_DATA_ENV = "TUNELENS_SHARED_DATA"

# --------------------------------------------------------------------------- built-ins

@dataclass(frozen=True)
class _Builtin:
    kind: str  # "conflict" | "memotrap" | "contextqa" | "haystack"
    path: str  # relative to the shared data directory
    description: str
    fields: Mapping[str, str] = field(default_factory=dict)


_BUILTINS: dict[str, _Builtin] = {
    "world_facts": _Builtin(
        "conflict", "conflicts/world_facts.json",
        "CF_World_Facts [A]: 313 counterfactual world-fact passages (answer vs memory_answer); "
        "its first 196 items are exactly 'capitals'"),
    "capitals": _Builtin(
        "conflict", "conflicts/country_capitals_only.json",
        "CF_Capitals [A]: 196 counterfactual capital-city passages (= the first 196 of 'world_facts')"),
    "memotrap": _Builtin(
        "memotrap", "conflicts/memo_trap_prize_release.jsonl",
        "MemoTrap / CF_Quotes [A]: the 936-item Inverse Scaling Prize release (proverb ending + "
        "hate-speech ending)"),
    "memotrap_proverb_ending": _Builtin(
        "memotrap", "conflicts/memo_trap_proverb_ending.csv", "MemoTrap part 1, proverb ending (860 rows)"),
    "memotrap_proverb_translation": _Builtin(
        "memotrap", "conflicts/memo_trap_proverb_translation.csv",
        "MemoTrap part 2, proverb translation (843 rows)"),
    "memotrap_hate_speech_ending": _Builtin(
        "memotrap", "conflicts/memo_trap_hate_speech_ending.csv",
        "MemoTrap part 3, hate-speech ending (100 rows; offensive phrases by design)"),
    "memotrap_history_of_science_qa": _Builtin(
        "memotrap", "conflicts/memo_trap_history_of_science_qa.csv",
        "MemoTrap part 4, history-of-science multiple choice (736 rows)"),
    "xquad": _Builtin(
        "contextqa", "contextqa/xquad_en_squad_v1.1_dev_subset.json",
        "XQuAD-en: 1,190 SQuAD v1.1 dev questions over 240 paragraphs (EM/F1, containment)"),
    "boolq": _Builtin(
        "contextqa", "contextqa/boolq_dev.jsonl",
        "BoolQ dev: 3,270 yes/no questions with a Wikipedia passage (answers 'yes'/'no')",
        {"context": "passage"}),
    "haystack": _Builtin(
        "haystack", "haystack",
        "Needle in a haystack [B]: Paul Graham essays + the San Francisco needle, keyword recall "
        "over a length x depth grid"),
}

#: Built-in suite name -> one-line description (for ``tunelens probe --list`` and docs).
BUILTIN_SUITES: dict[str, str] = {name: b.description for name, b in _BUILTINS.items()}


def suite_kind(name: str) -> str:
    """``"conflict"``, ``"memotrap"``, ``"contextqa"`` or ``"haystack"`` for a built-in name."""
    if name not in _BUILTINS:
        raise DataError(f"unknown built-in suite {name!r}; built-ins: {sorted(_BUILTINS)}")
    return _BUILTINS[name].kind


def _default_shared_candidates() -> list[Path]:
    """``<repo>/../shared/data`` for a source checkout, then ``../shared/data`` and
    ``shared/data`` relative to the working directory (the installed case)."""
    out: list[Path] = []
    pkg = Path(__file__).resolve().parents[1]  # .../tunelens
    if pkg.parent.name == "src":  # editable / source checkout: <repo>/src/tunelens
        out.append(pkg.parent.parent.parent / "shared" / "data")
    cwd = Path.cwd()
    for cand in (cwd.parent / "shared" / "data", cwd / "shared" / "data"):
        if cand not in out:
            out.append(cand)
    return out


def shared_data_dir(shared_dir: str | Path | None = None) -> Path:
    """The shared data directory: ``shared_dir``, else ``$TUNELENS_SHARED_DATA``, else the default.

    The default is ``<repo>/../shared/data`` (``<repo>`` being the checkout holding
    ``src/tunelens``); for an installed package, ``../shared/data`` or ``shared/data`` relative
    to the working directory. Raises :class:`DataError` naming what was tried.
    """
    if shared_dir is not None:
        tried = [("the shared_dir argument", Path(shared_dir))]
    elif os.environ.get(SHARED_DATA_ENV):
        tried = [(f"${SHARED_DATA_ENV}", Path(os.environ[SHARED_DATA_ENV]))]
    else:
        tried = [("default", p) for p in _default_shared_candidates()]
    for _, path in tried:
        if path.is_dir():
            return path
    where = "; ".join(f"{p} (from {how})" for how, p in tried)
    raise DataError(f"shared data directory not found: {where}. Pass shared_dir=..., or set "
                    f"${SHARED_DATA_ENV} to the folder that holds conflicts/, contextqa/ and haystack/")


def builtin_path(name: str, shared_dir: str | Path | None = None) -> Path:
    """The file (or folder) of a built-in suite; :class:`DataError` if it is missing."""
    kind = suite_kind(name)  # raises for unknown names
    base = shared_data_dir(shared_dir)
    path = base / _BUILTINS[name].path
    if not path.exists():
        raise DataError(f"{path}: file of the built-in {kind} suite {name!r} not found in the shared "
                        f"data directory {base}")
    return path
