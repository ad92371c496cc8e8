"""A loopback GitLab REST + Git LFS server for tests (no internet, real HTTP, real clients).

It speaks the endpoints python-gitlab and a Git LFS client use to read a project:

    GET  /api/v4/projects/:id                              (numeric id or url-encoded path)
    GET  /api/v4/projects/:id/repository/commits/:ref      (branch or sha -> commit)
    GET  /api/v4/projects/:id/repository/tree              (recursive, paged, Link headers)
    GET  /api/v4/projects/:id/repository/files/:path/raw   (?ref=)
    POST /<namespace>/<name>.git/info/lfs/objects/batch    (Basic auth with the token)
    GET  /<namespace>/<name>.git/gitlab-lfs/objects/:oid   (header from the batch answer)

Extending it (e.g. write-back: branches, commits, merge requests, LFS upload): register more
handlers with `server.route(method, regex)` (a decorator) or `server.add_route(...)`, or
subclass `FakeGitLab` and add routes in `__init__`. A handler gets a `FakeRequest` (method,
path, query, headers, body, regex groups, the server) and returns a `FakeResponse`.
Projects are stored as commits (`FakeProject.commit(files, branch=...)`), so write-back
handlers can create new commits and branches.

Failure injection: `server.fail(method, path_regex, status=500, times=2)` answers the next
matching requests with that status (429 carries `Retry-After: 0`); `status="drop"` sends the
headers and half the body, then closes the connection. `server.latency_s` delays every answer
(for benchmarks), `server.delay(method, regex, seconds)` only some, `server.log` records every request (for "downloaded nothing" assertions).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"


# --------------------------------------------------------------------------- request/response


@dataclass
class FakeRequest:
    method: str
    path: str  # raw (still percent-encoded) path, without the query
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    groups: dict[str, str]  # named regex groups of the matched route, url-decoded
    server: FakeGitLab

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8") or "null")


@dataclass
class FakeResponse:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop_after: int | None = None  # send only this many body bytes, then close the connection

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> FakeResponse:
        return cls(status, json.dumps(value).encode("utf-8"), dict(headers or {}))

    @classmethod
    def error(cls, status: int, message: str) -> FakeResponse:
        return cls.json({"message": message}, status)

    @classmethod
    def raw(cls, data: bytes, content_type: str = "application/octet-stream") -> FakeResponse:
        return cls(200, data, {}, content_type)


Handler = Callable[[FakeRequest], FakeResponse]


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | str  # an HTTP status, or "drop"
    times: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hold:
    """Requests matching `method` + `pattern` after the first `after` wait until `release` is set;
    `held` is set when the first of them arrives (the client is caught mid-run: an event to wait on)."""

    method: str
    pattern: re.Pattern[str]
    after: int
    seen: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int


# --------------------------------------------------------------------------- repository model


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> tuple[str, bytes]:
    oid = hashlib.sha256(data).hexdigest()
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
    return oid, text.encode("ascii")


@dataclass
class FakeProject:
    id: int
    path_with_namespace: str
    default_branch: str = "main"
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha
    lfs_enabled: bool = True

    def commit(self, files: Mapping[str, bytes], branch: str | None = None, message: str = "") -> str:
        """Store a full snapshot of the tree as a new commit on `branch`; returns its sha."""
        branch = branch or self.default_branch
        parent = self.branches.get(branch, "")
        digest = hashlib.sha1(f"{parent}\n{message}\n".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        sha = digest.hexdigest()
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        return sha

    def resolve(self, ref: str | None) -> str | None:
        ref = ref or self.default_branch
        if ref in self.branches:
            return self.branches[ref]
        if ref in self.commits:
            return ref
        matches = [sha for sha in self.commits if len(ref) >= 7 and sha.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def files(self, ref: str | None = None) -> dict[str, bytes]:
        sha = self.resolve(ref)
        return self.commits[sha] if sha else {}

    def as_json(self, base_url: str) -> dict[str, Any]:
        name = self.path_with_namespace.rsplit("/", 1)[-1]
        return {
            "id": self.id,
            "name": name,
            "path": name,
            "path_with_namespace": self.path_with_namespace,
            "default_branch": self.default_branch,
            "http_url_to_repo": f"{base_url}/{self.path_with_namespace}.git",
            "web_url": f"{base_url}/{self.path_with_namespace}",
            "lfs_enabled": self.lfs_enabled,
        }


def tree_from_directory(
    root: str | Path,
    lfs: Callable[[str], bool] | None = None,
    lfs_objects: dict[str, bytes] | None = None,
    rename: Callable[[str], str] | None = None,
) -> dict[str, bytes]:
    """Files under `root` as {posix path: bytes}; paths where `lfs(path)` become LFS pointers.

    The LFS content goes into `lfs_objects` (oid -> bytes). `rename` maps a path to its
    path in git (e.g. `.project/attachments/files/` -> `.project/attachments/pointers/`).
    """
    root = Path(root)
    tree: dict[str, bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        target = rename(rel) if rename else rel
        if lfs is not None and lfs(rel):
            oid, pointer = lfs_pointer(data)
            if lfs_objects is not None:
                lfs_objects[oid] = data
            data = pointer
        tree[target] = data
    return tree


# --------------------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms a request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        self.server.fake.handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeGitLab


class FakeGitLab:
    """The loopback server; use as a context manager (`with FakeGitLab() as gl: gl.url`)."""

    API = "/api/v4"

    def __init__(self, token: str | None = "glpat-test-token", host: str = "127.0.0.1") -> None:
        self.token = token
        self.host = host
        self.projects: dict[int, FakeProject] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_download_token = "lfs-" + hashlib.sha1(str(time.time()).encode()).hexdigest()[:16]
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults: list[Fault] = []
        self.log: list[RequestRecord] = []
        self.latency_s = 0.0
        self.delays: list[tuple[str, re.Pattern[str], float]] = []
        self.holds: list[Hold] = []
        self.max_per_page = 100
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._add_default_routes()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeGitLab:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-gitlab", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        for hold in self.holds:  # no handler thread stays blocked
            hold.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeGitLab:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    # ---------------------------------------------------------------- set-up helpers

    def add_project(
        self, path_with_namespace: str, files: Mapping[str, bytes], project_id: int | None = None, **kw: Any
    ) -> FakeProject:
        project_id = project_id or (max(self.projects, default=0) + 1)
        project = FakeProject(project_id, path_with_namespace, **kw)
        project.commit(files, message="initial")
        self.projects[project_id] = project
        return project

    def add_lfs_object(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        self.lfs_objects[oid] = data
        return oid

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: register `handler` for `method` and a regex on the raw path (first match wins;
        routes added later are tried first, so they can override the defaults)."""

        def register(handler: Handler) -> Handler:
            self.add_route(method, pattern, handler)
            return handler

        return register

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.insert(0, (method.upper(), re.compile(pattern), handler))

    def fail(
        self, method: str, pattern: str, status: int | str = 500, times: int = 1, **headers: str
    ) -> None:
        """Answer the next `times` requests matching `method` + path regex with `status` (or "drop")."""
        if status == 429:
            headers.setdefault("Retry-After", "0")
        with self._lock:
            self.faults.append(Fault(method.upper(), re.compile(pattern), status, times, headers))

    def delay(self, method: str, pattern: str, seconds: float) -> None:
        """Answer requests matching `method` + path regex `seconds` late (a slow link, for kill tests)."""
        self.delays.append((method.upper(), re.compile(pattern), seconds))

    def hold(self, method: str, pattern: str, after: int) -> Hold:
        """Hold matching requests after the first `after` until `Hold.release` is set (for kill tests)."""
        hold = Hold(method.upper(), re.compile(pattern), after)
        with self._lock:
            self.holds.append(hold)
        return hold

    def count(self, method: str, pattern: str, status: int | None = 200) -> int:
        """How many logged requests matched (default: successful ones)."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(
                1
                for r in self.log
                if r.method == method.upper()
                and regex.search(r.path)
                and (status is None or r.status == status)
            )

    def project(self, key: str) -> FakeProject | None:
        key = unquote(key)
        if key.isdigit():
            return self.projects.get(int(key))
        return next((p for p in self.projects.values() if p.path_with_namespace == key), None)

    # ---------------------------------------------------------------- dispatch

    def handle(self, http: _Handler) -> None:
        split = urlsplit(http.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        method = http.command.upper()
        if self.latency_s:
            time.sleep(self.latency_s)
        for delay_method, pattern, seconds in list(self.delays):
            if delay_method == method and pattern.search(path):
                time.sleep(seconds)
        for hold in list(self.holds):
            if hold.method == method and hold.pattern.search(path):
                with self._lock:
                    hold.seen += 1
                    wait = hold.seen > hold.after
                if wait:
                    hold.held.set()
                    hold.release.wait(timeout=300)
        fault = self._take_fault(method, path)
        if fault is not None and fault.status != "drop":
            response = FakeResponse.json(
                {"message": f"injected {fault.status}"}, int(fault.status), fault.headers
            )
        else:
            response = self._route(method, path, query, http.headers, body)
            if fault is not None and response.status == 200:
                response.drop_after = max(1, len(response.body) // 2)
        with self._lock:
            self.log.append(RequestRecord(method, path, response.status))
        self._send(http, method, response)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                    fault.times -= 1
                    return fault
        return None

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
    ) -> FakeResponse:
        for route_method, pattern, handler in self.routes:
            if route_method != method:
                continue
            match = pattern.match(path)
            if not match:
                continue
            groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            request = FakeRequest(method, path, query, headers, body, groups, self)
            try:
                response = handler(request)
            except Exception as exc:  # a bug in a handler: answer 500 so the test shows it
                response = FakeResponse.error(500, f"handler error: {exc!r}")
            return response
        return FakeResponse.error(404, f"404 no route for {method} {path}")

    def _send(self, http: _Handler, method: str, response: FakeResponse) -> None:
        http.send_response(response.status)
        headers = {"Content-Type": response.content_type, **response.headers}
        headers["Content-Length"] = str(len(response.body))
        for key, value in headers.items():
            http.send_header(key, value)
        if response.drop_after is not None:
            http.send_header("Connection", "close")
        http.end_headers()
        if method == "HEAD":
            return
        if response.drop_after is not None:
            http.wfile.write(response.body[: response.drop_after])
            http.wfile.flush()
            http.close_connection = True
            with contextlib.suppress(OSError):
                http.connection.shutdown(socket.SHUT_RDWR)
            return
        http.wfile.write(response.body)

    # ---------------------------------------------------------------- auth

    def _api_auth(self, request: FakeRequest) -> FakeResponse | None:
        if self.token is None:
            return None
        given = request.headers.get("PRIVATE-TOKEN") or ""
        bearer = request.headers.get("Authorization") or ""
        if given == self.token or bearer == f"Bearer {self.token}":
            return None
        return FakeResponse.error(401, "401 Unauthorized")

    def _basic_auth_ok(self, request: FakeRequest) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return password == self.token

    # ---------------------------------------------------------------- default routes

    def _add_default_routes(self) -> None:
        api = re.escape(self.API)
        project = r"(?P<project>[^/]+)"
        self.add_route("GET", rf"^{api}/projects/{project}$", self._get_project)
        self.add_route(
            "GET", rf"^{api}/projects/{project}/repository/commits/(?P<ref>[^/]+)$", self._get_commit
        )
        self.add_route("GET", rf"^{api}/projects/{project}/repository/tree$", self._get_tree)
        self.add_route(
            "GET", rf"^{api}/projects/{project}/repository/files/(?P<file>[^/]+)/raw$", self._get_raw
        )
        self.add_route("POST", r"^/(?P<repo>.+)\.git/info/lfs/objects/batch$", self._lfs_batch)
        self.add_route(
            "GET", r"^/(?P<repo>.+)\.git/gitlab-lfs/objects/(?P<oid>[0-9a-f]{64})$", self._lfs_object
        )

    def _project_or_404(self, request: FakeRequest) -> FakeProject | FakeResponse:
        denied = self._api_auth(request)
        if denied is not None:
            return denied
        project = self.project(request.groups["project"])
        if project is None:
            return FakeResponse.error(404, "404 Project Not Found")
        return project

    def _get_project(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        return FakeResponse.json(project.as_json(self.url))

    def _get_commit(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        sha = project.resolve(request.groups["ref"])
        if sha is None:
            return FakeResponse.error(404, "404 Commit Not Found")
        return FakeResponse.json({"id": sha, "short_id": sha[:8], "title": "commit"})

    def _get_tree(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        sha = project.resolve(request.query.get("ref"))
        if sha is None:
            return FakeResponse.error(404, "404 Tree Not Found")
        files = project.commits[sha]
        base = request.query.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() in ("true", "1")
        entries: dict[str, dict[str, Any]] = {}
        for path, data in files.items():
            if base and not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1 :] if base else path
            parts = rest.split("/")
            prefix = base
            for depth, part in enumerate(parts):
                full = f"{prefix}/{part}" if prefix else part
                is_blob = depth == len(parts) - 1
                if not recursive and depth > 0:
                    break
                if full not in entries:
                    entries[full] = {
                        "id": git_blob_sha1(data) if is_blob else hashlib.sha1(full.encode()).hexdigest(),
                        "name": part,
                        "type": "blob" if is_blob else "tree",
                        "path": full,
                        "mode": "100644" if is_blob else "040000",
                    }
                prefix = full
        ordered = [entries[k] for k in sorted(entries)]
        if base and not ordered:  # like GitLab: a path that is not in the tree is a 404
            return FakeResponse.error(404, "404 Tree Not Found")
        per_page = min(int(request.query.get("per_page", 20) or 20), self.max_per_page)
        page = max(1, int(request.query.get("page", 1) or 1))
        chunk = ordered[(page - 1) * per_page : page * per_page]
        total_pages = max(1, -(-len(ordered) // per_page))
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(ordered))}
        headers["X-Total-Pages"] = str(total_pages)
        if page < total_pages:
            query = dict(request.query, page=str(page + 1), per_page=str(per_page))
            headers["X-Next-Page"] = str(page + 1)
            headers["Link"] = f'<{self.url}{request.path}?{urlencode(query)}>; rel="next"'
        return FakeResponse.json(chunk, headers=headers)

    def _get_raw(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        files = project.files(request.query.get("ref"))
        data = files.get(request.groups["file"])
        if data is None:
            return FakeResponse.error(404, "404 File Not Found")
        return FakeResponse.raw(data, "text/plain; charset=utf-8")

    def _lfs_project(self, request: FakeRequest) -> FakeProject | FakeResponse:
        project = self.project(request.groups["repo"])
        if project is None:
            return FakeResponse(404, b'{"message":"Not Found"}', content_type=LFS_MEDIA_TYPE)
        return project

    def _lfs_batch(self, request: FakeRequest) -> FakeResponse:
        if not self._basic_auth_ok(request):
            return FakeResponse(401, b'{"message":"Access denied"}', content_type=LFS_MEDIA_TYPE)
        project = self._lfs_project(request)
        if isinstance(project, FakeResponse):
            return project
        payload = request.json()
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if oid in self.lfs_objects and len(self.lfs_objects[oid]) == size:
                href = f"{self.url}/{quote(project.path_with_namespace)}.git/gitlab-lfs/objects/{oid}"
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "download": {
                                "href": href,
                                "header": {"Authorization": f"RemoteAuth {self.lfs_download_token}"},
                                "expires_in": 3600,
                            }
                        },
                    }
                )
            else:
                objects.append(
                    {"oid": oid, "size": size, "error": {"code": 404, "message": "Object does not exist"}}
                )
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        return FakeResponse(200, body, content_type=LFS_MEDIA_TYPE)

    def _lfs_object(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("Authorization") != f"RemoteAuth {self.lfs_download_token}":
            return FakeResponse.error(401, "401 Unauthorized")
        data = self.lfs_objects.get(request.groups["oid"])
        if data is None:
            return FakeResponse.error(404, "404 Not Found")
        return FakeResponse.raw(data)
