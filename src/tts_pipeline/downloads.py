"""A verified, content-addressed download cache, and parallel downloads that survive failures.

Why: DVC deletes a stage's outputs before it re-runs it, and a crash must not lose finished
downloads. Every download lands here under a temporary name, is verified, and is renamed into
place (git blobs by their git id, LFS objects by sha256); a re-run verifies and reuses what is
there. Used by collect's GitLab source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .errors import PipelineError
from .fsutil import sha256_file
from .lfs import LfsPointer, git_blob_sha1_file, remove_stale_parts

log = logging.getLogger(__name__)


class DownloadCache:
    """Content-addressed, verified download cache: git blobs by git id, LFS objects by sha256."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def blob_path(self, blob_id: str) -> Path:
        return self.root / "blobs" / blob_id[:2] / blob_id

    def lfs_path(self, oid: str) -> Path:
        return self.root / "lfs" / oid[:2] / oid

    def has_blob(self, blob_id: str) -> bool:
        path = self.blob_path(blob_id)
        if not path.is_file():
            return False
        if git_blob_sha1_file(path) == blob_id:
            return True
        log.warning("%s: cached file is corrupt; downloading it again", path)
        path.unlink()
        return False

    def has_lfs(self, pointer: LfsPointer) -> bool:
        path = self.lfs_path(pointer.oid)
        if not path.is_file():
            return False
        if path.stat().st_size == pointer.size and sha256_file(path) == pointer.oid:
            return True
        log.warning("%s: cached file is corrupt; downloading it again", path)
        path.unlink()
        return False

    def clean(self) -> None:
        removed = remove_stale_parts(self.root)
        if removed:
            log.info("removed %d partial download(s) of an interrupted run", removed)


def run_parallel(jobs: list[tuple[str, Callable[[], None]]], workers: int, desc: str) -> None:
    """Run download jobs on `workers` threads with a progress bar.

    A job that still fails after its retries does not stop the others: everything that can be
    downloaded lands in the cache, then the run stops with the failures, and a re-run fetches
    only those. Ctrl-C stops at once; finished downloads stay in the cache.
    """
    if not jobs:
        return
    from tqdm import tqdm

    failures: list[tuple[str, BaseException]] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="collect")
    try:
        futures = {pool.submit(job): name for name, job in jobs}
        with tqdm(total=len(futures), desc=desc, unit="file", disable=None) as bar:
            for future in as_completed(futures):
                bar.update(1)
                exc = future.exception()
                if exc is not None:
                    failures.append((futures[future], exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        failures.sort(key=lambda f: f[0])
        first = failures[0][1]
        if len(failures) == len(jobs) or not isinstance(first, PipelineError):
            raise first
        raise PipelineError(
            f"{len(failures)} of {len(jobs)} downloads failed (the others are kept in the cache; "
            f"re-run to fetch the rest). First: {first}"
        ) from first
