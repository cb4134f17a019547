"""Per HTTP request: its id (X-Request-Id), its status-code count, and its one log line.

The id comes from the client's `X-Request-Id` header (a gateway's trace id, say) or is made up; it
goes back in the response's `X-Request-Id` header, into the response body's id
(`chatcmpl-<id>`, as vLLM does), and into every log line written while serving the request.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.logs import request_id_var
from .metrics import ServerMetrics
from .openai_serving import ChoiceState, usage

log = logging.getLogger("tpserve.requests")

MAX_REQUEST_ID_CHARS = 256
QUIET_PATHS = frozenset({"/health", "/health_generate", "/metrics"})  # probes and scrapes: debug only


@dataclass
class RequestRecord:
    """What the log line of a generation request reports; its handler fills in the choices."""

    request_id: str
    started: float = field(default_factory=time.monotonic)
    prompts: list[list[int]] = field(default_factory=list)
    choices: list[ChoiceState] = field(default_factory=list)

    def fields(self) -> dict[str, object]:
        counts = usage(self.prompts, self.choices)
        firsts = [c.first_token_at for c in self.choices if c.first_token_at is not None]
        return {
            "prompt_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"],
            "ttft_s": round(min(firsts) - self.started, 4) if firsts else None,
            "finish_reason": ",".join(sorted({c.finish_reason or "abort" for c in self.choices})),
        }


# The record of the request being served (handlers run in a copy of the middleware's context).
_record_var: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("tpserve_request", default=None)


def current_record() -> RequestRecord | None:
    return _record_var.get()


def public_id(prefix: str) -> str:
    """The response body's id: the request's id under the object's prefix."""
    return f"{prefix}-{request_id_var.get() or uuid.uuid4().hex}"


def _bad_request_id(value: bytes) -> str | None:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return "X-Request-Id must be ASCII"
    if not 0 < len(text) <= MAX_REQUEST_ID_CHARS or not text.isprintable():
        return f"X-Request-Id must be 1 to {MAX_REQUEST_ID_CHARS} printable characters"
    return None


class RequestContext:
    """Outermost ASGI layer of node 0's API: id, status count, log line."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServerMetrics,
        routes: set[str],
        reject: Callable[[str], ASGIApp],  # the 400 response for a bad header
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        endpoint = path if path in self.routes else "other"  # a bounded label set
        given = dict(scope.get("headers") or []).get(b"x-request-id")
        problem = _bad_request_id(given) if given is not None else None
        if problem is not None:
            self.metrics.http_response(endpoint, 400)
            await self.reject(problem)(scope, receive, send)
            return
        request_id = given.decode("ascii") if given is not None else uuid.uuid4().hex
        record = RequestRecord(request_id)  # its own, even where a client reuses an id
        token = request_id_var.set(request_id)
        record_token = _record_var.set(record)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.http_response(endpoint, status)
            self._log(scope["method"], path, status, record)
            _record_var.reset(record_token)
            request_id_var.reset(token)

    @staticmethod
    def _log(method: str, path: str, status: int, record: RequestRecord) -> None:
        total = time.monotonic() - record.started
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if not record.choices:
            log.log(level, "%s %s %d in %.3fs", method, path, status, total, extra={"status": status, "total_s": total})
            return
        fields = record.fields()
        log.log(
            level,
            "%s %s %d in %.3fs: %d prompt + %d output tokens, first token after %ss, finish %s",
            method,
            path,
            status,
            total,
            fields["prompt_tokens"],
            fields["output_tokens"],
            fields["ttft_s"],
            fields["finish_reason"],
            extra={"status": status, "total_s": round(total, 4), **fields},
        )
