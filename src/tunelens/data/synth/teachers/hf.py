"""A local Hugging Face causal LM as teacher: batched generation, greedy or seeded sampling, bf16 autocast.

Greedy decoding reuses the probes' engine (:func:`tunelens.probes.engine.generate_greedy`: a KV-cache loop that
drops finished rows and honours stop strings). Sampling uses ``model.generate(do_sample=True)`` on left-padded
batches; each batch is seeded from ``(seed, the batch's prompts)``, so the same requests in the same batch give
the same text run after run. A batch that fails (e.g. out of memory) turns into error results, never an
exception.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from tunelens.data.synth.teachers.base import (OnResult, SamplingParams, TeacherRequest, TeacherResult, content_hash,
                                               request_messages)
from tunelens.errors import ConfigError

__all__ = ["HFTeacher", "PROMPT_FORMATS"]

PROMPT_FORMATS = ("completion", "chat")


class HFTeacher:
    """Teacher backed by ``tunelens.models.load_model(spec)`` (a preset, HF directory, ``.gguf`` or cached id).

    ``prompt_format="completion"`` feeds the text as is (BOS added if the tokenizer adds one);
    ``"chat"`` wraps it with ``template`` (``{text}`` is replaced) as the user turn of the tokenizer's chat
    template. Prompts longer than ``max_prompt_tokens`` keep their last tokens.
    """

    name = "hf"

    def __init__(self, model: str, params: SamplingParams | None = None, *, prompt_format: str = "completion",
                 template: str = "{text}", system: str | None = None, batch_size: int = 8, bf16: bool = True,
                 dtype: str = "float32", max_prompt_tokens: int = 1536, seed: int = 0, loaded: Any = None):
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"teacher.prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        if batch_size < 1:
            raise ConfigError(f"teacher.batch_size must be >= 1, got {batch_size}")
        self.model_spec, self.params, self.prompt_format = model, params or SamplingParams(), prompt_format
        self.template, self.system, self.batch_size, self.bf16 = template, system, batch_size, bf16
        self.dtype, self.max_prompt_tokens, self.seed = dtype, max_prompt_tokens, seed
        if loaded is None:
            from tunelens.models import load_model

            loaded = load_model(model, dtype=dtype, seed=seed)
        self.model, self.tokenizer = loaded
        if prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"teacher.prompt_format=chat, but the tokenizer of '{model}' has no chat template; "
                              "use prompt_format=completion")

    def identity(self) -> dict[str, Any]:
        return {"kind": "hf", "model": self.model_spec, "prompt_format": self.prompt_format,
                "template": self.template if self.prompt_format == "chat" else None, "system": self.system,
                "dtype": self.dtype, "bf16": self.bf16, "max_prompt_tokens": self.max_prompt_tokens,
                "params": self.params.to_dict()}

    def encode(self, req: TeacherRequest) -> list[int]:
        """Prompt token ids of one request (left-truncated to ``max_prompt_tokens``)."""
        tok = self.tokenizer
        if self.prompt_format == "chat" or req.messages:
            ids = tok.apply_chat_template(request_messages(req, self.template, self.system), tokenize=True,
                                          add_generation_prompt=True, return_dict=False)
            ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        else:
            ids = tok(req.prompt, add_special_tokens=True)["input_ids"]
        return ids[-self.max_prompt_tokens:] if ids else ids

    def complete(self, requests: Sequence[TeacherRequest], on_result: OnResult = None) -> list[TeacherResult]:
        out: list[TeacherResult] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            try:
                got = self._complete_batch(batch)
            except Exception as exc:  # a failed batch is counted, not fatal
                msg = f"{type(exc).__name__}: {exc}"
                got = [TeacherResult("", "error", error=msg) for _ in batch]
            for i, res in enumerate(got, start):
                if on_result is not None:
                    on_result(i, res)
            out.extend(got)
        return out

    def _complete_batch(self, batch: Sequence[TeacherRequest]) -> list[TeacherResult]:
        prompts = [self.encode(r) for r in batch]
        max_new = max(r.max_tokens or self.params.max_tokens for r in batch)
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is None:
                raise ValueError("a prompt encodes to no tokens and the tokenizer has no BOS token")
            for i in empty:
                prompts[i] = [bos]
        if self.params.greedy:
            rows = self._greedy(prompts, max_new)
        else:
            rows = self._sample(prompts, max_new)
        results = []
        for req, prompt, (ids, why) in zip(batch, prompts, rows):
            limit = req.max_tokens or self.params.max_tokens
            if len(ids) > limit:
                ids, why = ids[:limit], "length"
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for s in self.params.stop:
                if s and s in text:
                    text, why = text[:text.index(s)], "stop"
            results.append(TeacherResult(text, why, usage={"prompt_tokens": len(prompt),
                                                           "completion_tokens": len(ids)}))
        return results

    def _greedy(self, prompts: list[list[int]], max_new: int) -> list[tuple[list[int], str]]:
        from tunelens.probes.engine import generate_greedy

        gens = generate_greedy(self.model, self.tokenizer, prompts, max_new_tokens=max_new,
                               stop_strings=list(self.params.stop), batch_size=len(prompts), bf16=self.bf16,
                               progress=False)
        return [(g.token_ids, "length" if g.stopped == "length" else "stop") for g in gens]

    @torch.inference_mode()
    def _sample(self, prompts: list[list[int]], max_new: int) -> list[tuple[list[int], str]]:
        from tunelens.probes.engine import autocast_context, left_pad, model_device, pad_token_id

        device = model_device(self.model)
        pad = pad_token_id(self.model, self.tokenizer)
        ids, mask, _ = left_pad(prompts, pad, device)
        seed = int(content_hash(self.params.seed, prompts)[:8], 16)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        with torch.random.fork_rng(devices=[]), autocast_context(device, self.bf16):
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                      temperature=self.params.temperature, top_p=self.params.top_p, top_k=0,
                                      max_new_tokens=max_new, pad_token_id=pad)
        rows = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((k for k, t in enumerate(row) if t in eos_ids), None)
            rows.append((row, "length") if cut is None else (row[:cut], "stop"))
        return rows

    def close(self) -> None:
        pass
