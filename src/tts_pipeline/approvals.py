"""Reviewer approvals of synthesized takes, kept beside the synthesized outputs.

Why a file of its own (`<paths.synthesized>.approvals.json`, a sibling of the folder): the
synthesized folder is a stage output that DVC replaces on every run, and a human decision must
survive that. A decision is keyed by verse and model revision, so a new model's take of the
same verse waits for review again.

    {"takes": {"MRK 1:1@3f2a...": {"verse_id": "MRK 1:1", "model_revision": "3f2a...",
                                   "verdict": "approved"}}}
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PipelineError
from .fsutil import read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

VERDICTS = ("approved", "rejected")
_LOCK = threading.Lock()


def approvals_path(synthesized_dir: str | Path) -> Path:
    """`<synthesized>.approvals.json` next to the synthesized folder."""
    folder = Path(synthesized_dir)
    return folder.with_name(folder.name + ".approvals.json")


def take_key(verse_id: str, model_revision: str) -> str:
    return f"{verse_id}@{model_revision}"


def row_key(row: dict[str, Any]) -> str:
    """The key of a synthesized/metadata.csv row (or of a planned take)."""
    return take_key(str(row.get("verse_id") or row.get("cell_id") or ""), str(row.get("model_revision", "")))


def load(path: Path) -> dict[str, dict[str, str]]:
    """key -> {verse_id, model_revision, verdict}; a missing file means nothing reviewed yet."""
    if not path.is_file():
        return {}
    try:
        doc = read_json(path)
    except (ValueError, OSError) as exc:
        raise PipelineError(f"{path}: not a readable approvals file ({exc}); fix or delete it") from None
    takes = doc.get("takes") if isinstance(doc, dict) else None
    if not isinstance(takes, dict):
        raise PipelineError(f'{path}: expected {{"takes": {{...}}}}; fix or delete it')
    return takes


def record(path: Path, verse_id: str, model_revision: str, verdict: str | None) -> dict[str, Any]:
    """Save one verdict (None clears it); returns the entry. Atomic, one writer at a time."""
    if verdict is not None and verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: expected approved or rejected")
    if not verse_id or not model_revision:
        raise ValueError("a verdict needs the verse and the model revision")
    key = take_key(verse_id, model_revision)
    with _LOCK:
        takes = load(path)
        if verdict is None:
            takes.pop(key, None)
            entry: dict[str, Any] = {}
        else:
            entry = {"verse_id": verse_id, "model_revision": model_revision, "verdict": verdict}
            takes[key] = entry
        write_json(path, {"takes": takes})
    return entry


def required(cfg: Config) -> bool:
    """`synthesis.require_approval`; unset means yes for GitLab (a merge request is public)."""
    value = getattr(cfg.synthesis, "require_approval", None)
    return cfg.source.type == "gitlab" if value is None else bool(value)


def split(rows: Iterable[dict[str, Any]], path: Path) -> tuple[list[dict[str, Any]], int, int]:
    """(approved rows, how many wait for a verdict, how many were rejected)."""
    takes = load(path)
    approved, waiting, rejected = [], 0, 0
    for row in rows:
        verdict = takes.get(row_key(row), {}).get("verdict")
        if verdict == "approved":
            approved.append(row)
        elif verdict == "rejected":
            rejected += 1
        else:
            waiting += 1
    return approved, waiting, rejected
