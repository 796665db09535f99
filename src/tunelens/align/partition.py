"""Per-context partition-function estimates Ẑ_c, importance-weight diagnostics, and pseudo-reward baselines.

Z_c = E_{x∼q}[P(x|c)/q(x|c)] for any proposal q that covers p's support, so every batch of samples —
from the base during the probe, from the policy or a proposal during training — gives unbiased terms.
:class:`PartitionEstimator` keeps, per context, the running mean of all weights seen (summed in log space),
the acceptance rate (share of samples with P > 0) and the last batch's effective sample size and largest
normalised weight.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Sequence

import torch

from tunelens.align.features import TargetError


def ess(log_w: torch.Tensor) -> float:
    """Kish effective sample size (Σw)²/Σw² of importance weights given in log space (0 if all zero)."""
    lw = log_w.double()
    if not torch.isfinite(lw).any():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def max_weight(log_w: torch.Tensor) -> float:
    """The largest normalised weight w_max/Σw (1 means a single sample carries the whole estimate)."""
    lw = log_w.double()
    if not torch.isfinite(lw).any():
        return 1.0
    return float(torch.exp(lw.max() - torch.logsumexp(lw, 0)))


class PartitionEstimator:
    """Running importance-sampling means of P/q per context, in log space."""

    def __init__(self, n_contexts: int):
        self.log_sum = [-math.inf] * n_contexts
        self.count = [0] * n_contexts
        self.accepted = [0] * n_contexts
        self.last: dict[int, dict[str, float]] = {}

    def update(self, context_index: Sequence[int], log_w: torch.Tensor) -> None:
        """Add samples with log-weights ``log P − log q`` (``−inf`` for P = 0)."""
        lw = log_w.detach().double().cpu()
        if torch.isnan(lw).any() or (lw == math.inf).any():
            raise TargetError("partition function: an importance weight is NaN or +inf (check the target's scorers "
                              "and the proposal's log-probabilities).")
        idx = torch.tensor(list(context_index))
        for c in sorted(set(idx.tolist())):
            sel = lw[idx == c]
            self.log_sum[c] = float(torch.logsumexp(torch.cat([sel, torch.tensor([self.log_sum[c]],
                                                                                    dtype=torch.float64)]), 0))
            self.count[c] += int(sel.numel())
            self.accepted[c] += int(torch.isfinite(sel).sum())
            self.last[c] = {"ess": ess(sel), "max_weight": max_weight(sel), "n": float(sel.numel())}

    def log_z(self, c: int) -> float:
        if self.count[c] == 0:
            raise TargetError(f"partition function of context {c}: no samples seen yet.")
        if self.accepted[c] == 0:
            raise TargetError(f"partition function of context {c}: none of {self.count[c]} samples has non-zero "
                              "target mass (zero acceptance); use more probe samples or a less rare constraint.")
        return self.log_sum[c] - math.log(self.count[c])

    def log_z_of(self, context_index: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.log_z(c) for c in context_index], dtype=torch.float64)

    def acceptance(self, c: int) -> float:
        return self.accepted[c] / self.count[c] if self.count[c] else 0.0

    def summary(self, contexts: Sequence[int] | None = None) -> dict[str, float]:
        cs = [c for c in (range(len(self.count)) if contexts is None else contexts) if self.accepted[c] > 0]
        if not cs:
            return {}
        out = {"z": sum(math.exp(self.log_z(c)) for c in cs) / len(cs),
               "log_z": sum(self.log_z(c) for c in cs) / len(cs),
               "acceptance": sum(self.acceptance(c) for c in cs) / len(cs)}
        last = [self.last[c] for c in cs if c in self.last]
        if last:
            out["ess_fraction"] = sum(d["ess"] / d["n"] for d in last) / len(last)
            out["max_weight"] = max(d["max_weight"] for d in last)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"log_sum": list(self.log_sum), "count": list(self.count), "accepted": list(self.accepted),
                "last": {str(k): v for k, v in self.last.items()}}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.log_sum = [float(v) for v in st["log_sum"]]
        self.count = [int(v) for v in st["count"]]
        self.accepted = [int(v) for v in st["accepted"]]
        self.last = {int(k): v for k, v in st.get("last", {}).items()}


BASELINES = ("moving_average", "leave_one_out", "exact", "none")


class Baseline:
    """Baselines B for the pseudo-reward, per context (or shared): none of them uses the sample it is applied to.

    * ``moving_average`` — mean of the last ``window`` pseudo-rewards of earlier steps (leave-one-out mean of
      the current batch while no earlier step exists);
    * ``leave_one_out`` — mean of the other samples of the same context in the same batch (RLOO);
    * ``exact`` — E_π[R] in closed form: 1 for forward KL (E_π[p/π] = Σp = 1); other losses have none;
    * ``none`` — B = 0.
    """

    def __init__(self, kind: str, loss: str, window: int = 1024, per_context: bool = True):
        if kind not in BASELINES:
            raise TargetError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}.")
        if kind == "exact" and loss != "fkl":
            raise TargetError(f"baseline=exact is known in closed form only for loss=fkl (E_π[p/π] = 1), not {loss!r}; "
                              "use moving_average or leave_one_out.")
        self.kind, self.window, self.per_context = kind, window, per_context
        self.history: dict[int, deque] = {}

    def _key(self, c: int) -> int:
        return c if self.per_context else -1

    def values(self, context_index: Sequence[int], reward: torch.Tensor) -> torch.Tensor:
        """B per sample for the current batch (call before :meth:`update`)."""
        reward = reward.double()
        if self.kind == "none":
            return torch.zeros_like(reward)
        if self.kind == "exact":
            return torch.ones_like(reward)
        idx = torch.tensor([self._key(c) for c in context_index])
        out = torch.zeros_like(reward)
        for key in sorted(set(idx.tolist())):
            sel = idx == key
            hist = self.history.get(key)
            if self.kind == "moving_average" and hist:
                out[sel] = sum(hist) / len(hist)
            else:
                r = reward[sel]
                n = r.numel()
                out[sel] = (r.sum() - r) / (n - 1) if n > 1 else torch.zeros_like(r)
        return out

    def update(self, context_index: Sequence[int], reward: torch.Tensor) -> None:
        if self.kind != "moving_average":
            return
        for c, r in zip(context_index, reward.double().tolist()):
            self.history.setdefault(self._key(c), deque(maxlen=self.window)).append(float(r))

    def state_dict(self) -> dict[str, Any]:
        return {str(k): list(v) for k, v in self.history.items()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.history = {int(k): deque(v, maxlen=self.window) for k, v in st.items()}
