"""The FastAPI applications: node 0's OpenAI API, and the health-only app of nodes k > 0."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import EngineUnavailable
from ..engine.sampling import TokenLogprobs
from ..engine.scheduler import RequestError
from .admission import RETRY_AFTER_S, Admission, Draining, QueueFull
from .chat_output import ChatStreamShaper, ToolMode, shape_message
from .health import GroupMonitor
from .metrics import ServerMetrics
from .openai_protocol import (
    ERROR_STATUSES,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ErrorResponse,
    StreamOptions,
    TokenizeRequest,
    error_body,
)
from .openai_serving import BadRequest, ChoiceState, OpenAIServing, best_choices, new_id, sse, usage
from .request_context import RequestContext, current_record, public_id

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
# Generation endpoints answer JSON, or server-sent events with "stream": true.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"description": "The completion", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
}


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "service_unavailable",
        504: "timeout_error",
    }
    codes = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 429: "queue_full"}
    return JSONResponse(
        error_body(message, kinds.get(status, "invalid_request_error"), param, codes.get(status)), status, headers
    )


class BodySizeLimit:
    """Refuse bodies over the limit with 413, whether or not they announce their length."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, f"request body exceeds {self.limit} bytes")(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await error_response(413, f"request body exceeds {self.limit} bytes")(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class ApiKeyCheck:
    """With a key set, /v1/ requests must carry `Authorization: Bearer KEY` (401 otherwise).

    Plain ASGI rather than FastAPI's `@app.middleware("http")`: that wraps every response in an
    extra task and memory stream, and a streamed answer paid for it on each token (profiled under a
    burst of 64 streaming clients, it was the front end's largest cost).
    """

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if given != self.expected:
                await error_response(401, "Incorrect API key provided")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg')}", None
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {loc[-1] if loc else '?'}", loc[-1] if loc else None
    # pydantic names union members in the location (e.g. prompt.str); keep the field path readable.
    field = ".".join(p for p in loc if not _is_union_member(p))
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"{field}: {message}" if field else message), field or None


