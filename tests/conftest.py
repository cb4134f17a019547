"""Shared fixtures: tiny HF checkpoints built once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The kubernetes client reads KUBECONFIG's *path* when it is imported; the fake API server of the
# operator tests writes this file when it starts. Set it before anything imports kubernetes.
os.environ["KUBECONFIG"] = str(Path(tempfile.mkdtemp(prefix="tpserve-kube-")) / "kubeconfig.yaml")

import pytest

from tpserve.testing.tiny_checkpoint import TinySpec, build_tiny_checkpoint

from .k8s.control_plane import ControlPlane, start_control_plane

# One variant per family; llama is sharded over several files, qwen3 ties its embeddings.
FAMILY_SPECS = {
    "llama": TinySpec(family="llama", shards=2),
    "mistral": TinySpec(family="mistral"),
    "qwen2": TinySpec(family="qwen2"),
    "qwen3": TinySpec(family="qwen3", tie_word_embeddings=True),
}


class CheckpointFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def __call__(self, family: str) -> Path:
        if family not in self._built:
            self._built[family] = build_tiny_checkpoint(self.root / family, FAMILY_SPECS[family])
        return self._built[family]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFactory:
    return CheckpointFactory(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver + kube-controller-manager for the whole run (tests/k8s/control_plane.py)."""
    plane = start_control_plane()
    try:
        yield plane
    finally:
        plane.stop()
