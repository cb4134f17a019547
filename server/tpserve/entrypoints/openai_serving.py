"""OpenAI completions and chat completions on top of the async engine.

One HTTP request becomes `len(prompts) * n` engine requests ("choices"); each choice has its own
detokenizer and stop-string matcher. Streaming merges the choices' deltas as they come.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.sampling import SamplingParams, StructuredOutput, TokenLogprobs
from .chat_output import ToolMode
from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .engine_client import AsyncEngine
from .metrics import SequenceTimes, ServerMetrics
from .openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    PromptInput,
    SamplingFields,
    TokenizeRequest,
)
from .reasoning import ThinkTags, reasoning_tags
from .tool_calls import TOOL_CALL_PARSERS, detect_tool_call_parser, tool_call_parser

log = logging.getLogger(__name__)


def choice_seed(seed: int, choice: int) -> int:
    """Choice i of a seeded request samples with seed + i, wrapped into the int64 range seeds travel in."""
    return (seed + choice + 2**63) % 2**64 - 2**63


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class ChoiceState:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    matcher: StopStringMatcher
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, TokenLogprobs]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)  # [None, ...] when asked
    score_only: bool = False  # max_tokens 0 with echo: the one token generated is not part of the answer
    first_token_at: float | None = None  # monotonic; for metrics and the request's log line


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    text: str
    logprobs: list[tuple[int, TokenLogprobs]]
    finish_reason: str | None


@dataclass(frozen=True)
class ChatParsers:
    """How chat answers are read back: the model's tool-call syntax and its thinking tags."""

    tool_call_parser: str | None = None
    think: ThinkTags | None = None

    @staticmethod
    def of(tool_call_parser: str | None, reasoning_parser: str | None, tokenizer: Any) -> ChatParsers:
        template = getattr(tokenizer, "chat_template", None)
        detected = tool_call_parser or detect_tool_call_parser(template if isinstance(template, str) else None)
        if detected is not None and tool_call_parser is None:
            log.info("tool calls: the chat template writes them %s-style (--tool-call-parser to change)", detected)
        return ChatParsers(detected, reasoning_tags(reasoning_parser) if reasoning_parser else None)