def _is_union_member(part: str) -> bool:
    """A location part pydantic adds for a union's member type ("str", "list[int]", ...)."""
    return part in ("str", "int", "float", "bool", "none") or part.startswith(("list[", "dict[", "function-"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code if exc.status_code != 422 else 400
        return error_response(status, str(exc.detail))


def _health_endpoints(app: FastAPI, monitor: GroupMonitor, metrics: ServerMetrics, refresh: Callable[[], None]) -> None:
    @app.get(
        "/health",
        responses={
            503: {"description": "Not ready: the report says what readiness waits for, or why the group failed"}
        },
    )
    async def health() -> JSONResponse:
        report = monitor.latest  # refreshed every MONITOR_INTERVAL_S by the node's watch loop
        return JSONResponse(report.body(), 200 if report.ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        refresh()
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def create_worker_app(monitor: GroupMonitor, metrics: ServerMetrics) -> FastAPI:
    """Nodes k > 0: only health and metrics."""
    app = FastAPI(title="tpserve worker node", docs_url=None, redoc_url=None)
    _health_endpoints(app, monitor, metrics, lambda: None)
    return app


def create_api_app(
    serving_ready: Callable[[], OpenAIServing | None],
    monitor: GroupMonitor,
    metrics: ServerMetrics,
    api_key: str | None,
    eos_ids: tuple[int, ...],
    health_generate: Callable[[], Awaitable[None]],
    refresh_metrics: Callable[[], None],
    admission: Admission,
    request_timeout_s: float | None = None,
) -> FastAPI:
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": text} for status, text in ERROR_STATUSES.items()
    }
    app = FastAPI(title="tpserve", docs_url=None, redoc_url=None, responses=errors)
    install_error_handlers(app)
    timeouts = RequestTimeout(request_timeout_s, metrics)
    _health_endpoints(app, monitor, metrics, refresh_metrics)

    def serving() -> OpenAIServing:
        ready = serving_ready()
        if ready is None or monitor.failed:
            raise _NotReady(monitor.failed or "the group is not ready")
        return ready

    @app.exception_handler(_NotReady)
    async def on_not_ready(_: Request, exc: _NotReady) -> JSONResponse:
        return error_response(503, f"server not ready: {exc}")

    @app.exception_handler(BadRequest)
    async def on_bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return error_response(400, str(exc), exc.param)

    @app.exception_handler(QueueFull)
    async def on_queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return error_response(429, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Draining)
    async def on_draining(_: Request, exc: Draining) -> JSONResponse:
        return error_response(503, str(exc))

    @app.exception_handler(RequestTimedOut)
    async def on_timeout(_: Request, exc: RequestTimedOut) -> JSONResponse:
        return error_response(504, str(exc))

    @app.exception_handler(EngineUnavailable)
    async def on_engine_unavailable(_: Request, exc: EngineUnavailable) -> JSONResponse:
        return error_response(503, str(exc))

    @app.exception_handler(RequestError)
    async def on_engine_refusal(_: Request, exc: RequestError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(LookupError)
    async def on_unknown_model(_: Request, exc: LookupError) -> JSONResponse:
        return error_response(404, str(exc.args[0]), "model")

    @app.get("/health_generate")
    async def generate_probe() -> JSONResponse:
        serving()
        await asyncio.wait_for(health_generate(), timeout=30)
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": _package_version()})

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        s = serving()
        if body.model is not None:
            s.check_model(body.model)
        tokens = await s.tokenize(body)
        return JSONResponse({"count": len(tokens), "max_model_len": s.max_model_len, "tokens": tokens})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        s = serving()
        if body.model is not None:
            s.check_model(body.model)
        s.check_token_ids(body.tokens, "tokens")
        return JSONResponse({"prompt": s.tokenizer.decode(body.tokens)})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        s = serving()
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": s.model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "tpserve",
                        "max_model_len": s.max_model_len,
                    }
                ],
            }
        )

    @app.post("/v1/completions", responses=STREAMED)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        s = serving()
        s.check_model(body.model)
        prompts = await s.completion_prompts(body)
        candidates = body.best_of or body.n
        # best_of ranks candidates by their tokens' log-probabilities: ask for them even if unreturned.
        ranking_logprobs = body.logprobs if body.logprobs is not None or candidates == body.n else 0
        choices = s.make_choices(body, prompts, body.max_tokens, ranking_logprobs, per_prompt=candidates)
        admission.admit(len(choices))
        _record(prompts, choices)
        request_id = new_id("cmpl")  # the engine's: unique even where clients reuse an X-Request-Id
        created = int(time.time())
        base = {"id": public_id("cmpl"), "object": "text_completion", "created": created, "model": s.model_name}
        if body.stream:
            report = UsageReport.of(body.stream_options)
            chunks = _completion_chunks(s, request_id, base, prompts, choices, report, eos_ids, body.echo)
            return _stream(chunks, timeouts)
        await _collect_unless_disconnected(s, request_id, choices, eos_ids, request, timeouts)
        returned = best_choices(choices, candidates, body.n) if candidates > body.n else choices
        return JSONResponse(
            base
            | {
                "choices": [_completion_choice(s, body, c) for c in returned],
                "usage": usage(prompts, choices),  # every candidate's tokens were generated
            }
        )

    @app.post("/v1/chat/completions", responses=STREAMED)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        s = serving()
        s.check_model(body.model)
        tools = s.tool_mode(body)
        prompt = await s.chat_prompt(body)
        top = (body.top_logprobs or 0) if body.logprobs else None
        choices = s.make_choices(body, [prompt], body.token_limit, top)
        admission.admit(len(choices))
        _record([prompt], choices)
        request_id = new_id("chatcmpl")
        base = {"id": public_id("chatcmpl"), "object": "chat.completion", "created": int(time.time())}
        base["model"] = s.model_name
        if body.stream:
            report = UsageReport.of(body.stream_options)
            shapers = {c.index: ChatStreamShaper(s.parsers.think, tools) for c in choices}
            return _stream(_chat_chunks(s, request_id, base, [prompt], choices, shapers, report, eos_ids), timeouts)
        await _collect_unless_disconnected(s, request_id, choices, eos_ids, request, timeouts)
        return JSONResponse(
            base
            | {
                "choices": [_chat_choice(s, body, tools, c) for c in choices],
                "usage": usage([prompt], choices),
            }
        )

    routes = {route.path for route in app.routes if hasattr(route, "path")}
    checked = BodySizeLimit(ApiKeyCheck(app, api_key))
    return RequestContext(checked, metrics, routes, lambda problem: error_response(400, problem))  # type: ignore[return-value]


