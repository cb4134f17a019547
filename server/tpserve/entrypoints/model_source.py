"""`--model` as the user wrote it -> a directory on this node (and, for a hub id, its commit).

A local directory or GGUF file is used as is. A hub id `org/name` is resolved by node 0 to one
commit (from `--revision`: a branch, tag or commit), which node 0 publishes on the rendezvous store;
every other node downloads exactly that commit, so the group always loads the same files.
`--model-source modelscope` downloads through the modelscope package instead (Mini-SGLang's flag).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..core.errors import ConfigError
from ..distributed.status_board import wait_model_commit
from ..models import hub


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    commit: str | None = None  # set for hub models
    hub_id: str | None = None


def resolve_model(model: str, revision: str | None, source: str, node_rank: int, dist_init_addr: str) -> ResolvedModel:
    if not hub.is_hub_id(model):
        return ResolvedModel(model)
    if source == "modelscope":
        return _from_modelscope(model, revision)
    # Node 0 resolves the revision (downloading it); the others load the commit it found.
    snapshot = hub.download(model, revision if node_rank == 0 else wait_model_commit(dist_init_addr), node_rank)
    return ResolvedModel(str(snapshot.path), snapshot.commit, model)


def _from_modelscope(model: str, revision: str | None) -> ResolvedModel:
    if importlib.util.find_spec("modelscope") is None:
        raise ConfigError("--model-source modelscope needs the modelscope package (pip install modelscope)")
    from modelscope import snapshot_download  # type: ignore[import-not-found]

    try:
        path = snapshot_download(model, revision=revision, allow_patterns=hub.SERVING_FILES)
    except Exception as exc:
        raise ConfigError(f"--model {model} (modelscope): {type(exc).__name__}: {exc}") from exc
    return ResolvedModel(str(path), None, model)
