"""GitLab + Git LFS client for reading a Codex project (collect) and, later, writing back.

Why a wrapper around python-gitlab: a long collect must survive rate limits, flaky proxies and
dropped connections, and a refusal (401/403/404) must say what to check without ever showing
the token. python-gitlab retries 429/5xx on a request, but not a connection that drops in the
middle of a streamed body, and it has no Git LFS client: both are added here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests

from .errors import PipelineError
from .fsutil import pid_alive

log = logging.getLogger(__name__)

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"
#: A pointer file is a few lines; anything bigger is real content.
LFS_POINTER_MAX_BYTES = 1024
LFS_BATCH_SIZE = 100
CHUNK = 1 << 16

T = TypeVar("T")


class SourceError(PipelineError):
    """GitLab refused or failed (after retries); the message names the project, never the token."""


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, dropped connection, short body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- LFS + git helpers


@dataclass(frozen=True)
class LfsPointer:
    oid: str  # sha256 hex of the content
    size: int


def parse_lfs_pointer(data: bytes) -> LfsPointer | None:
    """The (oid, size) of a Git LFS pointer file, or None when `data` is not a pointer."""
    if not data.startswith(LFS_POINTER_PREFIX) or len(data) > LFS_POINTER_MAX_BYTES:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    oid = re.search(r"^oid sha256:([0-9a-f]{64})$", text, re.MULTILINE)
    size = re.search(r"^size (\d+)$", text, re.MULTILINE)
    if not oid or not size:
        return None
    return LfsPointer(oid.group(1), int(size.group(1)))


def make_lfs_pointer(data: bytes) -> tuple[LfsPointer, bytes]:
    """The pointer (and its file text) that Git LFS would commit for `data`."""
    return _pointer_text(LfsPointer(hashlib.sha256(data).hexdigest(), len(data)))


def make_lfs_pointer_file(path: str | Path) -> tuple[LfsPointer, bytes]:
    """make_lfs_pointer of a file's content, read in chunks (flat memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return _pointer_text(LfsPointer(digest.hexdigest(), Path(path).stat().st_size))


def _pointer_text(pointer: LfsPointer) -> tuple[LfsPointer, bytes]:
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{pointer.oid}\nsize {pointer.size}\n"
    return pointer, text.encode("ascii")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content (what the tree API reports as `id`)."""
    digest = hashlib.sha1(f"blob {len(data)}\0".encode())
    digest.update(data)
    return digest.hexdigest()


def git_blob_sha1_file(path: str | Path) -> str:
    """git_blob_sha1 of a file, read in chunks."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def redact_url(url: str | None) -> str:
    """`url` with any credentials (`https://user:token@host`) masked, for logs and reports."""
    # user:secret@ keeps the user name; a lone name@ may itself be the token
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)(?:([^/@:]*):)?[^/@]*@", r"\1\2:***@", url or "")


def same_origin(url: str, other: str) -> bool:
    """Same scheme, host and port: where a credential for `other` may also be sent."""
    from urllib.parse import urlsplit

    def origin(text: str) -> tuple[str, str | None, int | None]:
        parts = urlsplit(text)
        return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)

    try:
        mine = origin(url)
        return mine == origin(other) and bool(mine[1])
    except ValueError:  # a malformed port
        return False


