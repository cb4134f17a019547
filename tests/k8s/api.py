"""Small helpers over the official kubernetes client, shared by the tests' node agents and clusters."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Make the call and return the API server's JSON as plain dicts (no model classes)."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data) if response.data else None


def tolerate(status: int | tuple[int, ...], call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Make the call; an ApiException with `status` (404 gone, 409 exists) is an expected race."""
    try:
        call(*args, _preload_content=False, **kwargs)
    except ApiException as exc:
        if exc.status not in (status if isinstance(status, tuple) else (status,)):
            raise


class ControllerLoop:
    """Runs sync() of each given agent in a background thread until stopped."""

    def __init__(self, *agents: Any, interval_s: float = 0.1) -> None:
        self.agents = agents
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-node-agents", daemon=True)
        self.errors: list[BaseException] = []

    def __enter__(self) -> ControllerLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for agent in self.agents:
                try:
                    agent.sync()
                except Exception as exc:  # keep going; tests read .errors when something looks stuck
                    self.errors.append(exc)
