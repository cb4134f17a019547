"""A reverse proxy between the operator and the API server that fails requests on demand.

The operator's kubeconfig points at the proxy (plain HTTP on loopback); the proxy forwards every
request to the real API server over TLS, streaming watches through, unless a `Fault` matches it:

- `status=409|429|500|...`: answered by the proxy with a Kubernetes `Status` body (429 carries
  `Retry-After`); on a watch request `status=410` is what a real server sends for an expired
  resourceVersion: a 200 stream with one ERROR event holding a 410 Status;
- `delay_s`: the request waits that long before it is forwarded (a slow API server);
- `drop_after_s`: a watch is forwarded, then its connection is cut after that long.

`drop_watches()` cuts every watch stream open now. A fault applies to its next `times` matching
requests; `hits` counts them, so a test can check its fault was really met.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

REASONS = {409: "Conflict", 410: "Expired", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


@dataclass
class Fault:
    path: str  # a regular expression searched in the request's path and query
    method: str | None = None  # None: any method
    status: int | None = None
    retry_after_s: int = 1
    delay_s: float = 0.0
    drop_after_s: float | None = None
    times: int = 1
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.hits >= self.times or (self.method and self.method != method):
            return False
        return re.search(self.path, target) is not None


def _status_body(code: int) -> bytes:
    reason = REASONS.get(code, "InternalError")
    message = f"injected by the test proxy: {reason}"
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}
    ).encode()


class FaultProxy:
    def __init__(self, upstream: str, ca_file: Path) -> None:
        self.upstream = upstream
        self.ssl = ssl.create_default_context(cafile=str(ca_file))
        self.ssl.check_hostname = False  # the self-signed serving certificate names no loopback host
        self.faults: list[Fault] = []
        self.requests: list[str] = []  # "METHOD path?query" of every request, in arrival order
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._watches: dict[int, tuple[web.Request, aiohttp.ClientResponse]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *faults: Fault) -> list[Fault]:
        with self._lock:
            self.faults.extend(faults)
        return list(faults)

    def drop_watches(self) -> int:
        """Cut every open watch stream; returns how many there were."""
        return asyncio.run_coroutine_threadsafe(self._drop_all(), self._loop).result(10)

    def __enter__(self) -> FaultProxy:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- serving -----------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._session.close())
        self._loop.run_until_complete(runner.cleanup())

    async def _start(self) -> web.AppRunner:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return runner

    def _take(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = request.path_qs
        self.requests.append(f"{request.method} {target}")
        is_watch = request.query.get("watch") in ("true", "1")
        fault = self._take(request.method, target)
        if fault and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault and fault.status == 410 and is_watch:
            return await self._expired_watch(request)
        if fault and fault.status:
            headers = {"Retry-After": str(fault.retry_after_s)} if fault.status == 429 else {}
            return web.Response(
                status=fault.status, body=_status_body(fault.status), headers=headers, content_type="application/json"
            )
        return await self._forward(request, is_watch, fault.drop_after_s if fault else None)

    async def _forward(self, request: web.Request, is_watch: bool, drop_after_s: float | None) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            ssl=self.ssl,
            # Forwarded as sent: aiohttp would label a body without a type octet-stream (a 415 upstream).
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-encoding":
                    response.headers[key] = value
            await response.prepare(request)
            if is_watch:
                self._watches[id(request)] = (request, upstream)
            try:
                await self._pump(request, upstream, response, drop_after_s)
            except (ConnectionResetError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                pass  # cut on purpose (drop_watches / drop_after_s) or the client went away
            finally:
                self._watches.pop(id(request), None)
            return response

    @staticmethod
    async def _pump(
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        drop_after_s: float | None,
    ) -> None:
        async def copy() -> None:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)

        if drop_after_s is None:
            await copy()
            await response.write_eof()
            return
        try:
            await asyncio.wait_for(copy(), drop_after_s)
            await response.write_eof()
        except asyncio.TimeoutError:
            _cut(request, upstream)

    async def _expired_watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        event = {"type": "ERROR", "object": json.loads(_status_body(410))}
        await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response

    async def _drop_all(self) -> int:
        watches = list(self._watches.values())
        for request, upstream in watches:
            _cut(request, upstream)
        return len(watches)


def _cut(request: web.Request, upstream: aiohttp.ClientResponse) -> None:
    """End a stream the way a lost connection does: no final chunk to the client, upstream closed."""
    if request.transport is not None:
        request.transport.close()
    upstream.close()
