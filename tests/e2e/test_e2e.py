"""End to end: a TPInferenceService becomes real tpserve processes that form a group, serve, survive.

The chart's operator runs with its ServiceAccount against the real API server; the real StatefulSet
controller creates pods; the process kubelet binds them to its node and runs each pod's container command as written in its own network
namespace, resolves the headless-service names through per-namespace hosts files, runs the probes
and writes pod status back. Nothing here reaches beyond loopback and these namespaces.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.k8s.api import ControllerLoop, raw
from tests.k8s.operator_install import OperatorInstall
from tests.operator.cluster import OperatorCluster
from tests.server.hub_server import HubServer, Repo, files_of
from tests.server.server_process import poll_until
from tpserve import LLM, SamplingParams

from .kubelet import ProcessKubelet
from .network import Bridge

MOUNT_PATH = "/mnt/tpserve-e2e-model"
STARTUP_S = 180  # probes as written: the startup probe runs every 10 s
MESSAGES = [{"role": "user", "content": "Hello, tensor parallelism!"}]

pytestmark = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip netns) and root")


class E2ECluster:
    def __init__(self, cluster: OperatorCluster, kubelet: ProcessKubelet, kubelet_errors: list[BaseException]) -> None:
        self.cluster = cluster
        self.kubelet = kubelet
        self.kubelet_errors = kubelet_errors

    def service_endpoints(self, name: str) -> list[str]:
        """What the Service `name` routes to: Ready pods matching its selector that are not
        terminating (the EndpointSlice controller marks those not ready at once)."""
        service = raw(self.cluster.core.read_namespaced_service, name, self.cluster.namespace)
        selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
        port = service["spec"]["ports"][0]["port"]
        endpoints = []
        for pod in self.cluster.pods(selector):
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
            if conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
                endpoints.append(f"http://{pod['status']['podIP']}:{port}")
        return sorted(endpoints)

    def routed_endpoints(self, name: str, count: int) -> list[str]:
        """The Service's endpoints once it routes to `count` pods: a leader's pod turns Ready (the
        kubelet writes its gate into Ready) a moment after the operator reports the group Ready."""
        return poll_until(
            lambda: found if len(found := self.service_endpoints(name)) == count else None,
            30,
            what=f"{count} endpoint(s) behind {name}",
        )

    def chat(self, base_url: str, model: str = "tiny") -> str:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
        )
        return reply.choices[0].message.content or ""

    def log_tail(self) -> str:
        return "\n".join(r.log_path.read_text(errors="replace")[-1500:] for r in list(self.kubelet.pods.values()))


@pytest.fixture()
def e2e(namespace: str, operator_install: OperatorInstall, tmp_path: Path, tiny_checkpoint) -> Iterator[E2ECluster]:
    with ExitStack() as stack:
        cluster = OperatorCluster(namespace, operator_install, tmp_path)
        bridge = Bridge()
        stack.callback(bridge.cleanup)
        kubelet = ProcessKubelet(namespace, bridge, tmp_path)
        stack.callback(kubelet.cleanup)
        loop = stack.enter_context(ControllerLoop(kubelet, interval_s=0.2))
        stack.enter_context(cluster.operator())
        yield E2ECluster(cluster, kubelet, loop.errors)
    assert not loop.errors, f"the process kubelet failed: {loop.errors[:3]}"
    assert not cluster.forbidden_calls(), "\n".join(cluster.forbidden_calls()[:5])


def tiny_service(model_dir: Path, name: str = "tiny", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {
            "path": f"{MOUNT_PATH}",
            "servedName": "tiny",
            "mountPath": MOUNT_PATH,
            "volume": {"hostPath": {"path": str(model_dir), "type": "Directory"}},
        },
        "image": "tpserve:e2e",
        "device": "cpu",
        "tensorParallelSize": 2,
        "nodes": 2,
        "replicas": 1,
        "engine": {"attention": "torch", "maxPrefillLength": 256},
        "shmSize": "256Mi",
    }
    body.update(spec)
    return {
        "apiVersion": "tpserve.io/v1alpha1",
        "kind": "TPInferenceService",
        "metadata": {"name": name},
        "spec": body,
    }


def wait_ready(e2e: E2ECluster, name: str, groups: int = 1, restarts: int | None = None) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = e2e.cluster.status(name)
        if status.get("readyReplicas") != groups or status.get("phase") != "Ready":
            return None
        if restarts is not None and [g["restarts"] for g in status["groups"]] != [restarts] * groups:
            return None
        return status

    try:
        return poll_until(ready, STARTUP_S, interval_s=0.5, what=f"{name} Ready")
    except TimeoutError:
        raise AssertionError(f"status: {e2e.cluster.status(name)}\nlogs:\n{e2e.log_tail()}") from None


@pytest.fixture(scope="module")
def offline_answer(tiny_checkpoint) -> str:
    path = tiny_checkpoint("llama")
    with LLM(str(path), tp=2) as llm:
        prompt = llm.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        ids = llm.tokenizer.encode(prompt, add_special_tokens=False)
        return llm.generate([ids], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].text


def test_group_forms_serves_and_survives_a_killed_worker(e2e: E2ECluster, tiny_checkpoint, offline_answer: str) -> None:
    e2e.cluster.create(tiny_service(tiny_checkpoint("llama")))
    status = wait_ready(e2e, "tiny")
    assert e2e.cluster.gate("tiny-leader-0") == "True"
    [endpoint] = e2e.routed_endpoints("tiny", 1)
    assert e2e.chat(endpoint) == offline_answer

    # kill -9 the worker's server process: the group must fail fast and be recreated whole.
    leader_ip = e2e.kubelet.runtime("tiny-leader-0").network.ip
    e2e.kubelet.kill_container("tiny-worker-0-1")
    poll_until(
        lambda: (r := _get(f"http://{leader_ip}:30000/health")) is None or r.status_code == 503, 10, what="leader 503"
    )
    poll_until(lambda: e2e.service_endpoints("tiny") == [], 30, what="leader unready")
    status = wait_ready(e2e, "tiny", restarts=1)
    assert status["groups"][0]["restarts"] == 1
    [endpoint] = e2e.routed_endpoints("tiny", 1)
    assert e2e.chat(endpoint) == offline_answer


class ServiceClient:
    """Chats through the Service, one request per sync() (round robin over its endpoints), recording
    every request that did not get a full answer; a ControllerLoop runs it in the background."""

    def __init__(self, e2e: E2ECluster, name: str, expected: str) -> None:
        self.e2e, self.name, self.expected = e2e, name, expected
        self.answered = 0
        self.failures: list[str] = []
        self.no_endpoint = 0
        self._turn = 0

    def sync(self) -> None:
        endpoints = self.e2e.service_endpoints(self.name)
        if not endpoints:
            self.no_endpoint += 1
            return
        url = endpoints[self._turn % len(endpoints)]
        self._turn += 1
        try:
            answer = self.e2e.chat(url)
        except openai.APIError as exc:
            self.failures.append(f"{url}: {type(exc).__name__}: {exc}")
            return
        if answer == self.expected:
            self.answered += 1
        else:
            self.failures.append(f"{url}: answered {answer!r}")


def test_engine_change_rolls_each_group_without_dropping_a_request(
    e2e: E2ECluster, tiny_checkpoint, offline_answer: str
) -> None:
    e2e.cluster.create(tiny_service(tiny_checkpoint("llama"), replicas=2))
    status = wait_ready(e2e, "tiny", groups=2)
    # Two independent groups behind the Service, each with its own rendezvous.
    assert [g["leaderPod"] for g in status["groups"]] == ["tiny-leader-0", "tiny-leader-1"]
    endpoints = e2e.routed_endpoints("tiny", 2)
    assert [e2e.chat(url) for url in endpoints] == [offline_answer, offline_answer]
    worker_args = e2e.kubelet.runtime("tiny-worker-1-1").process.args  # type: ignore[union-attr]
    assert worker_args[worker_args.index("--dist-init-addr") + 1] == "tiny-leader-1.tiny-headless:29500"

    old = {pod: e2e.kubelet.runtime(pod).uid for pod in ("tiny-leader-0", "tiny-leader-1")}
    through_service = ServiceClient(e2e, "tiny", offline_answer)
    with ControllerLoop(through_service, interval_s=0.05) as client_loop:
        e2e.cluster.patch_spec("tiny", {"engine": {"maxPrefillLength": 64}})
        poll_until(
            lambda: all((r := e2e.kubelet.find(pod)) is not None and r.uid != uid for pod, uid in old.items()),
            240,
            interval_s=0.5,
            what="both leaders replaced",
        )
        wait_ready(e2e, "tiny", groups=2)
        e2e.routed_endpoints("tiny", 2)
    for pod in ("tiny-leader-0", "tiny-worker-0-1", "tiny-leader-1", "tiny-worker-1-1"):
        argv = e2e.kubelet.runtime(pod).process.args  # type: ignore[union-attr]
        assert argv[argv.index("--max-prefill-length") + 1] == "64"
    assert not client_loop.errors, client_loop.errors[:3]
    assert through_service.failures == [], through_service.failures[:5]
    assert through_service.no_endpoint == 0, "the Service had no endpoint during the roll"
    assert through_service.answered > 10, through_service.answered


def test_a_group_serves_a_hub_model_downloaded_once_into_its_cache(
    e2e: E2ECluster, tiny_checkpoint, offline_answer: str, tmp_path: Path
) -> None:
    repo_id = "tpserve-e2e/tiny-llama"
    with HubServer(host=e2e.kubelet.bridge.gateway) as hub:  # reachable from the pods' namespaces
        repo = Repo(token="hf_e2e_token")  # gated: the token Secret must reach the pods
        files = files_of(tiny_checkpoint("llama"))
        commit = repo.add_commit(files, "main")
        hub.repos[repo_id] = repo
        e2e.cluster.core.create_namespaced_secret(
            e2e.cluster.namespace, {"metadata": {"name": "hf"}, "stringData": {"token": "hf_e2e_token"}}
        )
        cache = tmp_path / "hub-cache"
        cache.mkdir()
        body = tiny_service(tiny_checkpoint("llama"))
        body["spec"]["model"] = {
            "hub": {"id": repo_id, "tokenSecret": {"name": "hf"}},
            "cache": {"hostPath": {"path": str(cache), "type": "Directory"}},
            "servedName": "tiny",
        }
        body["spec"]["env"] = [{"name": "HF_ENDPOINT", "value": hub.url}, {"name": "HF_HUB_OFFLINE", "value": "0"}]
        e2e.cluster.create(body)
        wait_ready(e2e, "tiny")
        [endpoint] = e2e.routed_endpoints("tiny", 1)
        assert e2e.chat(endpoint) == offline_answer
        snapshot = cache / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
        assert sorted(p.name for p in snapshot.iterdir()) == sorted(files)
        # Two pods, two init containers and two servers on one cache: every file fetched once.
        fetched = [r[1].rsplit("/", 1)[1] for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
        assert sorted(fetched) == sorted(files), fetched


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
