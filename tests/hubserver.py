"""A local stand-in for the Hugging Face Hub, speaking what ``huggingface_hub`` 2.x asks.

Serve repository folders on 127.0.0.1 and point ``HF_ENDPOINT`` at :attr:`LocalHub.url`::

    with LocalHub() as hub:
        hub.add_repo("Qwen/Tiny", folder, license_gated=False)
        os.environ["HF_ENDPOINT"] = hub.url

Endpoints: ``GET /api/models/{repo}[/revision/{rev}]`` (``id``, ``sha``, ``siblings``,
``gated``, ``cardData``), ``GET /api/models/{repo}/tree/{rev}`` (``oid``, ``size``, ``lfs``),
``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` (``X-Repo-Commit``, ``ETag``; LFS files get a 302
with ``X-Linked-Etag``/``X-Linked-Size`` to ``/cdn/...``), with ``Range`` support. Errors carry
``X-Error-Code`` (``RepoNotFound``, ``GatedRepo``, ``RevisionNotFound``, ``EntryNotFound``).
Every request is counted in :attr:`LocalHub.requests` as ``(method, path)``.

For adversarial tests a repository can also serve files no folder can hold (``extra_files``:
names such as ``../x`` or ``a\x00b``), model card metadata (``card_data``) or a raw info body
(``raw_info``), and call ``on_serve(repo, kind, name)`` after each answer so a test can change
the repository in the middle of an import (a new commit, a deleted file).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of some bytes (what the hub calls ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    """One served repository.

    Attributes:
        repo_id: ``org/name``.
        folder: The files served (read on every request, so tests may change them).
        sha: The commit all revisions resolve to.
        revisions: Extra branch or tag names that resolve to ``sha`` (``main`` always does).
        gated: Files need ``Authorization: Bearer <token>`` with a token in ``tokens``.
        tokens: Tokens granted access to a gated repository.
        corrupt: Files served with flipped bytes (their advertised checksums stay right).
        throttle: Serve file bodies at about this many bytes per second (0 = full speed).
        extra_files: Files served besides the folder's (any name, even one no disk allows).
        card_data: The model card metadata the info endpoint returns as ``cardData``.
        raw_info: A raw body served by the info endpoint instead of the JSON answer.
        on_serve: Called as ``on_serve(repo, kind, name)`` after each answer (``kind`` is
            ``info``, ``tree`` or ``file``; ``name`` the file, else ``""``).
    """

    repo_id: str
    folder: Path
    sha: str = ""
    revisions: set[str] = field(default_factory=set)
    gated: bool = False
    tokens: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    throttle: int = 0
    extra_files: dict[str, bytes] = field(default_factory=dict)
    card_data: dict | None = None
    raw_info: bytes | None = None
    on_serve: Callable[[HubRepo, str, str], None] | None = None

    def files(self) -> dict[str, bytes]:
        """Every file of the repository, by POSIX relative path."""
        found = {
            p.relative_to(self.folder).as_posix(): p.read_bytes()
            for p in sorted(self.folder.rglob("*"))
            if p.is_file()
        }
        return found | self.extra_files

    def served(self, kind: str, name: str = "") -> None:
        """Tell the test (``on_serve``) that an answer went out."""
        if self.on_serve is not None:
            self.on_serve(self, kind, name)

    def entry(self, path: str, data: bytes) -> dict:
        """The tree listing entry of one file."""
        item: dict = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if path.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            item["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        return item


class LocalHub:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS) that counts requests."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.auth_seen: list[str] = []
        self.served: Counter[str] = Counter()  # file name -> body bytes actually written
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The endpoint to put in ``HF_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_repo(self, repo_id: str, folder: Path, **options: object) -> HubRepo:
        """Serve ``folder`` as ``repo_id``; options are :class:`HubRepo` fields."""
        repo = HubRepo(repo_id, Path(folder), **options)  # type: ignore[arg-type]
        if not repo.sha:
            repo.sha = hashlib.sha1(f"{repo_id}:{folder}".encode()).hexdigest()
        self.repos[repo_id] = repo
        return repo

    def reset_counts(self) -> None:
        """Forget the requests counted so far."""
        with self._lock:
            self.requests.clear()

    def downloads(self, repo_id: str | None = None) -> int:
        """How many GET requests fetched file bytes (``/resolve/`` and ``/cdn/``)."""
        with self._lock:
            return sum(
                n
                for (method, path), n in self.requests.items()
                if method == "GET"
                and ("/resolve/" in path or path.startswith("/cdn/"))
                and (repo_id is None or f"/{repo_id}/" in path)
            )

    def _count(self, method: str, path: str, auth: str | None) -> None:
        with self._lock:
            self.requests[(method, path)] += 1
            if auth:
                self.auth_seen.append(auth)


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/tree/(?P<rev>[^/]+)(?P<sub>/.*)?$")
_CDN = re.compile(r"^/cdn/(?P<repo>.+)/(?P<sha>[0-9a-f]{40})/(?P<file>[^/]+(?:/.*)?)$")


class _Handler(BaseHTTPRequestHandler):
    server_hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output quiet
        return

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- routing --------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        raw = urlparse(self.path).path
        hub = self.server_hub
        hub._count(self.command, unquote(raw), self.headers.get("Authorization"))
        # Match the quoted path, then unquote each part: a revision such as refs%2Fpr%2F3
        # (or an attacker's %2Fetc) is one segment, as on the real hub.
        if m := _TREE.match(raw):
            return self._tree(unquote(m["repo"]), unquote(m["rev"]))
        if m := _API.match(raw):
            return self._info(unquote(m["repo"]), unquote(m["rev"] or "main"))
        if m := _CDN.match(raw):
            repo_id, sha, name = unquote(m["repo"]), m["sha"], unquote(m["file"])
            return self._file(hub.repos.get(repo_id), sha, name, head, cdn=True)
        if m := _RESOLVE.match(raw):
            repo = self._repo(unquote(m["repo"]))
            if repo is None or (sha := self._revision(repo, unquote(m["rev"]))) is None:
                return None
            if repo.gated and not self._authorized(repo):
                return self._error(401, "GatedRepo", "Access to this model is restricted.")
            return self._file(repo, sha, unquote(m["file"]), head, cdn=False)
        return self._error(404, "RepoNotFound", "Not found.")

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found.")
        return repo

    def _revision(self, repo: HubRepo, rev: str) -> str | None:
        if rev in ({"main", repo.sha} | repo.revisions):
            return repo.sha
        self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return None

    def _authorized(self, repo: HubRepo) -> bool:
        auth = self.headers.get("Authorization") or ""
        return auth.startswith("Bearer ") and auth[len("Bearer ") :] in repo.tokens

    # -- endpoints ------------------------------------------------------------------------
    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or (sha := self._revision(repo, rev)) is None:
            return
        files = repo.files()
        body = {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": p} for p in files],
            "tags": [],
        }
        if repo.card_data is not None:
            body["cardData"] = repo.card_data
        if repo.raw_info is not None:
            headers = {"Content-Type": "application/json", "X-Repo-Commit": sha}
            self._send(200, repo.raw_info, headers, head=False)
        else:
            self._json(body, {"X-Repo-Commit": sha})
        repo.served("info")

    def _tree(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or (sha := self._revision(repo, rev)) is None:
            return
        entries = [repo.entry(p, data) for p, data in repo.files().items()]
        self._json(entries, {"X-Repo-Commit": sha})
        repo.served("tree")

    def _file(self, repo: HubRepo | None, sha: str, name: str, head: bool, cdn: bool) -> None:
        files = repo.files() if repo is not None else {}
        if repo is None or name not in files:
            headers = {"X-Repo-Commit": sha}
            return self._error(404, "EntryNotFound", f"{name} does not exist", headers)
        data = files[name]
        entry = repo.entry(name, data)
        if entry.get("lfs") and not cdn:
            sha256 = entry["lfs"]["oid"]
            host, port = self.server.server_address[:2]
            location = f"http://{host}:{port}/cdn/{repo.repo_id}/{sha}/{quote(name)}"
            headers = {
                "Location": location,
                "X-Repo-Commit": sha,
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{entry["oid"]}"',
            }
            return self._send(302, b"", headers, head=True)
        etag = entry["lfs"]["oid"] if entry.get("lfs") else entry["oid"]
        if name in repo.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        status, start = 200, 0
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m[1])
            end = int(m[2]) if m[2] else len(data) - 1
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", headers, head)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers, head, rate=repo.throttle, name=name)
        if not head:
            repo.served("file", name)

    # -- responses ------------------------------------------------------------------------
    def _json(self, obj: object, headers: dict[str, str]) -> None:
        body = json.dumps(obj).encode()
        self._send(200, body, {"Content-Type": "application/json", **headers}, head=False)

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        extra = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        self._send(
            status, body, {"Content-Type": "application/json", **extra}, self.command == "HEAD"
        )

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        head: bool,
        rate: int = 0,
        name: str | None = None,
    ) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head or self.command == "HEAD":
            return
        chunk = max(1024, rate // 20) if rate else len(body) or 1
        hub = self.server_hub
        try:
            for i in range(0, len(body), chunk):
                self.wfile.write(body[i : i + chunk])
                if name is not None:
                    with hub._lock:
                        hub.served[name] += len(body[i : i + chunk])
                if rate:
                    time.sleep(chunk / rate)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed import): nothing to answer
