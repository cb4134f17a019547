"""The fault-injecting proxy between a client and the real API server does what it promises."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from .control_plane import ControlPlane
from .fault_proxy import Fault, FaultProxy


@pytest.fixture()
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    with FaultProxy(control_plane.url, control_plane.ca_file) as p:
        yield p


def _client(proxy: FaultProxy, plane: ControlPlane) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, headers={"Authorization": f"Bearer {plane.token}"}, timeout=30)


@pytest.mark.parametrize("status", [409, 429, 500])
def test_an_injected_status_answers_once_then_requests_pass(
    proxy: FaultProxy, control_plane: ControlPlane, namespace: str, status: int
) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    [fault] = proxy.add(Fault(path=path, method="GET", status=status, retry_after_s=2))
    with _client(proxy, control_plane) as http:
        refused = http.get(path)
        assert refused.status_code == status and refused.json()["code"] == status
        assert refused.json()["kind"] == "Status"
        assert (refused.headers.get("Retry-After") == "2") == (status == 429)
        assert http.get(path).status_code == 200  # only the next matching request was failed
        assert http.post(path, json={"metadata": {"name": "x"}}).status_code == 201  # other methods pass
    assert fault.hits == 1


def test_an_expired_watch_is_a_410_error_event(proxy: FaultProxy, control_plane: ControlPlane, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    proxy.add(Fault(path=rf"{path}\?.*watch=true", status=410))
    with _client(proxy, control_plane) as http, http.stream("GET", path, params={"watch": "true"}) as stream:
        assert stream.status_code == 200
        [line] = list(stream.iter_lines())
    event = json.loads(line)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_watches_are_forwarded_and_cut_on_demand(
    proxy: FaultProxy, control_plane: ControlPlane, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    with _client(proxy, control_plane) as http, http.stream("GET", path, params={"watch": "true"}) as stream:
        http.post(path, json={"metadata": {"name": "seen"}}).raise_for_status()
        lines = stream.iter_lines()
        assert json.loads(next(lines))["object"]["metadata"]["name"] == "seen"
        assert proxy.drop_watches() == 1
        with pytest.raises(httpx.HTTPError):  # the stream ends as a lost connection does
            list(lines)


def test_a_slow_response_is_delayed_and_then_forwarded(
    proxy: FaultProxy, control_plane: ControlPlane, namespace: str
) -> None:
    proxy.add(Fault(path=f"/api/v1/namespaces/{namespace}$", delay_s=1.0))
    with _client(proxy, control_plane) as http:
        started = time.monotonic()
        response = http.get(f"/api/v1/namespaces/{namespace}")
    assert response.status_code == 200 and response.json()["metadata"]["name"] == namespace
    assert time.monotonic() - started >= 1.0
