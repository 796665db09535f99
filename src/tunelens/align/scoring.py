"""The three models an f-DPG step talks to: the policy π, the base a and the proposal q, behind one object.

``AlignModels`` samples from and scores under each of them. With LoRA and a base equal to the policy's
initial weights, the base is the policy with its adapters switched off (no second copy in memory). An
adaptive proposal starts as the base and is replaced by a frozen snapshot of the policy when the policy
is closer to the target (:meth:`AlignModels.snapshot_policy_as_proposal`).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from tunelens.align.samples import Context, Samples
from tunelens.align.sampling import Sampled, sample, score_in_batches
from tunelens.probes.engine import pad_token_id
from tunelens.train.checkpoint import trainable_state


@dataclass
class AlignModels:
    policy: Any  # the unwrapped trainable model (PEFT model for LoRA)
    tokenizer: Any
    base: Any | None  # a separate frozen base; None: the policy with its adapters disabled
    micro_batch: int
    bf16: bool
    proposal_model: Any | None = None  # frozen snapshot of the policy (adaptive proposal after a swap)

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.policy, self.tokenizer)

    @contextlib.contextmanager
    def base_model(self) -> Iterator[Any]:
        if self.base is not None:
            yield self.base
            return
        with self.policy.disable_adapter():
            yield self.policy

    @contextlib.contextmanager
    def model_for(self, which: str) -> Iterator[Any]:
        """``policy``, ``base`` or ``proposal`` (the snapshot if there is one, else the base)."""
        if which == "policy":
            yield self.policy
        elif which == "proposal" and self.proposal_model is not None:
            yield self.proposal_model
        else:
            with self.base_model() as m:
                yield m

    def sample(self, which: str, contexts: Sequence[Context], max_new_tokens: int,
               generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> Sampled:
        with self.model_for(which) as m:
            return sample(m, self.tokenizer, contexts, max_new_tokens=max_new_tokens, batch_size=self.micro_batch,
                          bf16=self.bf16, generator=generator, uniforms=uniforms)

    def score(self, which: str, samples: Samples) -> torch.Tensor:
        with self.model_for(which) as m:
            was = m.training
            m.eval()
            try:
                return score_in_batches(m, samples, pad_id=self.pad_id, batch_size=self.micro_batch, bf16=self.bf16)
            finally:
                m.train(was)

    def snapshot_policy_as_proposal(self) -> None:
        if self.proposal_model is None:
            self.proposal_model = copy.deepcopy(self.policy)
            for p in self.proposal_model.parameters():
                p.requires_grad_(False)
            self.proposal_model.eval()
        else:
            self.load_proposal(trainable_state(self.policy))

    def proposal_state(self) -> dict[str, torch.Tensor]:
        assert self.proposal_model is not None
        names = set(trainable_state(self.policy))
        return {n: p.detach().contiguous().clone() for n, p in self.proposal_model.named_parameters() if n in names}

    def load_proposal(self, weights: dict[str, torch.Tensor]) -> None:
        if self.proposal_model is None:
            self.proposal_model = copy.deepcopy(self.policy)
            self.proposal_model.eval()
        params = dict(self.proposal_model.named_parameters())
        with torch.no_grad():
            for n, v in weights.items():
                params[n].copy_(v)
        for p in self.proposal_model.parameters():
            p.requires_grad_(False)
