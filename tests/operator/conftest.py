"""The `cluster` fixture of the operator tests: a namespace of the real control plane, its node, its operator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.api import ControllerLoop
from tests.k8s.operator_install import OperatorInstall

from .cluster import OperatorCluster


@pytest.fixture()
def cluster(namespace: str, operator_install: OperatorInstall, tmp_path: Path) -> Iterator[OperatorCluster]:
    c = OperatorCluster(namespace, operator_install, tmp_path)
    with ControllerLoop(c.kubelet) as loop:
        yield c
    assert not loop.errors, f"the simulated kubelet failed: {loop.errors[:3]}"
    assert not c.forbidden_calls(), "the chart's RBAC refused the operator:\n" + "\n".join(c.forbidden_calls()[:5])