class OpenAIServing:
    def __init__(
        self,
        engine: AsyncEngine,
        tokenizer: Any,
        model_name: str,
        vocab_size: int,
        metrics: ServerMetrics,
        parsers: ChatParsers = ChatParsers(),
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.metrics = metrics
        self.vocab_size = vocab_size
        self.parsers = parsers

    # -- request -> engine requests ------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        assert self.engine.info is not None
        return self.engine.info.max_model_len

    def check_model(self, requested: str) -> None:
        if requested != self.model_name:
            raise LookupError(f"The model '{requested}' does not exist; this server serves '{self.model_name}'")

    async def completion_prompts(self, request: CompletionRequest) -> list[list[int]]:
        texts, id_lists = _texts_or_token_ids(request.prompt)
        if texts:
            if any(t == "" for t in texts):
                raise BadRequest("prompt must not be empty", "prompt")
            return await asyncio.to_thread(lambda: [self.tokenizer.encode(t) for t in texts])
        if not id_lists or any(len(ids) == 0 for ids in id_lists):
            raise BadRequest("prompt must not be empty", "prompt")
        for ids in id_lists:
            self.check_token_ids(ids, "prompt")
        return id_lists

    def check_token_ids(self, ids: list[int], param: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise BadRequest(f"{param} token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})", param)

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        if request.messages is not None:
            messages = [m.for_template() for m in request.messages]
            return await self._render_chat(messages, add_generation_prompt=request.add_generation_prompt)
        text = request.prompt or ""
        return await asyncio.to_thread(
            lambda: list(self.tokenizer.encode(text, add_special_tokens=request.add_special_tokens))
        )

    async def _render_chat(self, messages: list[dict[str, Any]], **template_args: Any) -> list[int]:
        """The conversation's prompt tokens; a template that refuses it is the request's error (400)."""

        def render() -> list[int]:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, **template_args)
            return list(self.tokenizer.encode(text, add_special_tokens=False))

        try:
            return await asyncio.to_thread(render)
        except Exception as exc:  # a template that rejects the conversation (e.g. role order)
            raise BadRequest(f"messages could not be rendered with the chat template: {exc}", "messages") from exc

    def tool_mode(self, request: ChatCompletionRequest) -> ToolMode | None:
        """How this request's answer calls tools (None: it does not)."""
        choice = request.effective_tool_choice
        if choice == "none":
            return None
        if choice == "required":
            return ToolMode("required", parallel=request.parallel_tool_calls)
        if isinstance(choice, NamedToolChoice):
            return ToolMode("named", function=choice.function.name)
        if self.parsers.tool_call_parser is None:
            raise BadRequest(
                "tool_choice auto needs the model's tool-call syntax, which its chat template does not show: "
                f"start the server with --tool-call-parser ({', '.join(TOOL_CALL_PARSERS)}), or send "
                "tool_choice required or a named function",
                "tool_choice",
            )
        return ToolMode("auto", tool_call_parser(self.parsers.tool_call_parser), parallel=request.parallel_tool_calls)

    async def chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        messages = [m.for_template() for m in request.messages]
        # Templates that take tools render them into the prompt (as vLLM does, also for "none").
        tools = [tool.model_dump(exclude_none=True) for tool in request.tools] if request.tools else None
        # The request's own template variables may not override the ones it sets through fields.
        template_args = (request.chat_template_kwargs or {}) | {
            "tools": tools,
            "add_generation_prompt": request.add_generation_prompt,
            "continue_final_message": request.continue_final_message,
        }
        if request.chat_template is not None:
            template_args["chat_template"] = request.chat_template
        return await self._render_chat(messages, **template_args)

    def sampling_params(
        self, request: SamplingFields, prompt_len: int, max_tokens: int | None, logprobs: int | None, choice: int
    ) -> SamplingParams:
        room = self.max_model_len - prompt_len
        if room < 1:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt has {prompt_len}",
                "messages" if isinstance(request, ChatCompletionRequest) else "prompt",
            )
        if max_tokens == 0:
            max_tokens = 1  # the engine always generates; the token is dropped (score_only)
        elif max_tokens is None:
            max_tokens = room if isinstance(request, ChatCompletionRequest) else min(16, room)
        elif max_tokens > room:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion)",
                "max_tokens",
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            seed=None if request.seed is None else choice_seed(request.seed, choice),
            stop_token_ids=tuple(request.stop_token_ids or ()),
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=request.prompt_logprobs_wanted,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=request.repetition_penalty,
            min_tokens=request.min_tokens,
            min_p=request.min_p,
            logit_bias=self.logit_bias(request.logit_bias),
            structured=self.structured(request),
        )

    def structured(self, request: SamplingFields) -> StructuredOutput | None:
        try:
            return request.structured_output()
        except ValueError as exc:
            raise BadRequest(str(exc), "response_format") from exc

    def logit_bias(self, bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
        """OpenAI's {"token id": bias} as (token, bias) pairs; a key that is no token id is a 400."""
        pairs = []
        for key, value in (bias or {}).items():
            if not key.isdigit() or int(key) >= self.vocab_size:
                raise BadRequest(f"logit_bias key {key!r} is not a token id in [0, {self.vocab_size})", "logit_bias")
            pairs.append((int(key), value))
        return tuple(pairs)

    def make_choices(
        self,
        request: SamplingFields,
        prompts: list[list[int]],
        max_tokens: int | None,
        logprobs: int | None,
        per_prompt: int | None = None,
    ) -> list[ChoiceState]:
        """`per_prompt` (default `n`) choices for every prompt, indexed in that order."""
        count = per_prompt or request.n
        choices = []
        for p, prompt_ids in enumerate(prompts):
            for i in range(count):
                params = self.sampling_params(request, len(prompt_ids), max_tokens, logprobs, i)
                choices.append(
                    ChoiceState(
                        index=p * count + i,
                        prompt_ids=prompt_ids,
                        params=params,
                        detokenizer=IncrementalDetokenizer(
                            self.tokenizer, request.skip_special_tokens, request.spaces_between_special_tokens
                        ),
                        matcher=StopStringMatcher(request.stop_strings, request.include_stop_str_in_output),
                        prompt_logprobs=[None] if params.prompt_logprobs is not None else [],
                        score_only=max_tokens == 0,
                    )
                )
        return choices

    # -- running choices -------------------------------------------------------------------------
    async def run_choice(
        self, request_id: str, choice: ChoiceState, eos_ids: tuple[int, ...]
    ) -> AsyncIterator[ChoiceDelta]:
        started = time.monotonic()
        last = started
        queued_s: float | None = None
        self.metrics.prompt_tokens.inc(len(choice.prompt_ids))
        hidden_ids = set(choice.params.stop_token_ids) | (set() if choice.params.ignore_eos else set(eos_ids))
        try:
            async for out in self.engine.generate(f"{request_id}-{choice.index}", choice.prompt_ids, choice.params):
                now = time.monotonic()
                if out.prompt_logprobs is not None:
                    choice.prompt_logprobs.extend(out.prompt_logprobs)
                    continue
                if out.token_id is not None and choice.score_only:
                    choice.finish_reason = "length"  # the prompt is scored; its continuation is not wanted
                    yield ChoiceDelta(choice.index, "", [], "length")
                    return
                if out.token_id is None:
                    if out.finish_reason is not None and out.finish_reason.value != "abort":
                        # Ended without a new token: the KV cache cannot hold this sequence's next one.
                        choice.finish_reason = out.finish_reason.value
                        text, _ = choice.matcher.feed(choice.detokenizer.flush())
                        yield ChoiceDelta(choice.index, text + choice.matcher.flush(), [], choice.finish_reason)
                    return
                if out.queued_s is not None:
                    queued_s = out.queued_s
                if not choice.token_ids:
                    choice.first_token_at = now
                    self.metrics.ttft.observe(now - started)
                else:
                    self.metrics.itl.observe(now - last)
                last = now
                self.metrics.generation_tokens.inc()
                choice.token_ids.append(out.token_id)
                new_logprobs = [(out.token_id, out.logprobs)] if out.logprobs is not None else []
                choice.logprobs.extend(new_logprobs)
                finished = out.finish_reason is not None
                # A stop or eos token ends the text without appearing in it (as in vLLM and OpenAI).
                piece = "" if finished and out.token_id in hidden_ids else choice.detokenizer.add(out.token_id)
                if finished:
                    piece += choice.detokenizer.flush()
                text, hit_stop = choice.matcher.feed(piece)
                if hit_stop:
                    choice.finish_reason = "stop"
                    yield ChoiceDelta(choice.index, text, new_logprobs, "stop")
                    return  # leaving the engine stream aborts the request and frees its pages
                if out.finish_reason is not None:
                    choice.finish_reason = out.finish_reason.value
                    yield ChoiceDelta(choice.index, text + choice.matcher.flush(), new_logprobs, choice.finish_reason)
                    return
                if text or new_logprobs:
                    yield ChoiceDelta(choice.index, text, new_logprobs, None)
        finally:
            # A choice left without a finish reason was aborted: its client went away, or it failed.
            self.metrics.finished(choice.finish_reason or "abort")
            if choice.finish_reason is not None:
                SequenceTimes(
                    started, choice.first_token_at, last, queued_s, len(choice.prompt_ids), len(choice.token_ids)
                ).observe(self.metrics, time.monotonic())

    async def merged(
        self, request_id: str, choices: list[ChoiceState], eos_ids: tuple[int, ...]
    ) -> AsyncIterator[ChoiceDelta]:
        """All choices' deltas, as they come; cancelling this cancels (and aborts) every choice."""
        if len(choices) == 1:
            async for delta in self.run_choice(request_id, choices[0], eos_ids):
                yield delta
            return
        queue: asyncio.Queue[ChoiceDelta | BaseException | None] = asyncio.Queue()

        async def pump(choice: ChoiceState) -> None:
            try:
                async for delta in self.run_choice(request_id, choice, eos_ids):
                    queue.put_nowait(delta)
                queue.put_nowait(None)
            except BaseException as exc:  # surfaced to the consumer below
                queue.put_nowait(exc)

        tasks = [asyncio.create_task(pump(c)) for c in choices]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- response shapes -------------------------------------------------------------------------
    def token_text(self, token_id: int) -> str:
        text: str = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text

    def completion_logprobs(
        self, entries: Sequence[tuple[int, TokenLogprobs | None]], offset: int = 0
    ) -> dict[str, Any]:
        """OpenAI's legacy shape; an entry without log-probabilities (the first prompt token) is null."""
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for token_id, lp in entries:
            text = self.token_text(token_id)
            offsets.append(offset)
            offset += len(text)
            tokens.append(text)
            token_logprobs.append(None if lp is None else lp.token_logprob)
            top.append(None if lp is None else {self.token_text(t): v for t, v in lp.top})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}

    def prompt_logprobs(self, choice: ChoiceState) -> list[dict[str, dict[str, Any]] | None]:
        """vLLM's `prompt_logprobs`: per prompt token None (the first) or {token id: logprob, rank, text}."""
        out: list[dict[str, dict[str, Any]] | None] = []
        for token_id, lp in zip(choice.prompt_ids, choice.prompt_logprobs):
            if lp is None:
                out.append(None)
                continue
            entry = {str(token_id): {"logprob": lp.token_logprob, "decoded_token": self.token_text(token_id)}}
            for rank, (alt, value) in enumerate(lp.top, start=1):
                entry.setdefault(str(alt), {"logprob": value, "rank": rank, "decoded_token": self.token_text(alt)})
                entry[str(alt)].setdefault("rank", rank)
            out.append(entry)
        return out

    def chat_logprobs(self, entries: list[tuple[int, TokenLogprobs]]) -> dict[str, Any]:
        def item(token_id: int, value: float) -> dict[str, Any]:
            text = self.token_text(token_id)
            return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

        return {
            "content": [
                item(token_id, lp.token_logprob) | {"top_logprobs": [item(t, v) for t, v in lp.top]}
                for token_id, lp in entries
            ]
        }


