"""A local stand-in for the Hugging Face Hub: what ``huggingface_hub`` 2.x and ``datasets`` ask.

Serve folders on 127.0.0.1 (``hub.add_repo("Qwen/Tiny", folder)`` for a model,
``hub.add_dataset("org/alpaca", folder)`` for a dataset) and point ``HF_ENDPOINT`` at
:attr:`LocalHub.url`. Endpoints (``{kind}`` is ``models`` or ``datasets``):
``GET /api/{kind}/{repo}[/revision/REV]`` (``id``, ``sha``, ``siblings``, ``gated``,
``cardData``); ``GET /api/{kind}/{repo}/tree/REV[/PATH]`` with ``recursive`` and ``expand``
(files with ``oid``, ``size``, ``lfs``; folders as ``directory``; ``expand=True`` adds
``lastCommit``, ``securityFileStatus``); ``POST /api/{kind}/{repo}/paths-info/REV`` (form
``paths``, ``expand``; missing paths left out); ``HEAD``/``GET`` ``/{repo}/resolve/REV/FILE``
(models) and ``/datasets/{repo}/resolve/REV/FILE`` (``X-Repo-Commit``, ``ETag``; LFS files,
``.parquet`` among them, get a 302 with ``X-Linked-Etag``/``X-Linked-Size`` to
``/cdn/{kind}/...``), with ``Range``.

Errors carry ``X-Error-Code`` as the hub's do: an unknown repository is a 401 ``RepoNotFound``
(the hub's answer without a token), an unknown revision a 404 ``RevisionNotFound``, a missing
file or folder a 404 ``EntryNotFound``; a gated repository's files are a 401 ``GatedRepo``
without a token and a 403 ``GatedRepo`` with one not granted (info and tree stay public).
Every request is counted in :attr:`LocalHub.requests` as ``(method, path)`` and kept in order
in :attr:`LocalHub.log` as ``(method, path?query)``.

For adversarial tests a repository can serve files no folder can hold (``extra_files``), card
metadata (``card_data``) or a raw info body (``raw_info``), and call ``on_serve(repo, kind,
name)`` after each answer so a test can change the repository in the middle of a download.
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
from urllib.parse import parse_qs, quote, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx", ".parquet", ".arrow")
KINDS = {"models": "model", "datasets": "dataset"}
_COMMIT_DATE = "2024-01-01T00:00:00.000Z"


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
        repo_type: ``model`` or ``dataset``.
        revisions: Extra branch or tag names that resolve to ``sha`` (``main`` always does).
        gated: Files need ``Authorization: Bearer <token>`` with a token in ``tokens``, which
            lists the tokens granted access.
        corrupt: Files served with flipped bytes (their advertised checksums stay right).
        throttle: Serve file bodies at about this many bytes per second (0 = full speed).
        extra_files: Files served besides the folder's (any name, even one no disk allows).
        card_data: The card metadata the info endpoint returns as ``cardData``.
        raw_info: A raw body served by the info endpoint instead of the JSON answer.
        on_serve: Called as ``on_serve(repo, kind, name)`` after each answer (``kind`` is
            ``info``, ``tree`` or ``file``; ``name`` the file, else ``""``).
    """

    repo_id: str
    folder: Path
    sha: str = ""
    repo_type: str = "model"
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

    def entry(self, path: str, data: bytes, expand: bool = False) -> dict:
        """The tree listing entry of one file."""
        item: dict = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if path.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            item["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        if expand:
            item["securityFileStatus"] = {"status": "safe", "avScan": {}, "pickleImportScan": {}}
        return self._expanded(item, expand)

    def folder_entry(self, path: str, expand: bool = False) -> dict:
        """The tree listing entry of one folder (its ``oid`` is stable per commit)."""
        oid = hashlib.sha1(f"tree:{self.sha}:{path}".encode()).hexdigest()
        return self._expanded({"type": "directory", "path": path, "oid": oid, "size": 0}, expand)

    def _expanded(self, item: dict, expand: bool) -> dict:
        if expand:
            item["lastCommit"] = {"id": self.sha, "title": "Upload", "date": _COMMIT_DATE}
        return item

    def listing(self, sub: str, recursive: bool, expand: bool) -> list[dict] | None:
        """The tree entries under folder ``sub`` ("" = root), or None if it is no folder."""
        files = self.files()
        folders = _folders(files)
        if sub and sub not in folders:
            return None
        prefix = f"{sub}/" if sub else ""

        def wanted(path: str) -> bool:
            rest = path[len(prefix) :]
            return path.startswith(prefix) and bool(rest) and (recursive or "/" not in rest)

        dirs = [self.folder_entry(d, expand) for d in sorted(folders) if d and wanted(d)]
        return dirs + [self.entry(p, b, expand) for p, b in files.items() if wanted(p)]


def _folders(files: dict[str, bytes]) -> set[str]:
    """Every folder holding a file, ``""`` (the root) included: ``a/b/c.txt`` -> a, a/b."""
    parts = [p.split("/")[:-1] for p in files]
    return {""} | {"/".join(f[: i + 1]) for f in parts for i in range(len(f))}


class LocalHub:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS) that counts requests."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.datasets: dict[str, HubRepo] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str]] = []
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
        """Serve ``folder`` as model ``repo_id``; options are :class:`HubRepo` fields."""
        repo = HubRepo(repo_id, Path(folder), **options)  # type: ignore[arg-type]
        if not repo.sha:
            repo.sha = hashlib.sha1(f"{repo.repo_type}:{repo_id}:{folder}".encode()).hexdigest()
        table = self.datasets if repo.repo_type == "dataset" else self.repos
        table[repo_id] = repo
        return repo

    def add_dataset(self, repo_id: str, folder: Path, **options: object) -> HubRepo:
        """Serve ``folder`` as dataset ``repo_id``; options are :class:`HubRepo` fields."""
        return self.add_repo(repo_id, folder, repo_type="dataset", **options)

    def lookup(self, kind: str, repo_id: str) -> HubRepo | None:
        """The repository of URL kind ``models``/``datasets`` named ``repo_id``, or None."""
        return (self.datasets if kind == "datasets" else self.repos).get(repo_id)

    def reset_counts(self) -> None:
        """Forget the requests counted so far."""
        with self._lock:
            self.requests.clear()
            self.log.clear()

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

    def _count(self, method: str, path: str, query: str, auth: str | None) -> None:
        with self._lock:
            self.requests[(method, path)] += 1
            self.log.append((method, f"{path}?{query}" if query else path))
            if auth:
                self.auth_seen.append(auth)


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_KIND = r"(?P<kind>models|datasets)"
_RESOLVE_DS = re.compile(rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(rf"^/api/{_KIND}/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(rf"^/api/{_KIND}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$")
_PATHS = re.compile(rf"^/api/{_KIND}/{_REPO}/paths-info/(?P<rev>[^/]+)$")
_CDN = re.compile(rf"^/cdn/{_KIND}/(?P<repo>.+)/(?P<sha>[0-9a-f]{{40}})/(?P<file>[^/]+(?:/.*)?)$")


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return (query.get(name) or ["false"])[-1].lower() in ("1", "true")


class _Handler(BaseHTTPRequestHandler):
    server_hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output quiet
        return

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    do_POST = do_GET

    # -- routing --------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        url = urlparse(self.path)
        raw, query = url.path, parse_qs(url.query)
        hub = self.server_hub
        hub._count(self.command, unquote(raw), url.query, self.headers.get("Authorization"))
        # Match the quoted path, then unquote each part: a revision such as refs%2Fpr%2F3
        # (or an attacker's %2Fetc) is one segment, as on the real hub.
        if raw == "/api/agent-harnesses":  # fetched daily unless HF_HUB_DISABLE_TELEMETRY
            return self._json({"standardEnvVars": [], "harnesses": {}}, {})
        if self.command == "POST":
            if m := _PATHS.match(raw):
                return self._paths_info(m["kind"], unquote(m["repo"]), unquote(m["rev"]))
            return self._error(404, "RepoNotFound", "Not found.")
        if m := _TREE.match(raw):
            sub = unquote(m["sub"] or "").strip("/")
            return self._tree(m["kind"], unquote(m["repo"]), unquote(m["rev"]), sub, query)
        if m := _API.match(raw):
            return self._info(m["kind"], unquote(m["repo"]), unquote(m["rev"] or "main"))
        if m := _CDN.match(raw):
            repo = hub.lookup(m["kind"], unquote(m["repo"]))
            return self._file(repo, m["sha"], unquote(m["file"]), head, cdn=True)
        if m := _RESOLVE_DS.match(raw):
            return self._resolve("datasets", m, head)
        if m := _RESOLVE.match(raw):
            return self._resolve("models", m, head)
        return self._error(404, "RepoNotFound", "Not found.")

    def _resolve(self, kind: str, m: re.Match[str], head: bool) -> None:
        repo = self._repo(kind, unquote(m["repo"]))
        if repo is None or (sha := self._revision(repo, unquote(m["rev"]))) is None:
            return None
        if repo.gated and (denied := self._denied(repo)):
            what = "dataset" if kind == "datasets" else "model"
            return self._error(denied, "GatedRepo", f"Access to this {what} is restricted.")
        return self._file(repo, sha, unquote(m["file"]), head, cdn=False)

    def _repo(self, kind: str, repo_id: str) -> HubRepo | None:
        repo = self.server_hub.lookup(kind, repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found.")
        return repo

    def _revision(self, repo: HubRepo, rev: str) -> str | None:
        if rev in ({"main", repo.sha} | repo.revisions):
            return repo.sha
        self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return None

    def _denied(self, repo: HubRepo) -> int:
        """0 when the request may read a gated repository's files, else 401 or 403."""
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return 401
        return 0 if auth[len("Bearer ") :] in repo.tokens else 403

    # -- endpoints ------------------------------------------------------------------------
    def _info(self, kind: str, repo_id: str, rev: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None or (sha := self._revision(repo, rev)) is None:
            return
        files = repo.files()
        body = {
            "_id": sha[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": _COMMIT_DATE,
            "private": False,
            "disabled": False,
            "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": p} for p in files],
            "tags": [],
        }
        if kind == "models":
            body["modelId"] = repo.repo_id
        if repo.card_data is not None:
            body["cardData"] = repo.card_data
        if repo.raw_info is not None:
            headers = {"Content-Type": "application/json", "X-Repo-Commit": sha}
            self._send(200, repo.raw_info, headers, head=False)
        else:
            self._json(body, {"X-Repo-Commit": sha})
        repo.served("info")

    def _tree(self, kind: str, repo_id: str, rev: str, sub: str, query: dict) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None or (sha := self._revision(repo, rev)) is None:
            return
        entries = repo.listing(sub, _flag(query, "recursive"), _flag(query, "expand"))
        if entries is None:
            msg = f"{sub} does not exist on {rev!r}"
            return self._error(404, "EntryNotFound", msg, {"X-Repo-Commit": sha})
        self._json(entries, {"X-Repo-Commit": sha})
        repo.served("tree")

    def _paths_info(self, kind: str, repo_id: str, rev: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        repo = self._repo(kind, repo_id)
        if repo is None or (sha := self._revision(repo, rev)) is None:
            return
        expand = _flag(form, "expand")
        files = repo.files()
        folders = _folders(files)
        out = []
        for path in dict.fromkeys(p.strip("/") for p in form.get("paths", [])):
            if path in files:
                out.append(repo.entry(path, files[path], expand))
            elif path and path in folders:
                out.append(repo.folder_entry(path, expand))
        self._json(out, {"X-Repo-Commit": sha})
        repo.served("tree")

    def _file(self, repo: HubRepo | None, sha: str, name: str, head: bool, cdn: bool) -> None:
        files = repo.files() if repo is not None else {}
        if repo is None or name not in files:
            headers = {"X-Repo-Commit": sha}
            return self._error(404, "EntryNotFound", f"{name} does not exist", headers)
        data = files[name]
        entry = repo.entry(name, data)
        if entry.get("lfs") and not cdn:
            return self._redirect(repo, sha, name, entry)
        etag = entry["lfs"]["oid"] if entry.get("lfs") else entry["oid"]
        if name in repo.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        status = 200
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m[1])
            end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", headers, head)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers, head, rate=repo.throttle, name=name)
        if not head:
            repo.served("file", name)

    def _redirect(self, repo: HubRepo, sha: str, name: str, entry: dict) -> None:
        host, port = self.server.server_address[:2]
        kind = "datasets" if repo.repo_type == "dataset" else "models"
        location = f"http://{host}:{port}/cdn/{kind}/{repo.repo_id}/{sha}/{quote(name)}"
        headers = {
            "Location": location,
            "X-Repo-Commit": sha,
            "X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
            "X-Linked-Size": str(entry["size"]),
            "ETag": f'"{entry["oid"]}"',
        }
        self._send(302, b"", headers, head=True)

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
