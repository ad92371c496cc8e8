"""A process pool for per-item work: results in input order, bounded memory, no orphaned workers.

Used by the preprocess stage. Workers ignore Ctrl-C (the main process stops the pool and keeps
the old output) and die with the main process however it ends, `kill -9` included.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import PipelineError


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_init(parent_pid: int) -> None:
    """Pool worker set-up: leave Ctrl-C to the main process, and die with it.

    Ctrl-C: the main process stops the pool and keeps the old output. A `kill -9` of the main
    process gives it no chance to stop its workers; without this they would run on for minutes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` ends, however it ends (SIGKILL included).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere
    a daemon thread polls the parent id once a second.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the prctl took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def make_pool(workers: int) -> Any:
    """A process pool whose broken worker (killed for memory, say) fails the run loudly
    (BrokenProcessPool) instead of hanging like multiprocessing.Pool would."""
    return ProcessPoolExecutor(max_workers=workers, initializer=worker_init, initargs=(os.getpid(),))


def ordered_imap(pool: Any, fn: Any, items: Iterator[Any], window: int) -> Iterator[Any]:
    """Like Pool.imap: results in input order, at most `window` tasks in flight, so the rows
    are read lazily and memory stays flat however long the metadata file is."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise PipelineError(
            "a preprocess worker process died (killed for memory?); the previous output is kept. "
            "Re-run with fewer workers (preprocess.workers / --workers): finished clips are cached"
        ) from None
    finally:
        for future in pending:
            future.cancel()
