"""Git LFS over HTTP, and the one retry rule every GitLab request follows.

Why our own client: python-gitlab has no Git LFS support, and a long collect or write-back
must survive rate limits, flaky proxies and connections that drop in the middle of a body.
Collect downloads and write-back uploads go through the same `LfsClient` (batch API, basic
transfer) and the same `with_retries`; `gitlab_source.GitLabSource` uses both for the REST API.
A refusal says what to check and never shows the token; the token goes only to GitLab's own
origin, never to a storage host an action URL points at.
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
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .config import CollectSection
from .errors import PipelineError
from .fsutil import pid_alive

if TYPE_CHECKING:  # pragma: no cover
    import requests

log = logging.getLogger(__name__)

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"
#: A pointer file is a few lines; anything bigger is real content.
LFS_POINTER_MAX_BYTES = 1024
LFS_BATCH_SIZE = 100
CHUNK = 1 << 16
#: Timeout and retries default to the `collect` settings' own defaults (one place).
DEFAULTS = CollectSection()
_JSON_HEADERS = {"Accept": LFS_MEDIA_TYPE, "Content-Type": LFS_MEDIA_TYPE}

T = TypeVar("T")


class SourceError(PipelineError):
    """GitLab refused or failed (after retries); the message names the project, never the token."""


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, dropped connection, short body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- the retry rule


def retry_after(headers: Any) -> float | None:
    """Seconds from a `Retry-After` header (None when absent or not a number)."""
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
    """Call `func`, retrying TransientError and connection errors with exponential backoff.

    The wait is the server's `Retry-After` when it gives one, else `backoff_s * 2**n` (capped,
    with jitter so parallel downloads do not retry in step).
    """
    import requests  # lazy: importing the package must not load an HTTP library

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


# --------------------------------------------------------------------------- URLs


def redact_url(url: str | None) -> str:
    """`url` with any credentials (`https://user:token@host`) masked, for logs and reports."""
    # user:secret@ keeps the user name; a lone name@ may itself be the token
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)(?:([^/@:]*):)?[^/@]*@", r"\1\2:***@", url or "")


def same_origin(url: str, other: str) -> bool:
    """Same scheme, host and port: where a credential for `other` may also be sent."""

    def origin(text: str) -> tuple[str, str | None, int | None]:
        parts = urlsplit(text)
        return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)

    try:
        mine = origin(url)
        return mine == origin(other) and bool(mine[1])
    except ValueError:  # a malformed port
        return False


# --------------------------------------------------------------------------- pointers and ids


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


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class LfsAction:
    """Where to send or fetch one LFS object (from the batch API), or why it cannot be."""

    oid: str
    size: int
    href: str | None
    headers: dict[str, str]
    error: str | None = None
    verify: dict[str, Any] | None = None  # upload only: the server's verify action, if any


class LfsClient:
    """The Git LFS batch API of one repository: download and upload, one retry rule."""

    def __init__(
        self,
        repo_url: str,
        token: str | None,
        *,
        where: str | None = None,
        token_env: str = "GITLAB_TOKEN",
        username: str = "oauth2",
        timeout_s: float = DEFAULTS.timeout_s,
        max_retries: int = DEFAULTS.max_retries,
        backoff_s: float = DEFAULTS.retry_backoff_s,
    ) -> None:
        base = repo_url.rstrip("/")
        self.base = base if base.endswith(".git") else base + ".git"
        self._token = token
        self.where = where or redact_url(self.base)
        self.token_env = token_env
        self.username = username
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._local = threading.local()

    def __repr__(self) -> str:  # never shows the token
        return f"LfsClient({redact_url(self.base)!r})"

    # ---------------------------------------------------------------- HTTP

    def _session(self) -> requests.Session:
        """One requests session per thread (pooled connections, no shared state)."""
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            self._local.session = session
        return session

    def _auth_for(self, href: str, headers: dict[str, str]) -> tuple[str, str] | None:
        """The token only for GitLab's own origin, and only when the action brings no auth of its own.

        Per request, never session-wide: a session auth would override an action's headers.
        """
        if not self._token or "Authorization" in headers or not same_origin(href, self.base):
            return None
        return (self.username, self._token)

    def _request(
        self, method: str, url: str, what: str, operation: str, ok: tuple[int, ...] = (200,), **kw: Any
    ) -> requests.Response:
        """One request under the retry rule; a body given as a Path is re-opened for each attempt."""

        def once() -> requests.Response:
            body = kw.get("data")
            if isinstance(body, Path):
                with open(body, "rb") as handle:
                    response = self._session().request(
                        method, url, timeout=self.timeout_s, **{**kw, "data": handle}
                    )
            else:
                response = self._session().request(method, url, timeout=self.timeout_s, **kw)
            self.check_status(response, what, operation, ok)
            return response

        return with_retries(once, f"{self.where}: {what}", self.max_retries, self.backoff_s)

    def check_status(
        self, response: requests.Response, what: str, operation: str, ok: tuple[int, ...] = (200,)
    ) -> None:
        """Raise TransientError for 429/5xx, a clear SourceError for a refusal; pass `ok` codes."""
        code = response.status_code
        if code in ok or (ok == (200,) and code < 300):
            return
        if code == 429 or code >= 500:
            raise TransientError(f"HTTP {code} from {what}", retry_after(response.headers))
        scope = "write_repository" if operation == "upload" else "read_repository"
        hint = {
            401: f"; check the token in {self.token_env} (Git LFS {operation} needs the {scope} scope)",
            403: f"; check the token in {self.token_env} (Git LFS {operation} needs the {scope} scope)",
            404: "; is Git LFS enabled for the project?",
        }.get(code, "")
        raise SourceError(f"{self.where}: {what} failed (HTTP {code}){hint}")

    # ---------------------------------------------------------------- batch API

    def batch(self, operation: str, pointers: Iterable[LfsPointer]) -> dict[str, LfsAction]:
        """Ask the batch API what to do for these objects (chunks of 100): oid -> action.

        For an upload, an object without an action (href None, no error) is one the server has.
        """
        unique = sorted({p.oid: p for p in pointers}.values(), key=lambda p: p.oid)
        actions: dict[str, LfsAction] = {}
        for start in range(0, len(unique), LFS_BATCH_SIZE):
            actions.update(self._batch_chunk(operation, unique[start : start + LFS_BATCH_SIZE]))
        return actions

    def _batch_chunk(self, operation: str, pointers: list[LfsPointer]) -> dict[str, LfsAction]:
        body = {
            "operation": operation,
            "transfers": ["basic"],
            "objects": [{"oid": p.oid, "size": p.size} for p in pointers],
            "hash_algo": "sha256",
        }
        url = f"{self.base}/info/lfs/objects/batch"
        headers = dict(_JSON_HEADERS)
        what = "LFS batch upload" if operation == "upload" else "the LFS batch API"
        response = self._request(
            "POST", url, what, operation, json=body, headers=headers, auth=self._auth_for(url, {})
        )
        try:
            answer = response.json()
        except ValueError:
            raise SourceError(f"{self.where}: {what} answered something that is not JSON") from None
        sizes = {p.oid: p.size for p in pointers}
        actions = {
            obj["oid"]: _action(obj, sizes[obj["oid"]], operation)
            for obj in answer.get("objects", [])
            if isinstance(obj, dict) and obj.get("oid") in sizes
        }
        if operation == "download":
            for oid, size in sizes.items():
                actions.setdefault(oid, LfsAction(oid, size, None, {}, "not in the LFS batch answer"))
        return actions

    # ---------------------------------------------------------------- transfers

    def download(self, action: LfsAction, dest: str | Path) -> int:
        """Stream one LFS object to `dest` via a temp name; verify size and sha256 first."""
        if action.href is None:
            raise SourceError(f"{self.where}: LFS object {action.oid}: {action.error}")
        href, dest = action.href, Path(dest)
        what = f"LFS object {action.oid[:12]}"

        def fetch() -> int:
            headers = dict(action.headers)
            with self._session().get(
                href, headers=headers, stream=True, timeout=self.timeout_s, auth=self._auth_for(href, headers)
            ) as response:
                self.check_status(response, what, "download")
                return _stream_verified(response, action, dest)

        return with_retries(fetch, f"{self.where}: {what}", self.max_retries, self.backoff_s)

    def upload(self, objects: list[bytes] | list[Path]) -> int:
        """Send the objects the server lacks (PUT, then verify when asked); how many were sent.

        Objects given as paths are hashed and sent in chunks, so memory does not grow with them.
        """
        by_oid: dict[str, bytes | Path] = {}
        pointers: list[LfsPointer] = []
        for item in objects:
            pointer = make_lfs_pointer_file(item)[0] if isinstance(item, Path) else make_lfs_pointer(item)[0]
            by_oid[pointer.oid] = item
            pointers.append(pointer)
        if not by_oid:
            return 0
        sent = 0
        for oid, action in sorted(self.batch("upload", pointers).items()):
            if action.error:
                raise SourceError(f"{self.where}: LFS object {oid}: {action.error}")
            if action.href is None:
                continue  # the server has it already
            self._put(action, by_oid[oid])
            sent += 1
        return sent

    def _put(self, action: LfsAction, data: bytes | Path) -> None:
        """PUT one object where the batch API said, then POST its verify action when there is one."""
        assert action.href is not None
        short = action.oid[:12]
        headers = dict(action.headers)
        auth = self._auth_for(action.href, headers)
        self._request("PUT", action.href, f"LFS upload of {short}", "upload", (200, 201),
                      data=data, headers=headers, auth=auth)  # fmt: skip
        if not action.verify:
            return
        href = action.verify["href"]
        headers = {**_JSON_HEADERS, **(action.verify.get("header") or {})}
        body = {"oid": action.oid, "size": action.size}
        self._request("POST", href, f"LFS verify of {short}", "upload",
                      json=body, headers=headers, auth=self._auth_for(href, headers))  # fmt: skip


def _action(obj: dict[str, Any], size: int, operation: str) -> LfsAction:
    """One object of a batch answer as an LfsAction (error, no action, or where to go)."""
    oid = obj["oid"]
    error = obj.get("error")
    actions = obj.get("actions") or {}
    step = actions.get(operation)
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        return LfsAction(oid, size, None, {}, f"{code or ''} {message or 'refused'}".strip())
    if not step:
        missing = "the server has no download for it" if operation == "download" else None
        return LfsAction(oid, size, None, {}, missing)
    return LfsAction(oid, size, step["href"], dict(step.get("header") or {}), verify=actions.get("verify"))


def _stream_verified(response: requests.Response, action: LfsAction, dest: Path) -> int:
    """Write a response body to `dest` (temp name first); TransientError when size or hash differ."""
    digest = hashlib.sha256()
    size = 0
    with part_file(dest) as (handle, part):
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


def lfs_upload(
    repo_url: str,
    token: str,
    objects: list[bytes] | list[Path],
    timeout: float = DEFAULTS.timeout_s,
    max_retries: int = DEFAULTS.max_retries,
    backoff_s: float = DEFAULTS.retry_backoff_s,
) -> int:
    """Upload blobs to `repo_url`'s Git LFS store; how many the server did not have yet."""
    client = LfsClient(repo_url, token, timeout_s=timeout, max_retries=max_retries, backoff_s=backoff_s)
    return client.upload(objects)


# --------------------------------------------------------------------------- partial files


@contextlib.contextmanager
def part_file(dest: Path) -> Iterator[tuple[Any, Path]]:
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
        if pid == os.getpid() or (pid is not None and pid_alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed += 1
    return removed
