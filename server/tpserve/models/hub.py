"""Models named by a hub id (`org/name`): resolved to one commit, downloaded through huggingface_hub.

Only what serving reads is fetched (config, tokenizer, safetensors and their index); huggingface_hub
honours HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE=1 (then only the cache is
read). Node 0 downloads the user's revision (a branch, tag or commit) and learns its commit from the
snapshot; the other nodes are told to load that very commit, so a tag moved mid-start cannot split
the group. One download of a repo runs at a time per cache (a file lock in the cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What serving reads; weights only as safetensors (no .bin, no .pth, no other formats).
SERVING_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
    "added_tokens.json",
]


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    commit: str
    path: Path  # the snapshot directory of that commit


def is_hub_id(model: str) -> bool:
    """`org/name` that is not a path on this machine."""
    return bool(HUB_ID.match(model)) and not Path(model).exists()


def download(repo_id: str, revision: str | None, node: int | None) -> HubModel:
    """The snapshot of `revision` (a branch, tag or commit; default main), downloaded unless the cache
    has it (a partial file resumes where it stopped). Node 0 passes the user's revision and learns
    its commit here; the other nodes pass that commit."""
    import huggingface_hub

    who = "download" if node is None else f"node {node}"
    log.info("%s: fetching %s at %s (config, tokenizer, safetensors)", who, repo_id, revision or "main")
    try:
        with _cache_lock(repo_id):
            path = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=SERVING_FILES))
    except Exception as exc:
        raise _named(exc, repo_id, revision) from exc
    commit = path.name  # the cache keeps each snapshot under its commit hash
    log.info("%s: %s at commit %s is in %s", who, repo_id, commit, path)
    return HubModel(repo_id, commit, path)


@contextlib.contextmanager
def _cache_lock(repo_id: str) -> Iterator[None]:
    """One download of a repo at a time per cache (pods sharing a volume): the others wait here,
    then find the files in place. huggingface_hub locks single blobs; this keeps a whole second
    snapshot download from running beside the first."""
    from huggingface_hub import constants

    locks = Path(constants.HF_HUB_CACHE) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"tpserve--{repo_id.replace('/', '--')}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _named(exc: Exception, repo_id: str, revision: str | None) -> ConfigError:
    """A hub failure as one line naming the model, the revision and the HTTP status."""
    from huggingface_hub import errors

    where = f"--model {repo_id}" + (f" --revision {revision}" if revision else "")
    response = getattr(exc, "response", None)
    status = f"HTTP {response.status_code}" if response is not None else type(exc).__name__
    if isinstance(exc, errors.GatedRepoError):
        return ConfigError(f"{where}: the repository is gated ({status}); set HF_TOKEN to a token with access")
    if isinstance(exc, errors.RevisionNotFoundError):
        return ConfigError(f"{where}: no such revision ({status})")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ConfigError(
            f"{where}: no such repository, or it is private and HF_TOKEN does not grant access ({status})"
        )
    if isinstance(exc, errors.LocalEntryNotFoundError):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return ConfigError(
                f"{where}: HF_HUB_OFFLINE=1 and the cache ({constants.HF_HUB_CACHE}) does not hold it; "
                "download it once online, or unset HF_HUB_OFFLINE"
            )
        return ConfigError(f"{where}: not in the cache and the hub cannot be reached ({exc})")
    return ConfigError(f"{where}: the hub refused or failed ({status}: {exc})")
