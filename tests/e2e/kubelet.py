"""A kubelet for the end-to-end tests: every pod becomes real `tpserve` processes in its own netns.

It runs on a `Node` (tests/k8s/nodes.py: registers the Node, binds the namespace's pods to it,
confirms their deletion). For each pod bound to it: gives the pod a network namespace and address (network.Bridge), sets
its hostname, mounts its volumes where the spec says (hostPath bind mounts, memory-backed emptyDir
as tmpfs; the projected service-account token volume as an empty tmpfs, since the server never
calls the API), expands $(VAR) references from the container env (downward API included), runs the
container command as written, runs the startup/readiness/liveness probes as written, restarts the
container when it exits or fails liveness, and writes pod status (phase, conditions with readiness
gates, restartCount, podIP) back to the API. A deleted pod is stopped as the kubelet does it, in
the background: its preStop sleep while it keeps serving, then SIGTERM, SIGKILL once its grace
period is over; only then is its deletion confirmed and its network removed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

from tests.k8s.api import tolerate
from tests.k8s.nodes import Node, now

from .network import Bridge, PodNetwork

Obj = dict[str, Any]
RESTART_BACKOFF_S = 1.0  # the real kubelet starts at 10 s; tests do not need to wait that long
RESTART_GRACE_S = 5.0  # a container restarted in place (it exited, or failed liveness)
DEFAULT_GRACE_S = 30.0


@dataclass
class ProbeState:
    spec: Obj
    next_at: float = 0.0
    failures: int = 0


@dataclass
class PodRuntime:
    name: str
    uid: str
    pod: Obj
    network: PodNetwork
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    started: bool = False
    ready: bool = False
    restart_at: float = 0.0
    probes: dict[str, ProbeState] = field(default_factory=dict)
    status_written: Obj = field(default_factory=dict)

    @property
    def container(self) -> Obj:
        return self.pod["spec"]["containers"][0]

    def reset_probes(self) -> None:
        now = time.monotonic()
        self.probes = {
            kind: ProbeState(self.container[kind], next_at=now + self.container[kind].get("initialDelaySeconds", 0))
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
            if kind in self.container
        }
        self.started = "startupProbe" not in self.probes
        self.ready = False


class ProcessKubelet:
    def __init__(self, namespace: str, bridge: Bridge, workdir: Path) -> None:
        self.namespace = namespace
        self.bridge = bridge
        self.workdir = workdir
        self.core = client.CoreV1Api()
        self.node = Node(namespace)
        self.pods: dict[str, PodRuntime] = {}
        self.terminating: dict[str, threading.Thread] = {}  # uid -> the thread stopping that pod
        self.created_mount_points: list[Path] = []
        self._lock = threading.Lock()

    # -- the sync loop ---------------------------------------------------------------------------
    def sync(self) -> None:
        with self._lock:
            listed = {p["metadata"]["uid"]: p for p in self.node.pods()}
            for uid in [u for u in self.pods if u not in listed or listed[u]["metadata"].get("deletionTimestamp")]:
                self._remove(uid)
            for uid, pod in listed.items():
                stopping = self.terminating.get(uid)
                if pod["metadata"].get("deletionTimestamp") and (stopping is None or not stopping.is_alive()):
                    self.terminating.pop(uid, None)
                    self.node.confirm_deletion(pod)  # its processes are stopped
            for uid, pod in listed.items():
                if uid not in self.pods and not pod["metadata"].get("deletionTimestamp"):
                    self._admit(pod)
            for runtime in list(self.pods.values()):
                runtime.pod = listed.get(runtime.uid, runtime.pod)
                self._tend(runtime)

    def _admit(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        hostname = pod["spec"].get("hostname", name)
        names = [name]
        subdomain = pod["spec"].get("subdomain")
        if subdomain:
            base = f"{hostname}.{subdomain}"
            names += [
                base,
                f"{base}.{self.namespace}",
                f"{base}.{self.namespace}.svc",
                f"{base}.{self.namespace}.svc.cluster.local",
            ]
        network = self.bridge.add_pod(pod["metadata"]["uid"], names)
        runtime = PodRuntime(
            name, pod["metadata"]["uid"], pod, network, self.workdir / f"{name}-{pod['metadata']['uid'][:8]}.log"
        )
        self.pods[runtime.uid] = runtime
        self._start(runtime)

    def _remove(self, uid: str, pre_stop: bool = True) -> None:
        runtime = self.pods.pop(uid)
        thread = threading.Thread(
            target=self._terminate, args=(runtime, pre_stop), name=f"stop-{runtime.name}", daemon=True
        )
        self.terminating[uid] = thread
        thread.start()

    def _terminate(self, runtime: PodRuntime, pre_stop: bool) -> None:
        grace = float(runtime.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
        sleep = ((runtime.container.get("lifecycle") or {}).get("preStop") or {}).get("sleep")
        started = time.monotonic()
        if pre_stop and sleep and runtime.process is not None and runtime.process.poll() is None:
            time.sleep(min(grace, sleep["seconds"]))  # still serving: the Service has stopped routing here
        self._stop(runtime, max(0.0, grace - (time.monotonic() - started)))
        with self._lock:
            self.bridge.remove_pod(runtime.uid)

    # -- containers ------------------------------------------------------------------------------
    def _env(self, runtime: PodRuntime, container: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            source = item.get("valueFrom") or {}
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "fieldRef" in source:
                env[item["name"]] = self._field(runtime.pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                env[item["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
        return env

    @staticmethod
    def _field(pod: Obj, path: str) -> str:
        label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if label:
            return str(pod["metadata"].get("labels", {}).get(label.group(1), ""))
        if path == "metadata.name":
            return pod["metadata"]["name"]
        if path == "metadata.namespace":
            return pod["metadata"]["namespace"]
        raise ValueError(f"unsupported fieldRef {path}")

    def _mount_script(self, runtime: PodRuntime, container: Obj) -> list[str]:
        volumes = {v["name"]: v for v in runtime.pod["spec"].get("volumes") or []}
        steps = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            target = Path(mount["mountPath"])
            missing = [p for p in (target, *target.parents) if not p.exists()]
            for folder in reversed(missing):  # outermost first; cleanup removes them innermost first
                folder.mkdir()
                self.created_mount_points.append(folder)
            if "hostPath" in volume:
                option = "-o bind,ro" if mount.get("readOnly") else "-o bind"
                steps.append(f"mount {option} {volume['hostPath']['path']} {target}")
            elif "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("i", "")
                steps.append(f"mount -t tmpfs -o size={size} tmpfs {target}")
            elif "projected" in volume:
                steps.append(f"mount -t tmpfs -o size=1M tmpfs {target}")
            else:
                raise ValueError(f"volume {mount['name']}: only hostPath, emptyDir and projected are supported here")
        return steps

    def _command(self, runtime: PodRuntime, container: Obj) -> tuple[list[str], list[str], dict[str, str]]:
        """(argv as written, the command that runs it in the pod's network namespace, its environment)."""
        env = self._env(runtime, container)
        expand = lambda text: re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)  # noqa: E731
        argv = [expand(a) for a in container.get("command", []) + container.get("args", [])]
        # The "image" is this virtualenv: its python3 comes first on PATH.
        process_env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONUNBUFFERED": "1",
            "HOME": str(self.workdir),
            "HF_HUB_OFFLINE": "1",
            **env,
        }
        setup = [f"hostname {runtime.network.hostnames[0]}", *self._mount_script(runtime, container), 'exec "$@"']
        command = ["ip", "netns", "exec", runtime.network.netns, "unshare", "--uts", "sh", "-c", " && ".join(setup)]
        return argv, [*command, "sh", *argv], process_env

    def _start(self, runtime: PodRuntime) -> None:
        # Init containers run to completion first, in order (one failing restarts the pod's start).
        for init in runtime.pod["spec"].get("initContainers") or []:
            argv, command, process_env = self._command(runtime, init)
            with open(runtime.log_path, "ab") as log:
                log.write(f"\n=== init container {init['name']}: {' '.join(argv)}\n".encode())
                log.flush()
                done = subprocess.run(command, env=process_env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
            if done.returncode != 0:
                runtime.restart_at = time.monotonic() + RESTART_BACKOFF_S
                runtime.restart_count += 1
                return
        argv, command, process_env = self._command(runtime, runtime.container)
        log = open(runtime.log_path, "ab")
        log.write(f"\n=== start (restart {runtime.restart_count}): {' '.join(argv)}\n".encode())
        log.flush()
        runtime.process = subprocess.Popen(
            command, env=process_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        runtime.reset_probes()

    def _stop(self, runtime: PodRuntime, grace_s: float) -> None:
        process = runtime.process
        if process is None or process.poll() is not None:
            return
        try:
            # The container's first process gets SIGTERM, as in a container; SIGKILL takes them all.
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # a container ends with its first process
            os.killpg(process.pid, signal.SIGKILL)

    def _restart_later(self, runtime: PodRuntime, why: str) -> None:
        self._stop(runtime, RESTART_GRACE_S)
        runtime.restart_count += 1
        runtime.ready = runtime.started = False
        runtime.restart_at = time.monotonic() + RESTART_BACKOFF_S
        with open(runtime.log_path, "ab") as log:
            log.write(f"=== container stopped: {why}\n".encode())

    # -- probes and status -----------------------------------------------------------------------
    def _probe(self, runtime: PodRuntime, spec: Obj) -> bool:
        http = spec["httpGet"]
        port = http["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in runtime.container.get("ports", []) if p.get("name") == port)
        try:
            response = httpx.get(
                f"http://{runtime.network.ip}:{port}{http['path']}", timeout=min(2, spec.get("timeoutSeconds", 1))
            )
            return 200 <= response.status_code < 400
        except httpx.HTTPError:
            return False

    def _tend(self, runtime: PodRuntime) -> None:
        now = time.monotonic()
        if runtime.process is None or runtime.process.poll() is not None:
            if runtime.process is not None and runtime.restart_at == 0.0:
                self._restart_later(runtime, f"exited with {runtime.process.returncode}")
            elif now >= runtime.restart_at:
                runtime.restart_at = 0.0
                self._start(runtime)
        else:
            for kind, probe in runtime.probes.items():
                if (
                    now < probe.next_at
                    or (kind != "startupProbe" and not runtime.started)
                    or (kind == "startupProbe" and runtime.started)
                ):
                    continue
                probe.next_at = now + probe.spec.get("periodSeconds", 10)
                ok = self._probe(runtime, probe.spec)
                probe.failures = 0 if ok else probe.failures + 1
                if kind == "startupProbe" and ok:
                    runtime.started = True
                    now_ = time.monotonic()
                    for other in ("readinessProbe", "livenessProbe"):
                        if other in runtime.probes:
                            runtime.probes[other].next_at = now_
                elif kind == "readinessProbe":
                    if ok:
                        runtime.ready = True
                    elif probe.failures >= probe.spec.get("failureThreshold", 3):
                        runtime.ready = False
                elif not ok and probe.failures >= probe.spec.get("failureThreshold", 3):
                    self._restart_later(runtime, f"{kind} failed {probe.failures} times")
                    break
        self._write_status(runtime)

    def _write_status(self, runtime: PodRuntime) -> None:
        running = runtime.process is not None and runtime.process.poll() is None
        conditions = {c["type"]: c for c in runtime.pod.get("status", {}).get("conditions") or []}
        gates = [g["conditionType"] for g in runtime.pod["spec"].get("readinessGates") or []]
        gates_ok = all(conditions.get(g, {}).get("status") == "True" for g in gates)
        containers_ready = running and runtime.ready
        wanted = {
            "phase": "Running",
            "podIP": runtime.network.ip,
            "ready": containers_ready,
            "podReady": containers_ready and gates_ok,
            "restartCount": runtime.restart_count,
            "running": running,
            "started": runtime.started,
        }
        if wanted == runtime.status_written:
            return
        state = {"running": {"startedAt": now()}} if running else {"waiting": {"reason": "CrashLoopBackOff"}}
        status = {
            "phase": "Running",
            "podIP": runtime.network.ip,
            "podIPs": [{"ip": runtime.network.ip}],
            "hostIP": self.bridge.gateway,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                {
                    "type": "ContainersReady",
                    "status": "True" if containers_ready else "False",
                    "lastTransitionTime": now(),
                },
                {
                    "type": "Ready",
                    "status": "True" if containers_ready and gates_ok else "False",
                    "lastTransitionTime": now(),
                },
            ],
            "containerStatuses": [
                {
                    "name": runtime.container["name"],
                    "ready": containers_ready,
                    "restartCount": runtime.restart_count,
                    "started": runtime.started,
                    "image": runtime.container["image"],
                    "imageID": "",
                    "state": state,
                }
            ],
        }
        tolerate(404, self.core.patch_namespaced_pod_status, runtime.name, self.namespace, {"status": status})
        runtime.status_written = wanted

    # -- test helpers ----------------------------------------------------------------------------
    def find(self, pod_name: str) -> PodRuntime | None:
        with self._lock:
            matches = [r for r in self.pods.values() if r.name == pod_name]
            return matches[-1] if matches else None

    def runtime(self, pod_name: str) -> PodRuntime:
        found = self.find(pod_name)
        assert found is not None, f"pod {pod_name} is not running here"
        return found

    def kill_container(self, pod_name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """kill -9 the pod's server process (as if it crashed)."""
        process = self.runtime(pod_name).process
        assert process is not None and process.poll() is None
        os.kill(process.pid, sig)

    def cleanup(self) -> None:
        with self._lock:
            for uid in list(self.pods):
                self._remove(uid, pre_stop=False)  # the test is over: nobody is routed here
            stopping = list(self.terminating.values())
        for thread in stopping:
            thread.join(DEFAULT_GRACE_S + 10)
            for path in reversed(self.created_mount_points):
                subprocess.run(["rmdir", str(path)], capture_output=True)
