"""The operator as the chart deploys it: `helm install` into the test cluster, run with its token.

There is no kubelet to run the chart's Deployment, so the test plays its pod: the operator runs
(the real kopf, `python -m tpserve_operator`, in a subprocess) with the container's command and
environment read from the installed Deployment, and authenticates with a token of the chart's
ServiceAccount from the TokenRequest API. A verb missing from the chart's RBAC is a 403 in the
operator's log, which every operator test checks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .control_plane import REPO, ControlPlane

CHART = REPO / "charts" / "tpserve"
# Tests cannot wait the production intervals; everything else comes from the chart's defaults.
REFUSED = re.compile(r"\(403\)|\bForbidden\b|\bforbidden:")  # how kopf and the client log a 403
FAST_VALUES = {"reconcileIntervalSeconds": 0.5, "restartBackoffBaseSeconds": 0.2}


def helm(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    helm_bin = os.environ.get("HELM", str(REPO / ".venv" / "bin" / "helm"))
    done = subprocess.run(
        [helm_bin, f"--kubeconfig={plane.kubeconfig}", *args], capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        raise RuntimeError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


@dataclass
class OperatorInstall:
    """One `helm install` of the chart: its Deployment's operator container and a token for its ServiceAccount."""

    plane: ControlPlane
    release: str
    namespace: str
    command: list[str]
    env: dict[str, str]
    field_env: dict[str, str]  # name -> downward-API field path, resolved per run as the kubelet would
    user: str
    token: str
    runs: int = 0

    def kubeconfig(self, server: str | None = None) -> Path:
        """A kubeconfig with the ServiceAccount's token, for the API server or `server` (a proxy)."""
        where = "direct" if server is None else re.sub(r"\W+", "-", server)
        path = self.plane.work / f"{self.release}-{where}.kubeconfig"
        self.plane.write_kubeconfig(path, user=self.user, token=self.token, server=server)
        return path

    @contextmanager
    def run(self, log_path: Path, server: str | None = None, **overrides: str) -> Iterator[OperatorProcess]:
        """One replica of the Deployment's operator container; `overrides` replace env values."""
        process = self.start(log_path, server, **overrides)
        try:
            yield process
        finally:
            process.stop()

    def start(self, log_path: Path, server: str | None = None, **overrides: str) -> OperatorProcess:
        self.runs += 1
        pod = {"metadata.name": f"{self.release}-operator-{self.runs}", "metadata.namespace": self.namespace}
        env = {name: pod[path] for name, path in self.field_env.items()}
        metrics_port = _free_port()
        env |= {**self.env, "LIVENESS_PORT": str(_free_port()), "METRICS_PORT": str(metrics_port), **overrides}
        process = OperatorProcess.start(self.command, env, self.kubeconfig(server), log_path)
        process.pod_name = pod["metadata.name"]
        process.metrics_url = f"http://127.0.0.1:{metrics_port}"
        return process


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    pod_name: str = ""  # the replica's identity (its POD_NAME)
    metrics_url: str = ""  # its Prometheus endpoint (METRICS_PORT)

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], kubeconfig: Path, log_path: Path) -> OperatorProcess:
        # The container runs `python3 -m tpserve_operator`; here python3 is this virtualenv's.
        argv = [sys.executable if command[0] in ("python", "python3") else command[0], *command[1:]]
        process_env = {**os.environ, **env, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, env=process_env, stdout=log, stderr=subprocess.STDOUT)
        return cls(process, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def forbidden_calls(self) -> list[str]:
        """Log lines of API calls the ServiceAccount was refused."""
        return [line for line in self.log().splitlines() if REFUSED.search(line)]


def install(plane: ControlPlane, release: str, namespace: str, **values: object) -> OperatorInstall:
    # --set-json: `--set x=0.5` would hand the chart's schema a string.
    merged = {**FAST_VALUES, **values}
    settings = [arg for key, value in merged.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]
    helm(plane, "install", release, str(CHART), "-n", namespace, "--create-namespace", "--wait=false", *settings)
    deployment = json.loads(
        plane.kubectl(
            "get", "deployment", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "json"
        ).stdout
    )["items"][0]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {item["name"]: item["value"] for item in container.get("env") or [] if "value" in item}
    field_env = {
        item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
        for item in container.get("env") or []
        if "fieldRef" in (item.get("valueFrom") or {})
    }
    account = pod["serviceAccountName"]
    token = plane.kubectl("create", "token", account, "-n", namespace, "--duration=6h").stdout.strip()
    user = f"system:serviceaccount:{namespace}:{account}"
    return OperatorInstall(plane, release, namespace, container["command"], env, field_env, user, token)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