def best_choices(choices: list[ChoiceState], per_prompt: int, keep: int) -> list[ChoiceState]:
    """The `keep` choices of each prompt's `per_prompt` with the highest log-probability per token
    (OpenAI's `best_of`), re-indexed 0..keep-1 per prompt in order."""
    best: list[ChoiceState] = []
    for start in range(0, len(choices), per_prompt):
        group = choices[start : start + per_prompt]

        def mean_logprob(choice: ChoiceState) -> float:
            values = [lp.token_logprob for _, lp in choice.logprobs]
            return sum(values) / len(values) if values else float("-inf")

        ranked = sorted(group, key=mean_logprob, reverse=True)[:keep]
        for offset, choice in enumerate(ranked):
            choice.index = start // per_prompt * keep + offset
        best += ranked
    return best


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompts: list[list[int]], choices: list[ChoiceState]) -> dict[str, int]:
    prompt_tokens = sum(len(ids) for ids in prompts)
    completion_tokens = sum(len(c.token_ids) for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _texts_or_token_ids(prompt: PromptInput) -> tuple[list[str], list[list[int]]]:
    """A completion prompt as texts, or as token-id lists (the schema allows no mixture)."""
    if isinstance(prompt, str):
        return [prompt], []
    if prompt and all(isinstance(p, int) for p in prompt):
        return [], [[p for p in prompt if isinstance(p, int)]]
    return [p for p in prompt if isinstance(p, str)], [list(p) for p in prompt if isinstance(p, list)]
