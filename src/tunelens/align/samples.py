"""The plain records that flow through alignment: contexts (prompts) and batches of sampled continuations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Context:
    """One conditioning prompt: the target p_c and its partition function Z_c are per context.

    ``meta`` carries what context-aware scorers need (e.g. ``answer`` for the conflicts target).
    """

    index: int
    prompt_ids: tuple[int, ...]
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Samples:
    """Continuations ``token_ids[i]`` (ending with the EOS token when one was sampled) of ``contexts[i]``."""

    contexts: list[Context]
    token_ids: list[list[int]]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def context_index(self) -> list[int]:
        return [c.index for c in self.contexts]

    def select(self, rows: list[int]) -> "Samples":
        return Samples([self.contexts[i] for i in rows], [self.token_ids[i] for i in rows],
                       [self.texts[i] for i in rows])
