"""`--model org/name` through the real huggingface_hub client, against a hub server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tpserve.engine.launcher import free_port

from .hub_server import HubServer, Repo, files_of
from .server_process import ServerProcess, poll_until

REPO = "tpserve-test/tiny-llama"


@pytest.fixture()
def hub(tiny_checkpoint) -> Iterator[HubServer]:
    with HubServer() as server:
        repo = Repo()
        files = files_of(tiny_checkpoint("llama"))
        repo.add_commit(files, "v1")
        # A second commit on main: the same model with another generation config.
        repo.add_commit(files | {"generation_config.json": b'{"temperature": 0.5}'}, "main")
        server.repos[REPO] = repo
        yield server


def hub_env(hub: HubServer, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"} | extra


def resolve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI's parse-and-resolve step alone (it prints the parsed arguments)."""
    cmd = [sys.executable, "-m", "tpserve.entrypoints.cli", "--device", "cpu", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_a_hub_model_downloads_then_serves_offline_from_the_cache(hub: HubServer, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "hf")
    main = hub.repos[REPO].refs["main"]
    server = ServerProcess(["--model", REPO, "--device", "cpu"], tmp_path / "online.log", env=env)
    try:
        server.wait_healthy()
        assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == [REPO]
        body = {"model": REPO, "prompt": "hello", "max_tokens": 3, "ignore_eos": True}
        assert httpx.post(f"{server.url}/v1/completions", json=body).json()["usage"]["completion_tokens"] == 3
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert f"{REPO} at commit {main}" in log, log
    snapshot = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / main
    assert (snapshot / "config.json").is_file() and list(snapshot.glob("*.safetensors"))

    # Second start: offline, from the cache alone (the hub sees no request at all).
    asked = len(hub.requests)
    offline_env = hub_env(hub, tmp_path / "hf", HF_HUB_OFFLINE="1")
    server = ServerProcess(["--model", REPO, "--device", "cpu"], tmp_path / "offline.log", env=offline_env)
    try:
        server.wait_healthy()
        assert httpx.post(f"{server.url}/v1/completions", json=body).json()["usage"]["completion_tokens"] == 3
    finally:
        server.stop()
    assert f"{REPO} at commit {main}" in server.log_path.read_text(errors="replace")
    assert len(hub.requests) == asked, hub.requests[asked:]


def test_a_revision_pins_a_commit(hub: HubServer, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "hf")
    v1 = hub.repos[REPO].refs["v1"]
    for revision in ("v1", v1):
        pinned = resolve(env, "--model", REPO, "--revision", revision)
        assert pinned.returncode == 0, pinned.stderr
        assert f"model_commit='{v1}'" in pinned.stdout
        snapshot = Path(pinned.stdout.split("model_path='")[1].split("'")[0])
        assert snapshot.name == v1 and "temperature" not in (snapshot / "generation_config.json").read_text()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "missing",
            "--model tpserve-test/missing: no such repository, or it is private and HF_TOKEN does not grant access (HTTP 404)",
        ),
        ("gated", f"--model {REPO}: the repository is gated (HTTP 401); set HF_TOKEN to a token with access"),
        ("revision", f"--model {REPO} --revision v9: no such revision (HTTP 404)"),
        ("offline", f"--model {REPO}: HF_HUB_OFFLINE=1 and the cache"),
        ("modelscope", "--model-source modelscope needs the modelscope package (pip install modelscope)"),
    ],
)
def test_hub_errors_name_the_model_and_the_status(hub: HubServer, tmp_path: Path, case: str, message: str) -> None:
    env = hub_env(hub, tmp_path / "hf")
    args = ["--model", REPO]
    if case == "missing":
        args = ["--model", "tpserve-test/missing"]
    elif case == "gated":
        hub.repos[REPO].token = "hf_secret"
    elif case == "revision":
        args += ["--revision", "v9"]
    elif case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        args += ["--model-source", "modelscope"]
    refused = resolve(env, *args)
    assert refused.returncode == 2, refused.stdout
    [line] = refused.stderr.strip().splitlines()[-1:]
    assert message in line, refused.stderr
    if case == "gated":  # the token opens it
        assert resolve(env | {"HF_TOKEN": "hf_secret"}, *args).returncode == 0


def test_an_interrupted_download_resumes(hub: HubServer, tmp_path: Path) -> None:
    """The connection drops 11 MiB into a 12 MiB weights file: the client asks for the rest only
    (a Range request from the last whole 10 MiB chunk it wrote) and ends with the whole file."""
    repo = hub.repos[REPO]
    big = bytes(range(256)) * (12 * 4096)  # 12 MiB
    repo.add_commit(repo.commits[repo.refs["main"]] | {"big.safetensors": big}, "big")
    hub.cut_next["big.safetensors"] = 11 * 2**20
    done = resolve(hub_env(hub, tmp_path / "hf"), "--model", REPO, "--revision", "big")
    assert done.returncode == 0, done.stderr
    gets = [r[2] for r in hub.requests if r[0] == "GET" and r[1].endswith("big.safetensors")]
    assert gets == [None, f"bytes={10 * 2**20}-"], gets
    snapshot = Path(done.stdout.split("model_path='")[1].split("'")[0])
    assert (snapshot / "big.safetensors").read_bytes() == big


def test_every_node_loads_the_commit_node0_resolved(hub: HubServer, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "hf")
    first = hub.repos[REPO].refs["main"]
    common = ["--model", REPO, "--tp", "2", "--nnodes", "2", "--device", "cpu"]
    common += ["--dist-init-addr", f"127.0.0.1:{free_port()}"]
    node0 = ServerProcess([*common, "--node-rank", "0"], tmp_path / "node0.log", env=env)
    node1: ServerProcess | None = None
    try:
        poll_until(lambda: f"at commit {first}" in node0.log_tail(50_000), 60, what="node 0 resolved main")
        hub.repos[REPO].refs["main"] = hub.repos[REPO].refs["v1"]  # main moves while the group starts
        node1 = ServerProcess([*common, "--node-rank", "1"], tmp_path / "node1.log", env=env)
        node0.wait_healthy(120)
        node1.wait_healthy(60)
        assert f"{REPO} at commit {first}" in node1.log_tail(50_000)
    finally:
        node0.stop()
        if node1 is not None:
            node1.stop()
