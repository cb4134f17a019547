"""Shared fixtures: tiny HF checkpoints built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpserve.testing.tiny_checkpoint import TinySpec, build_tiny_checkpoint

from .k8s.fixtures import control_plane, namespace, operator_install  # noqa: F401  (shared fixtures)

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
