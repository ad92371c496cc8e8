"""The GitLab client of collect and write-back: one project, pinned to one commit.

Why a wrapper around python-gitlab: a refusal (401/403/404) must say what to check without
ever showing the token, and a long collect must survive dropped connections, which
python-gitlab does not retry in the middle of a streamed body. Every request follows the
one retry rule of `lfs.with_retries`; Git LFS (which python-gitlab lacks) is `lfs.LfsClient`,
reached as `GitLabSource.lfs`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .config import CollectSection
from .errors import PipelineError
from .lfs import (
    CHUNK,
    LfsClient,
    SourceError,
    TransientError,
    git_blob_sha1_file,
    part_file,
    redact_url,
    with_retries,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

log = logging.getLogger(__name__)

#: Timeouts, retries and parallelism default to the `collect` settings' own defaults (one place).
DEFAULTS = CollectSection()

T = TypeVar("T")


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class TreeEntry:
    path: str
    blob_id: str  # git object id (sha1 of the blob)
    mode: str = "100644"


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
        timeout_s: float = DEFAULTS.timeout_s,
        max_retries: int = DEFAULTS.max_retries,
        backoff_s: float = DEFAULTS.retry_backoff_s,
        workers: int = DEFAULTS.download_workers,
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
        self._lfs: LfsClient | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"GitLabSource({self.url!r}, {self.project_ref!r}, ref={self.ref!r})"

    @property
    def where(self) -> str:
        return f"GitLab project '{self.project_ref}' at {redact_url(self.url)}"

    # ---------------------------------------------------------------- connection

    def connect(self) -> GitLabSource:
        """Open the project and pin the ref to a commit id, so the whole run sees one state."""
        import gitlab
        from requests.adapters import HTTPAdapter

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
        adapter = HTTPAdapter(pool_maxsize=max(10, self.workers + 2))
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
            with part_file(dest) as (handle, part):
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
        """The repository URL the Git LFS API hangs off (`<project>.git`)."""
        repo_url = getattr(self.project, "http_url_to_repo", None)
        if not repo_url:
            repo_url = f"{self.url}/{self.project.path_with_namespace}.git"
        return repo_url.rstrip("/")

    @property
    def lfs(self) -> LfsClient:
        """The project's Git LFS client (same token, timeout and retry rule); after `connect`."""
        if self._lfs is None:
            self._lfs = LfsClient(
                self.lfs_base,
                self._token,
                where=self.where,
                token_env=self.token_env,
                username=self.lfs_username,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
            )
        return self._lfs


def connect_gitlab(cfg: Config, *, write: bool = False, ref: str | None = None) -> GitLabSource:
    """Connect to the configured GitLab project (`source.ref`, or `ref`, pinned to one commit).

    Reading works without a token on a public project (with a warning); writing needs one.
    """
    src, col = cfg.source, cfg.collect
    token = src.token()
    if not token and write:
        raise PipelineError(
            f"{cfg.config_path}: a GitLab source needs a token in the environment variable "
            f"{src.token_env} (write-back: api + write_repository scopes)"
        )
    if not token:
        log.warning("environment variable %s is not set: trying GitLab without a token", src.token_env)
    return GitLabSource(
        src.url or "",
        str(src.project or ""),
        ref or src.ref,
        token,
        token_env=src.token_env,
        timeout_s=col.timeout_s,
        max_retries=col.max_retries,
        backoff_s=col.retry_backoff_s,
        workers=col.download_workers,
    ).connect()
