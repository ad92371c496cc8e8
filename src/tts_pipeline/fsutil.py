"""File-system helpers shared by every stage: atomic outputs, hashing, JSON.

A stage never leaves a half-written output that looks complete: it writes into a temporary
sibling directory and renames it into place only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import PipelineError

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (flat memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Stable hash of JSON-able parameters (sorted keys), for cache keys."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


#: Names that mark a directory as somebody's project, never a stage output to replace.
PROJECT_MARKERS = (".git", ".dvc", "dvc.yaml", "pyproject.toml", ".project", "files/target")


def _refuse_to_replace(final: Path) -> None:
    """Stop a mistyped --output_dir from replacing a project, the working directory or home."""
    if not final.is_dir():
        return
    resolved = final.resolve()
    protected = {Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve()}
    marker = next((name for name in PROJECT_MARKERS if (resolved / name).exists()), None)
    if resolved in protected or marker:
        why = f"it contains {marker}" if marker else "it is the working directory, one of its parents or home"
        raise PipelineError(
            f"{final}: refusing to use as an output directory ({why}); its contents would be "
            "replaced. Choose an empty or new --output_dir."
        )


#: Written inside every stage output: says "tts-pipeline wrote this folder, for this stage".
#: Deterministic content (no time, no run id): outputs are content-hashed by DVC.
OUTPUT_MARKER = ".tts-pipeline-output.json"
_FORCE: contextvars.ContextVar[bool] = contextvars.ContextVar("tts_pipeline_force_replace", default=False)


@contextlib.contextmanager
def forcing(enabled: bool = True) -> Iterator[None]:
    """Within the block, stages may replace output folders that this tool did not write (`--force`)."""
    token = _FORCE.set(enabled)
    try:
        yield
    finally:
        _FORCE.reset(token)


def marker_stage(directory: Path) -> str | None:
    """The stage named by the output marker inside `directory` (None: no readable marker)."""
    try:
        data = json.loads((directory / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("stage")) if isinstance(data, dict) and data.get("tool") == "tts-pipeline" else None


def write_output_marker(directory: Path, stage: str) -> None:
    write_json(directory / OUTPUT_MARKER, {"stage": stage, "tool": "tts-pipeline"})


def claim_output_dir(final: str | Path, stage: str, legacy: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output folder whose replacement would delete what we did not write.

    Replaceable: a missing or empty folder, or one holding our marker for the same `stage`. A folder
    written by an earlier version (no marker yet) is recognised by `legacy`, the names only this
    stage's output holds together (e.g. collect_report.json). `--force` (see `forcing`) allows anything but a project,
    the working directory, its parents or home.
    """
    final = Path(final)
    _refuse_to_replace(final)
    if not final.is_dir() or _FORCE.get():
        if final.exists() and not final.is_dir():
            raise PipelineError(f"{final}: is a file, not a folder; choose another output path")
        return
    if not any(final.iterdir()):
        return
    owner = marker_stage(final)
    if owner == stage:
        return
    if owner is not None:
        raise PipelineError(
            f"{final}: holds the output of `tts-pipeline {owner}`, not {stage}; refusing to replace it. "
            f"Choose another output path (or pass --force to replace it)"
        )
    if legacy and all((final / name).exists() for name in legacy):
        return
    raise PipelineError(
        f"{final}: not empty and not written by tts-pipeline {stage} (no {OUTPUT_MARKER} inside); "
        "refusing to replace it. Choose a new or empty output path, or pass --force to replace it"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temp/old siblings of `final` left by a run that was killed (kill -9, power cut).

    Only ours: named `.<name>.tmp-<pid>-*` / `.<name>.old-<pid>` by `atomic_directory`, holding
    our marker, and made by a process that no longer exists (a parallel run keeps its own).
    """
    removed = []
    if not final.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for stale in final.parent.glob(f".{final.name}.{kind}-*"):
            pid_text = stale.name[len(f".{final.name}.{kind}-") :].split("-", 1)[0]
            if not (stale.is_dir() and pid_text.isdigit()) or pid_alive(int(pid_text)):
                continue
            if marker_stage(stale) is None:
                continue
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_directory(final: str | Path, stage: str = "output", legacy: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `final` only if the block succeeds.

    On an exception (or Ctrl-C) the temporary directory is removed and `final`, if it
    existed, is left exactly as it was. `final` must be ours to replace (`claim_output_dir`);
    the new output carries the marker naming `stage`, so the next run may replace it.
    """
    final = Path(final)
    claim_output_dir(final, stage, legacy)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; outputs should be as readable as any directory
    try:
        write_output_marker(tmp, stage)
        yield tmp
        write_output_marker(tmp, stage)  # the block may have rebuilt the folder's contents
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        try:
            claim_output_dir(final, stage, legacy)  # somebody may have written into it meanwhile
        except PipelineError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary name + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file is an ordinary file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> None:
    """Deterministic, human-readable JSON (sorted keys, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON, naming the file in the error when it is missing or broken."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: broken JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def overlapping_input(output_dir: str | Path, *inputs: str | Path | None) -> Path | None:
    """The first input that is `output_dir` or lies inside it; None when no input does.

    `atomic_directory` replaces the whole output directory, so an output that holds a stage's
    input (a mistyped `--output_dir` one level too high) would delete that input on success.
    """
    out = Path(output_dir).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve().is_relative_to(out):
            return Path(item)
    return None