def _record(prompts: list[list[int]], choices: list[ChoiceState]) -> None:
    """What the request's log line reports (request_context)."""
    record = current_record()
    if record is not None:
        record.prompts, record.choices = prompts, choices


class _NotReady(Exception):
    pass


class RequestTimedOut(Exception):
    """504: the request ran past --request-timeout (only this: other time-outs are not the client's)."""


@dataclass(frozen=True)
class RequestTimeout:
    """--request-timeout: a request still running after this long is aborted (504, or an error
    event once a stream has started)."""

    seconds: float | None
    metrics: ServerMetrics

    def message(self) -> str:
        return f"the request ran past --request-timeout ({self.seconds:g} s) and was aborted"

    def expired(self) -> RequestTimedOut:
        self.metrics.timed_out.inc()
        return RequestTimedOut(self.message())


async def _collect_unless_disconnected(
    s: OpenAIServing,
    request_id: str,
    choices: list[ChoiceState],
    eos_ids: tuple[int, ...],
    request: Request,
    timeouts: RequestTimeout,
) -> None:
    """Run every choice to the end; if the client goes away first, abort them (freeing pages)."""

    async def run() -> None:
        try:
            async with asyncio.timeout(timeouts.seconds):
                async for _ in s.merged(request_id, choices, eos_ids):
                    pass
        except TimeoutError:
            raise timeouts.expired() from None

    task = asyncio.create_task(run())
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise asyncio.CancelledError("client disconnected")
    task.result()


def _stream(chunks: AsyncIterator[str], timeouts: RequestTimeout) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        # The time limit covers waiting for the engine, never a suspended `yield` (which belongs to
        # the response's send: cancelling that would tear the connection instead of ending the stream).
        deadline = None if timeouts.seconds is None else asyncio.get_running_loop().time() + timeouts.seconds
        try:
            while True:
                async with asyncio.timeout_at(deadline):
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                yield chunk
        except TimeoutError:
            timeouts.expired()
            yield sse(error_body(timeouts.message(), "timeout_error", code="504"))
        except (RequestError, BadRequest) as exc:
            yield sse(error_body(str(exc), "invalid_request_error"))
        except EngineUnavailable as exc:  # after the 200: the error travels as an event
            yield sse(error_body(str(exc), "service_unavailable", code="503"))
        except QueueFull as exc:
            yield sse(error_body(str(exc), "rate_limit_error", code="429"))
        yield sse("[DONE]")

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chat_choice(
    s: OpenAIServing, body: ChatCompletionRequest, tools: ToolMode | None, c: ChoiceState
) -> dict[str, Any]:
    message, made_calls = shape_message(c.matcher.text, s.parsers.think, tools)
    return {
        "index": c.index,
        "message": message,
        "logprobs": s.chat_logprobs(c.logprobs) if body.logprobs else None,
        "finish_reason": tools.finish_reason(c.finish_reason, made_calls) if tools else c.finish_reason,
    }