# --------------------------------------------------------------------------- retries


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def with_retries(
    func: Callable[[], T],
    what: str,
    max_retries: int,
    backoff_s: float,
    max_backoff_s: float = 60.0,
) -> T:
    """Call `func`, retrying TransientError and connection errors with exponential backoff."""
    attempt = 0
    while True:
        try:
            return func()
        except (
            TransientError,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            attempt += 1
            if attempt > max_retries:
                raise SourceError(
                    f"{what}: still failing after {max_retries} retries: {_describe(exc)}"
                ) from None
            wait = getattr(exc, "retry_after", None)
            if wait is None:
                wait = min(max_backoff_s, backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, _describe(exc), attempt, max_retries, wait)
            time.sleep(wait)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class TreeEntry:
    path: str
    blob_id: str  # git object id (sha1 of the blob)
    mode: str = "100644"


@dataclass(frozen=True)
class LfsAction:
    """Where to download one LFS object (from the batch API), or why it cannot be."""

    oid: str
    size: int
    href: str | None
    headers: dict[str, str]
    error: str | None = None


class GitLabSource:
    """Read-only access to one project at one commit (the ref is resolved once, at connect)."""

    def __init__(
        self,
        url: str,
        project: str,
        ref: str | None = None,
        token: str | None = None,
        *,
        token_env: str = "GITLAB_TOKEN",
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        workers: int = 8,
        lfs_username: str = "oauth2",
    ) -> None:
        self.url = url.rstrip("/")
        self.project_ref = str(project)
        self.ref = ref
        self._token = token
        self.token_env = token_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.workers = workers
        self.lfs_username = lfs_username
        self.gl: Any = None
        self.project: Any = None
        self.commit_id: str = ""
        self.default_branch: str | None = None
        self._local = threading.local()

    def __repr__(self) -> str:  # never shows the token
        return f"GitLabSource({self.url!r}, {self.project_ref!r}, ref={self.ref!r})"

    @property
    def where(self) -> str:
        return f"GitLab project '{self.project_ref}' at {redact_url(self.url)}"

    # ---------------------------------------------------------------- connection

    def connect(self) -> GitLabSource:
        """Open the project and pin the ref to a commit id, so the whole run sees one state."""
        import gitlab

        if not re.match(r"^https?://[^/]+", self.url):
            raise SourceError(
                f"source.url {redact_url(self.url)!r} is not an http(s) URL: write it in full, "
                "e.g. https://gitlab.com"
            )
        self.gl = gitlab.Gitlab(
            self.url,
            private_token=self._token,
            timeout=self.timeout_s,
            retry_transient_errors=True,
            keep_base_url=True,
        )
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, self.workers + 2))
        self.gl.session.mount("http://", adapter)
        self.gl.session.mount("https://", adapter)
        self.project = self._api(
            lambda: self.gl.projects.get(self.project_ref, max_retries=self.max_retries),
            "opening the project",
        )
        self.default_branch = getattr(self.project, "default_branch", None)
        ref = self.ref or self.default_branch
        if not ref:
            raise SourceError(f"{self.where}: the project has no default branch (empty?); set source.ref")
        commit = self._api(
            lambda: self.project.commits.get(ref, max_retries=self.max_retries), f"resolving ref '{ref}'"
        )
        self.commit_id = commit.id
        log.info("%s: ref %s = commit %s", self.where, ref, self.commit_id[:12])
        return self

    def _api(self, call: Callable[[], T], doing: str) -> T:
        """Run a python-gitlab call; map refusals to clear errors, retry what python-gitlab doesn't."""
        import gitlab

        def once() -> T:
            try:
                return call()
            except gitlab.exceptions.GitlabAuthenticationError:
                raise SourceError(
                    f"{self.where}: authentication failed (401) while {doing}. Check that the "
                    f"environment variable {self.token_env} holds a valid token with read_api and "
                    "read_repository scopes"
                ) from None
            except gitlab.exceptions.GitlabError as exc:
                code = getattr(exc, "response_code", None)
                if code == 403:
                    raise SourceError(
                        f"{self.where}: access denied (403) while {doing}. The token in {self.token_env} "
                        "needs at least Reporter access and read_api + read_repository scopes"
                    ) from None
                if code == 404:
                    raise SourceError(
                        f"{self.where}: not found (404) while {doing}. Check source.url, source.project "
                        f"(numeric id or 'group/name'), source.ref, and that the token in {self.token_env} "
                        "can see the project"
                    ) from None
                if code == 429 or (code is not None and code >= 500):  # python-gitlab already retried
                    raise SourceError(
                        f"{self.where}: HTTP {code} while {doing}, still after {self.max_retries} retries; "
                        "the server is overloaded or down: try again later"
                    ) from None
                raise SourceError(f"{self.where}: HTTP {code} while {doing}: {exc.error_message}") from None

        return with_retries(once, f"{self.where}: {doing}", self.max_retries, self.backoff_s)

    # ---------------------------------------------------------------- repository

    def list_tree(self, path: str = "") -> dict[str, TreeEntry]:
        """Every blob below `path` (recursive, all pages) at the pinned commit: path -> entry.

        A `path` that is not in the repository gives an empty mapping.
        """
        import gitlab

        def fetch() -> dict[str, TreeEntry]:
            try:
                return list_all()
            except gitlab.exceptions.GitlabError as exc:
                if path and getattr(exc, "response_code", None) == 404:
                    return {}
                raise

        def list_all() -> dict[str, TreeEntry]:
            entries: dict[str, TreeEntry] = {}
            items = self.project.repository_tree(
                path=path,
                ref=self.commit_id,
                recursive=True,
                iterator=True,
                per_page=100,
                max_retries=self.max_retries,
            )
            for item in items:
                if item.get("type") == "blob":
                    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", str(item.get("id"))):
                        # ids become cache file names: never let one be a path
                        raise SourceError(
                            f"{self.where}: {item.get('path')}: the tree lists {str(item.get('id'))[:80]!r}, "
                            "which is not a git object id; refused"
                        )
                    entries[item["path"]] = TreeEntry(
                        item["path"], item["id"], str(item.get("mode", "100644"))
                    )
            return entries

        return self._api(fetch, "listing the repository tree")

    def read_file(self, path: str) -> bytes:
        """A whole (small) file at the pinned commit."""

        def fetch() -> bytes:
            data = self.project.files.raw(path, ref=self.commit_id, max_retries=self.max_retries)
            return bytes(data)

        return self._api(fetch, f"reading {path}")

    def download_file(self, path: str, dest: str | Path, expected_blob_id: str | None = None) -> int:
        """Stream a repository file to `dest` (temp name, then rename); verify its git id.

        A connection dropped mid-body or a short body is retried from the start.
        """
        dest = Path(dest)

        def fetch() -> int:
            with _part_file(dest) as (handle, part):
                self.project.files.raw(
                    path,
                    ref=self.commit_id,
                    streamed=True,
                    action=handle.write,
                    chunk_size=CHUNK,
                    max_retries=self.max_retries,
                )
                handle.flush()
                handle.close()
                if expected_blob_id and git_blob_sha1_file(part) != expected_blob_id:
                    raise TransientError(f"{path}: content does not match blob {expected_blob_id[:12]}")
                size = part.stat().st_size
                os.replace(part, dest)
                return size

        return self._api(fetch, f"downloading {path}")

    # ---------------------------------------------------------------- Git LFS

    @property
    def lfs_base(self) -> str:
        repo_url = getattr(self.project, "http_url_to_repo", None)
        if not repo_url:
            repo_url = f"{self.url}/{self.project.path_with_namespace}.git"
        return repo_url.rstrip("/")

    def _session(self) -> requests.Session:
        """One requests session per thread (pooled connections, no shared state)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _basic_auth(self) -> tuple[str, str] | None:
        return (self.lfs_username, self._token) if self._token else None

    def _basic_auth_for(self, href: str | None) -> tuple[str, str] | None:
        """The token for an LFS action URL only when it is GitLab's own (never a foreign store)."""
        return self._basic_auth() if same_origin(href or "", self.lfs_base) else None

    def lfs_batch(self, pointers: Iterable[LfsPointer]) -> dict[str, LfsAction]:
        """Ask the LFS batch API where to download these objects (in chunks of 100)."""
        unique = sorted({p.oid: p for p in pointers}.values(), key=lambda p: p.oid)
        actions: dict[str, LfsAction] = {}
        for start in range(0, len(unique), LFS_BATCH_SIZE):
            chunk = unique[start : start + LFS_BATCH_SIZE]
            actions.update(self._lfs_batch_chunk(chunk))
        return actions

    def _lfs_batch_chunk(self, pointers: list[LfsPointer]) -> dict[str, LfsAction]:
        url = f"{self.lfs_base}/info/lfs/objects/batch"
        body = {
            "operation": "download",
            "transfers": ["basic"],
            "objects": [{"oid": p.oid, "size": p.size} for p in pointers],
            "hash_algo": "sha256",
        }
        headers = {"Accept": LFS_MEDIA_TYPE, "Content-Type": LFS_MEDIA_TYPE}

        def post() -> dict[str, Any]:
            response = self._session().post(
                url, json=body, headers=headers, timeout=self.timeout_s, auth=self._basic_auth()
            )
            self._check_status(response, "the LFS batch API")
            try:
                return response.json()
            except ValueError:
                raise SourceError(
                    f"{self.where}: the LFS batch API answered something that is not JSON"
                ) from None

        result = with_retries(post, f"{self.where}: LFS batch", self.max_retries, self.backoff_s)
        actions: dict[str, LfsAction] = {}
        sizes = {p.oid: p.size for p in pointers}
        for obj in result.get("objects", []):
            oid = obj.get("oid", "")
            if oid not in sizes:
                continue
            error = obj.get("error")
            download = (obj.get("actions") or {}).get("download")
            if error or not download:
                message = (error or {}).get("message") or "the server has no download for it"
                code = (error or {}).get("code")
                actions[oid] = LfsAction(oid, sizes[oid], None, {}, f"{code or ''} {message}".strip())
                continue
            actions[oid] = LfsAction(oid, sizes[oid], download["href"], dict(download.get("header") or {}))
        for oid, size in sizes.items():
            actions.setdefault(oid, LfsAction(oid, size, None, {}, "not in the LFS batch answer"))
        return actions

    def download_lfs(self, action: LfsAction, dest: str | Path) -> int:
        """Stream one LFS object to `dest` via a temp name; verify size and sha256 first."""
        if action.href is None:
            raise SourceError(f"{self.where}: LFS object {action.oid}: {action.error}")
        dest = Path(dest)

        def fetch() -> int:
            headers = dict(action.headers)
            session = self._session()
            auth = None if "Authorization" in headers else self._basic_auth_for(action.href)
            with session.get(
                action.href, headers=headers, stream=True, timeout=self.timeout_s, auth=auth
            ) as response:
                self._check_status(response, f"LFS object {action.oid[:12]}")
                digest = hashlib.sha256()
                size = 0
                with _part_file(dest) as (handle, part):
                    for block in response.iter_content(CHUNK):
                        handle.write(block)
                        digest.update(block)
                        size += len(block)
                    handle.close()
                    if size != action.size or digest.hexdigest() != action.oid:
                        raise TransientError(
                            f"LFS object {action.oid[:12]}: got {size} bytes / sha256 {digest.hexdigest()[:12]}, "
                            f"expected {action.size} bytes"
                        )
                    os.replace(part, dest)
            return size

        return with_retries(
            fetch, f"{self.where}: LFS object {action.oid[:12]}", self.max_retries, self.backoff_s
        )

    def _check_status(self, response: requests.Response, what: str) -> None:
        code = response.status_code
        if code < 300:
            return
        if code == 429 or code >= 500:
            raise TransientError(f"HTTP {code} from {what}", _retry_after(response.headers))
        if code == 401:
            raise SourceError(
                f"{self.where}: authentication failed (401) at {what}. Check the token in {self.token_env} "
                "(it needs the read_repository scope for Git LFS)"
            )
        if code == 403:
            raise SourceError(
                f"{self.where}: access denied (403) at {what}; check the token in {self.token_env}"
            )
        if code == 404:
            raise SourceError(f"{self.where}: not found (404) at {what}; is Git LFS enabled for the project?")
        raise SourceError(f"{self.where}: HTTP {code} at {what}")


@contextlib.contextmanager
def _part_file(dest: Path) -> Iterator[tuple[Any, Path]]:
    """A `<dest>.<pid>.<random>.part` temp file beside `dest`, removed unless renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".part", dir=dest.parent)
    part = Path(name)
    handle = os.fdopen(fd, "wb")
    try:
        yield handle, part
    finally:
        if not handle.closed:
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def remove_stale_parts(root: str | Path) -> int:
    """Delete `.part` files below `root` left by processes that no longer run (interrupted downloads)."""
    removed = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    for part in root.rglob(".*.part"):
        match = re.search(r"\.(\d+)\.[^.]+\.part$", part.name)
        pid = int(match.group(1)) if match else None
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed += 1
    return removed

