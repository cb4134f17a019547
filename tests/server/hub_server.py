"""A small Hugging Face hub on loopback, speaking the HTTP API as huggingface_hub's client uses it.

Serves model repos held in memory: `GET /api/models/{id}/revision/{rev}` (model info with sha and
siblings), `GET /api/models/{id}/tree/{rev}` (the file listing snapshot_download reads), and
`HEAD`/`GET /{id}/resolve/{rev}/{file}` with ETag, X-Repo-Commit and Content-Length, honouring
Range (resumed downloads). Gated repos want `Authorization: Bearer <token>` (401 otherwise);
unknown repos and revisions are 404 with the hub's X-Error-Code. `cut_next[file] = n` makes the
next download of that file stop after n bytes (the connection drops mid-file).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> file -> content
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    token: str | None = None  # gated: this token is required

    def add_commit(self, files: dict[str, bytes], *refs: str) -> str:
        sha = hashlib.sha1(b"".join(k.encode() + v for k, v in sorted(files.items()))).hexdigest()
        self.commits[sha] = files
        for ref in refs:
            self.refs[ref] = sha
        return sha

    def commit(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


class HubServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.repos: dict[str, Repo] = {}
        self.cut_next: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _error(self, status: int, code: str, message: str) -> None:
                payload = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, value: object) -> None:
                payload = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _repo(self, repo_id: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
                    return None
                if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
                    return None
                return repo

            def _serve(self, body: bool) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?", path)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if api:
                    repo_id, kind, revision = api.group(1), api.group(2), api.group(3) or "main"
                    if (repo := self._repo(repo_id)) is None:
                        return
                    if (sha := repo.commit(revision)) is None:
                        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                        return
                    files = repo.commits[sha]
                    if kind == "tree":
                        self._json(
                            [
                                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                                for name, data in files.items()
                            ]
                        )
                    else:
                        siblings = [{"rfilename": name} for name in files]
                        self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "siblings": siblings})
                elif resolve:
                    repo_id, revision, name = resolve.groups()
                    if (repo := self._repo(repo_id)) is None:
                        return
                    if (sha := repo.commit(revision)) is None:
                        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                        return
                    if name not in repo.commits[sha]:
                        self._error(404, "EntryNotFound", f"{name} does not exist at {revision}")
                        return
                    self._file(repo.commits[sha][name], sha, name, body)
                else:
                    self._error(404, "RepoNotFound", "unknown route")

            def _file(self, data: bytes, sha: str, name: str, body: bool) -> None:
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if ranged:
                    start = int(ranged.group(1))
                self.send_response(206 if ranged else 200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data) - start))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                cut = hub.cut_next.pop(name, None)
                if cut is not None:
                    self.wfile.write(data[start : start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(data[start:])

        return Handler
