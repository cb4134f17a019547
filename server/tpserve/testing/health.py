"""Wait for a started `python -m tpserve` to answer /health with 200 (demo and benchmarks)."""

from __future__ import annotations

import subprocess
import time

import httpx


class ServerNotHealthy(RuntimeError):
    pass


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> float:  # type: ignore[type-arg]
    """Seconds until `url`/health answered 200; raises if the server exits or the deadline passes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.poll() is not None:
            raise ServerNotHealthy(f"server exited with {server.returncode} before becoming healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise ServerNotHealthy(f"server not healthy after {timeout_s:.0f}s")