def _completion_choice(s: OpenAIServing, body: CompletionRequest, c: ChoiceState) -> dict[str, Any]:
    """One choice of a non-streamed completion; with echo the prompt (and its logprobs) comes first."""
    prompt_entries: list[tuple[int, TokenLogprobs | None]] = []
    text = c.matcher.text
    if body.echo:
        prompt_text = s.tokenizer.decode(c.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = prompt_text + text
        prompt_entries = list(zip(c.prompt_ids, c.prompt_logprobs))
    choice: dict[str, Any] = {
        "index": c.index,
        "text": text,
        "logprobs": s.completion_logprobs(prompt_entries + list(c.logprobs)) if body.logprobs is not None else None,
        "finish_reason": c.finish_reason,
    }
    if body.prompt_logprobs is not None:
        choice["prompt_logprobs"] = s.prompt_logprobs(c)
    return choice


@dataclass(frozen=True)
class UsageReport:
    """Where a stream reports usage: a final chunk (include_usage), also every chunk (vLLM's
    continuous_usage_stats, with include_usage)."""

    final: bool
    continuous: bool

    @staticmethod
    def of(options: StreamOptions | None) -> UsageReport:
        final = bool(options and options.include_usage)
        return UsageReport(final, final and bool(options and options.continuous_usage_stats))

    def in_chunk(self, prompts: list[list[int]], choices: list[ChoiceState]) -> dict[str, Any]:
        if self.continuous:
            return {"usage": usage(prompts, choices)}
        return {"usage": None} if self.final else {}


async def _completion_chunks(
    s: OpenAIServing,
    request_id: str,
    base: dict[str, Any],
    prompts: list[list[int]],
    choices: list[ChoiceState],
    report: UsageReport,
    eos_ids: tuple[int, ...],
    echo: bool,
) -> AsyncIterator[str]:
    offsets = {c.index: 0 for c in choices}
    want_logprobs = choices[0].params.logprobs is not None
    by_index = {c.index: c for c in choices}
    echoed: set[int] = set()
    async for delta in s.merged(request_id, choices, eos_ids):
        if echo and delta.index not in echoed:
            # A choice's prompt (and its log-probabilities, which come before any token) goes first.
            echoed.add(delta.index)
            c = by_index[delta.index]
            text = s.tokenizer.decode(c.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            entries = list(zip(c.prompt_ids, c.prompt_logprobs))
            logprobs = s.completion_logprobs(entries) if want_logprobs else None
            # Offsets go on from the prompt tokens' own texts, as in the non-streamed answer.
            offsets[delta.index] = sum(len(t) for t in logprobs["tokens"]) if logprobs else len(text)
            choice = {"index": delta.index, "text": text, "logprobs": logprobs, "finish_reason": None}
            yield sse(base | {"choices": [choice]} | report.in_chunk(prompts, choices))
        logprobs = s.completion_logprobs(delta.logprobs, offsets[delta.index]) if want_logprobs else None
        offsets[delta.index] += len(delta.text)
        chunk = base | {
            "choices": [
                {"index": delta.index, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason}
            ]
        }
        yield sse(chunk | report.in_chunk(prompts, choices))
    if report.final:
        yield sse(base | {"choices": [], "usage": usage(prompts, choices)})


async def _chat_chunks(
    s: OpenAIServing,
    request_id: str,
    base: dict[str, Any],
    prompts: list[list[int]],
    choices: list[ChoiceState],
    shapers: dict[int, ChatStreamShaper],
    report: UsageReport,
    eos_ids: tuple[int, ...],
) -> AsyncIterator[str]:
    base = base | {"object": "chat.completion.chunk"}
    want_logprobs = choices[0].params.logprobs is not None

    def chunk(index: int, delta: dict[str, Any], logprobs: Any, finish_reason: str | None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse(base | {"choices": [choice]} | report.in_chunk(prompts, choices))

    for c in choices:
        yield chunk(c.index, {"role": "assistant", "content": ""}, None, None)
    async for delta in s.merged(request_id, choices, eos_ids):
        shaper = shapers[delta.index]
        logprobs = s.chat_logprobs(delta.logprobs) if want_logprobs else None
        parts = shaper.feed(delta.text)
        finish_reason = delta.finish_reason
        if finish_reason is not None:
            rest, made_calls = shaper.finish()
            parts += rest
            if shaper.tools is not None:
                finish_reason = shaper.tools.finish_reason(finish_reason, made_calls)
        if not parts and (finish_reason is not None or logprobs is not None):
            parts = [{}]  # the finish reason (or the token's logprobs) still needs a chunk
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            yield chunk(delta.index, part, logprobs if i == 0 else None, finish_reason if last else None)
    if report.final:
        yield sse(base | {"choices": [], "usage": usage(prompts, choices)})


def _package_version() -> str:
    try:
        return importlib.metadata.version("tpserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
