"""Example TPInferenceService bodies shared by the operator tests."""

from __future__ import annotations

import copy
from typing import Any


def service_body(name: str = "llama", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {
            "path": "/models/llama-3.1-70b",
            "servedName": "llama-70b",
            "volume": {"persistentVolumeClaim": {"claimName": "models"}},
        },
        "image": "registry.example.com/tpserve:0.1.0",
        "tensorParallelSize": 16,
        "nodes": 2,
        "replicas": 1,
        "engine": {"memFractionStatic": 0.85, "maxPrefillLength": 4096, "pageSize": 16},
        "port": 30000,
        "shmSize": "16Gi",
    }
    base.update(copy.deepcopy(spec))
    return {
        "apiVersion": "tpserve.io/v1alpha1",
        "kind": "TPInferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }
