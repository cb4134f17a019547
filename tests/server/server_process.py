"""Run `python -m tpserve` as a real subprocess and wait for it with deadlines (no sleeps)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tpserve.engine.launcher import free_port
from tpserve.testing.health import ServerNotHealthy, wait_healthy


class ServerProcess:
    def __init__(
        self, args: list[str], log_path: Path, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tpserve", *args, "--port", str(self.port), "--host", "127.0.0.1"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=(os.environ if env is None else env) | {"PYTHONUNBUFFERED": "1"},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=5)
        except httpx.HTTPError:
            return None

    def wait_healthy(self, timeout_s: float = 120) -> None:
        try:
            wait_healthy(self.url, self.proc, timeout_s)
        except ServerNotHealthy as exc:
            raise AssertionError(f"{exc}:\n{self.log_tail()}") from exc

    def wait_exit(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def healthy_server(args: list[str], log_path: Path) -> Iterator[ServerProcess]:
    """A server started with `args`, healthy before it is yielded, stopped after."""
    proc = ServerProcess(args, log_path)
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def poll_until(predicate, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Return predicate()'s first truthy value, polling with a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s}s")
        time.sleep(interval_s)
