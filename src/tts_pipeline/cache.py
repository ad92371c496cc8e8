"""One content-addressed cache for the per-item work of preprocess, speaker embeddings and synthesis.

Why one helper: the rule that makes a cache safe to kill at any moment is easy to get subtly
wrong, so it is written once. An entry is a data file (optional) and a JSON marker beside it,
both named by the key (a hash of the inputs, the settings and the code version, made by the
caller, e.g. with `fsutil.sha256_json`)::

    <root>/<key[:2]>/<key><suffix>   the data (WAV, .npy, WebM ...), written first
    <root>/<key[:2]>/<key>.json      the marker: the caller's facts + the data's size, written last

Each file is written under a temporary name and renamed, so a reader never sees a partial
file; the marker comes after the data, so a crash between the two leaves no marker and the
entry is a miss. A marker that does not parse, or whose data is missing or of another size,
is a miss too: the caller recomputes and the next `put` replaces the entry whole.
Deleting the cache folder is always safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_text

#: The marker's key holding the data file's size in bytes (None: the entry has no data file).
SIZE_KEY = "size"


@dataclass(frozen=True)
class CacheHit:
    """A complete entry: the caller's facts, and its data file (None for a facts-only entry)."""

    meta: dict[str, Any]
    data: Path | None


class ContentCache:
    """Entries under `root`, their data files ending in `suffix` (e.g. ".wav")."""

    def __init__(self, root: str | Path, suffix: str) -> None:
        self.root = Path(root)
        self.suffix = suffix

    def paths(self, key: str) -> tuple[Path, Path]:
        """(data file, marker) of `key`."""
        folder = self.root / key[:2]
        return folder / f"{key}{self.suffix}", folder / f"{key}.json"

    def get(self, key: str) -> CacheHit | None:
        """The entry of `key`, or None when it is absent, partial or damaged."""
        data, marker = self.paths(key)
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or SIZE_KEY not in meta:
            return None
        size = meta.pop(SIZE_KEY)
        if size is None:
            return CacheHit(meta, None)
        try:
            if not isinstance(size, int) or data.stat().st_size != size:
                return None
        except OSError:
            return None
        return CacheHit(meta, data)

    def put(
        self,
        key: str,
        meta: dict[str, Any],
        data: bytes | None = None,
        *,
        write: Callable[[Path], None] | None = None,
    ) -> CacheHit:
        """Store an entry: the data (`data` bytes, or `write(path)` filling a file), then the marker.

        `meta` must be JSON-able and must not use the key "size".
        """
        if SIZE_KEY in meta:
            raise ValueError(f"cache marker key {SIZE_KEY!r} is reserved")
        data_path, marker = self.paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        size: int | None = None
        if data is not None or write is not None:
            size = _write_atomically(data_path, data, write)
        atomic_write_text(marker, json.dumps({**meta, SIZE_KEY: size}, sort_keys=True))
        return CacheHit(dict(meta), data_path if size is not None else None)


def _write_atomically(path: Path, data: bytes | None, write: Callable[[Path], None] | None) -> int:
    """Write under a temporary name in the same folder, rename; the size written.

    An ordinary `open` (not mkstemp's 0600): preprocess hard-links these files into its output.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        if write is not None:
            write(tmp)
        else:
            tmp.write_bytes(data or b"")
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return size
