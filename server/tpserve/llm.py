"""The offline API: `LLM(path, tp=2).generate(prompts, params)`."""

from __future__ import annotations

import itertools
import queue
from dataclasses import dataclass, field
from typing import Any, Sequence as Seq

from transformers import AutoTokenizer

from .config import EngineConfig
from .launcher import EngineError, LocalRanks, with_rendezvous_port
from .protocol import AddRequest, RequestRejected, StepOutputs
from .sampling import SamplingParams, TokenLogprobs
from .scheduler import RequestError


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)


class LLM:
    """Starts the rank processes on this machine, generates, and shuts them down cleanly."""

    def __init__(self, model: str, tp: int = 1, device: str = "cpu", startup_timeout_s: float = 600, **engine: Any) -> None:
        self.config = with_rendezvous_port(EngineConfig(model_path=str(model), tp=tp, device=device, **engine))
        self.model_config = self.config.validate()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model)) if self.config.load_format != "dummy" else None
        self._ids = itertools.count()
        self.ranks = LocalRanks(self.config)
        try:
            info = self.ranks.wait_ready(startup_timeout_s)
        except BaseException:
            self.ranks.shutdown()
            raise
        assert info is not None
        self.engine_info = info
        self.pages_used = 0

    def generate(
        self, prompts: Seq[str] | Seq[list[int]], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[Completion]:
        params_list = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        pending: dict[str, Completion] = {}
        for prompt, p in zip(prompts, params_list):
            prompt_ids = self._encode(prompt)
            request_id = f"offline-{next(self._ids)}"
            pending[request_id] = Completion(prompt_ids)
            assert self.ranks.inbox is not None
            self.ranks.inbox.put(AddRequest(request_id, prompt_ids, p))
        ordered = list(pending.values())
        self._collect(pending)
        for completion in ordered:
            if self.tokenizer is not None:
                completion.text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        return ordered

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; this model was loaded with --load-format dummy")
            return list(self.tokenizer.encode(prompt))
        return list(prompt)

    def _collect(self, pending: dict[str, Completion]) -> None:
        unfinished = dict(pending)
        rejected: list[str] = []
        while unfinished:
            try:
                message = self.ranks.observe(self.ranks.status.get(timeout=1.0))
            except queue.Empty:
                self.ranks.raise_if_failed()
                continue
            if isinstance(message, RequestRejected):
                unfinished.pop(message.request_id, None)
                rejected.append(message.message)
            elif isinstance(message, StepOutputs):
                self.pages_used = message.pages_used
                for out in message.outputs:
                    completion = unfinished.get(out.request_id)
                    if completion is None:
                        continue
                    if out.token_id is not None:
                        completion.token_ids.append(out.token_id)
                    if out.logprobs is not None:
                        completion.logprobs.append(out.logprobs)
                    if out.finish_reason is not None:
                        completion.finish_reason = out.finish_reason.value
                        del unfinished[out.request_id]
            self.ranks.raise_if_failed()
        if rejected:
            raise RequestError("; ".join(rejected))

    def shutdown(self) -> None:
        self.ranks.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["LLM", "Completion", "EngineError"]
