"""The offline API: `LLM(path, tp=2).generate(prompts, params)`."""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, cast

from .config import EngineConfig
from .launcher import EngineError, LocalRanks, with_rendezvous_port
from .messages import AbortRequest, AddRequest, RequestRejected, StepOutputs
from .sampling import SamplingParams, TokenLogprobs
from .scheduler import CacheStats, RequestError


@dataclass
class Completion:
    prompt_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    # With SamplingParams(prompt_logprobs=K): one entry per prompt token, None for the first.
    prompt_logprobs: list[TokenLogprobs | None] | None = None


class LLM:
    """Starts the rank processes on this machine, generates, and shuts them down cleanly."""

    def __init__(
        self, model: str, tp: int = 1, device: str = "cpu", startup_timeout_s: float = 600, **engine: Any
    ) -> None:
        self.config = with_rendezvous_port(EngineConfig(model_path=str(model), tp=tp, device=device, **engine))
        self.model_config = self.config.validate()
        self.tokenizer = self.config.load_tokenizer() if self.config.load_format != "dummy" else None
        self._ids = itertools.count()
        self.ranks = LocalRanks(self.config)
        try:
            info = self.ranks.wait_ready(startup_timeout_s)
        except BaseException:
            self.ranks.shutdown()
            raise
        assert info is not None
        self.engine_info = info
        self.cache = CacheStats()  # the KV cache as of the last step the engine reported
        self._requests: dict[str, Completion] = {}
        self._rejected: dict[str, str] = {}

    def generate(
        self, prompts: Seq[str] | Seq[list[int]], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[Completion]:
        """Generate for every prompt (one batch, continuously batched) and return in order."""
        return self.wait(self.submit(prompts, params))

    def submit(
        self, prompts: Seq[str] | Seq[list[int]], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[str]:
        """Queue prompts without waiting; returns their request ids (see `wait` and `progress`)."""
        if params is None or isinstance(params, SamplingParams):
            params_list = [params or SamplingParams()] * len(prompts)
        else:
            params_list = list(params)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        assert self.ranks.inbox is not None
        ids = []
        prompt_list: list[str | list[int]] = list(prompts)
        for prompt, p in zip(prompt_list, params_list):
            prompt_ids = self._encode(prompt)
            request_id = f"offline-{next(self._ids)}"
            completion = Completion(prompt_ids, p)
            if p.prompt_logprobs is not None:
                completion.prompt_logprobs = [None]
            self._requests[request_id] = completion
            self.ranks.inbox.put(AddRequest(request_id, prompt_ids, p))
            ids.append(request_id)
        return ids

    def abort(self, request_ids: list[str]) -> None:
        """Stop generating for these requests; `wait` then returns them with finish_reason "abort"."""
        assert self.ranks.inbox is not None
        for request_id in request_ids:
            self.ranks.inbox.put(AbortRequest(request_id))

    @property
    def pages_used(self) -> int:
        """KV pages unfinished requests hold (cached prefix pages nobody holds do not count)."""
        return self.cache.pages_in_use

    def progress(self, request_id: str) -> Completion:
        """The request's completion so far (tokens arrive as `wait`/`poll` process outputs)."""
        return self._requests[request_id]

    def wait(self, request_ids: list[str], timeout_s: float | None = None) -> list[Completion]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while any(self._requests[r].finish_reason is None and r not in self._rejected for r in request_ids):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"requests not finished after {timeout_s}s")
            self.poll(1.0)
        rejected = [self._rejected.pop(r) for r in request_ids if r in self._rejected]
        done = [self._requests.pop(r) for r in request_ids]
        if rejected:
            raise RequestError("; ".join(rejected))
        for completion in done:
            if self.tokenizer is not None:
                text = self.tokenizer.decode(self._visible_tokens(completion), skip_special_tokens=True)
                completion.text = cast(str, text)  # one flat list of ids decodes to one string
        return done

    def _visible_tokens(self, completion: Completion) -> list[int]:
        """Tokens whose text belongs in the output: a final stop or eos token ends the text unseen."""
        ids = completion.token_ids
        stop_ids = set(completion.params.stop_token_ids)
        if not completion.params.ignore_eos:
            stop_ids |= set(self.model_config.eos_token_ids)
        if completion.finish_reason == "stop" and ids and ids[-1] in stop_ids:
            return ids[:-1]
        return ids

    def poll(self, timeout_s: float) -> None:
        """Process whatever the engine reported within `timeout_s`."""
        try:
            message = self.ranks.observe(self.ranks.status.get(timeout=timeout_s))
        except queue.Empty:
            self.ranks.raise_if_failed()
            return
        if isinstance(message, RequestRejected):
            self._rejected[message.request_id] = message.message
        elif isinstance(message, StepOutputs):
            self.cache = message.cache
            for out in message.outputs:
                completion = self._requests.get(out.request_id)
                if completion is None:
                    continue
                if out.token_id is not None:
                    completion.token_ids.append(out.token_id)
                if out.logprobs is not None:
                    completion.logprobs.append(out.logprobs)
                if out.prompt_logprobs and completion.prompt_logprobs is not None:
                    completion.prompt_logprobs.extend(out.prompt_logprobs)
                if out.finish_reason is not None:
                    completion.finish_reason = out.finish_reason.value
        self.ranks.raise_if_failed()

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; this model was loaded with --load-format dummy")
            return list(self.tokenizer.encode(prompt))
        return list(prompt)

    def shutdown(self) -> None:
        self.ranks.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["LLM", "Completion", "EngineError"]
