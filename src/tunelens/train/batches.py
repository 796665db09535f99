"""The deterministic stream of training rows: which rows every optimizer step and process sees.

Rows (packed or single examples) are shuffled per epoch with ``seed + epoch``; the stream is the
concatenation of epochs. Optimizer step ``s`` takes global rows ``[s*G, (s+1)*G)`` with
``G = batch_size * grad_accum * world_size``; micro-batch ``k`` of process ``r`` holds the rows
``(k * world + r) * batch_size ...``. The data position of a run is therefore just its step, which
is what makes resume exact, and the rows of a step do not depend on how they are split across
processes, which is what makes N-process training match 1-process training.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class BatchPlan:
    n_rows: int
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def steps_for_epochs(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.n_rows / self.rows_per_step))

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.n_rows))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def global_rows(self, step: int) -> list[int]:
        """Row indices of optimizer step ``step`` (all processes), crossing epoch boundaries if needed."""
        start = step * self.rows_per_step
        out: list[int] = []
        epoch, offset = divmod(start, self.n_rows)
        while len(out) < self.rows_per_step:
            order = self.epoch_order(epoch)
            take = order[offset: offset + self.rows_per_step - len(out)]
            out.extend(take)
            epoch, offset = epoch + 1, 0
        return out

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The ``grad_accum`` micro-batches (row indices) process ``rank`` runs at ``step``."""
        rows = self.global_rows(step)
        b, w = self.batch_size, self.world_size
        return [rows[(k * w + rank) * b: (k * w + rank + 1) * b] for k in range(self.grad_accum)]

    def epoch_of(self, step: int) -> float:
        return step * self.rows_per_step / self.n_rows


def select(items: Sequence[R], idx: list[int]) -> list[R]:
    return [items[i] for i in idx]
