"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The binaries come from `tools/k8s/build.sh` (built once from pinned Go modules, then cached). The
API server runs with RBAC and Node authorization, its default admission plugins plus
OwnerReferencesPermissionEnforcement and NodeRestriction, a service-account
signing key and a self-signed serving certificate; an admin token (group system:masters) is the
suite's credential, written into a kubeconfig. The controller manager runs the controllers the
operator relies on (StatefulSets, garbage collection, service accounts and their tokens, endpoint
slices, disruption budgets). kube-scheduler runs only inside `scheduler(name)`, for the pods that
name its profile. There is no kubelet or container runtime: pods stay Pending unless a test plays
the node.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60
CONTROLLERS = "statefulset-controller,garbage-collector-controller,serviceaccount-controller,"
CONTROLLERS += "serviceaccount-token-controller,endpointslice-controller,namespace-controller,disruption-controller"


def build_binaries() -> Path:
    """The folder holding etcd, kube-apiserver and kube-controller-manager (built if missing)."""
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "k8s" / "build.sh")], check=True, capture_output=True, text=True
    )
    return Path(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    bin_dir: Path
    work: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_port: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        """The API server's self-signed serving certificate, which clients trust."""
        return self.work / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.work / "admin.kubeconfig"

    def start(self) -> None:
        started = time.monotonic()
        etcd_url = self._start_etcd()
        self._write_keys()
        self.api_port = _free_port()
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.work / 'certs'}",  # a self-signed serving certificate is made here
            f"--token-auth-file={self.work / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            # Beside the defaults: owner references that block deletion need the right to set the
            # owner's finalizers (as OpenShift and hardened clusters enforce), and kubelets may
            # only touch their own node and pods.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement,NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.work / 'sa.pub'}",
            f"--service-account-signing-key-file={self.work / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",  # no routable address on loopback for the kubernetes Service
            "--allow-privileged=true",
        )
        self._wait_ready()
        self.write_kubeconfig(self.kubeconfig, user="admin", token=self.token)
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={CONTROLLERS}",
            f"--service-account-private-key-file={self.work / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=true",
        )
        self.wait_for(lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") == 200, "default SA")
        self.startup_s = time.monotonic() - started

    def stop(self) -> None:
        # One at a time, in reverse start order, each while the ones it depends on still run:
        # signalled all at once, one of them used up the whole 10 s wait (the stop took 10.1 s,
        # now 1.2 s).
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    @contextmanager
    def scheduler(self, name: str) -> Iterator[None]:
        """kube-scheduler with one profile, `name`: it places only pods with that schedulerName, so
        the other tests' pods stay with their own simulated nodes."""
        config = self.work / f"scheduler-{name}.yaml"
        config.write_text(
            "apiVersion: kubescheduler.config.k8s.io/v1\n"
            "kind: KubeSchedulerConfiguration\n"
            f"clientConnection: {{kubeconfig: {self.kubeconfig}}}\n"
            "leaderElection: {leaderElect: false}\n"
            f"profiles: [{{schedulerName: {name}}}]\n"
        )
        self._spawn("kube-scheduler", f"--config={config}", "--secure-port=0")
        process = self.processes[-1]
        try:
            yield
        finally:
            process.terminate()
            process.wait(timeout=10)
            self.processes.remove(process)

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        kubectl = os.environ.get("KUBECTL", str(REPO / ".venv" / "bin" / "kubectl"))
        return subprocess.run(
            [kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            check=check,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=60,
        )

    def wait_for(self, condition: object, what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if callable(condition) and condition():
                return
            self._check_alive()
            time.sleep(0.2)
        raise TimeoutError(f"control plane: {what} not there after {timeout_s} s (logs in {self.work})")

    # -- parts -------------------------------------------------------------------------------
    def _start_etcd(self) -> str:
        client, peer = _free_port(), _free_port()
        self._spawn(
            "etcd",
            f"--data-dir={self.work / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--log-level=warn",
        )
        return f"http://127.0.0.1:{client}"

    def _write_keys(self) -> None:
        key, pub = self.work / "sa.key", self.work / "sa.pub"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True
        )
        (self.work / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')

    def write_kubeconfig(self, path: Path, user: str, token: str, server: str | None = None) -> None:
        """A kubeconfig for `token` at the API server (or at `server`, e.g. a proxy in front of it)."""
        server = server or self.url
        authority = f"certificate-authority: {self.ca_file}" if server.startswith("https") else ""
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    {authority}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: test
  context: {{cluster: test, user: {user}}}
current-context: test
"""
        )

    def _spawn(self, binary: str, *args: str) -> None:
        log = open(self.work / f"{binary}.log", "wb")
        self.processes.append(
            subprocess.Popen([str(self.bin_dir / binary), *args], stdout=log, stderr=subprocess.STDOUT)
        )

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                name = Path(str(process.args[0])).name  # type: ignore[index]
                log = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log}")

    def _get(self, path: str) -> int:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # before the serving certificate is known to exist
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def _wait_ready(self) -> None:
        self.wait_for(lambda: self._get("/readyz") == 200, "kube-apiserver /readyz")


def start_control_plane() -> ControlPlane:
    plane = ControlPlane(build_binaries(), Path(tempfile.mkdtemp(prefix="tpserve-k8s-")))
    try:
        plane.start()
    except BaseException:
        plane.stop()
        raise
    return plane
