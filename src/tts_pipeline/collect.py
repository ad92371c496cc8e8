"""collect: a Codex project (GitLab or a local folder) -> raw/audio/* + metadata.csv + report.

Why a download cache: DVC deletes a stage's outputs before it re-runs it, and a crash must not
lose finished downloads. So every download goes, under a temporary name, into a
content-addressed cache (`<paths.cache>/collect/`: git blobs by their git id, LFS objects by
sha256), is verified, and is renamed into place; a re-run (after Ctrl-C, a crash or a DVC
re-run) verifies and reuses what is there and downloads only the rest. The output directory is
then rebuilt from the cache (hard links, else copies) in one atomic rename, so its bytes depend
only on the project, never on how many runs it took.

The rules (which cells, which take, which text) live in `codex.py`, shared with `synthesize`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import codex
from .audio import is_lfs_pointer
from .codex import CellPlan, CodexError, TextSource
from .config import Config
from .downloads import DownloadCache, run_parallel
from .errors import PipelineError
from .fsutil import atomic_directory, claim_output_dir, sha256_file, write_json
from .gitlab_source import GitLabSource, connect_gitlab
from .lfs import LfsPointer, parse_lfs_pointer, redact_url
from .metadata import write_metadata

log = logging.getLogger(__name__)

METADATA_COLUMNS = [
    "file_name",
    "transcription",
    "verse_id",
    "document",
    "audio_id",
    "duration_s",
    "cell_id",
    "mime_type",
    "sample_rate",
    "size_bytes",
    "sha256",
    "source_path",
]
#: Skip reasons that need a person's attention (listed one by one in the report).
PROBLEM_REASONS = {
    "takes_missing",
    "file_missing",
    "empty_file",
    "lfs_pointer",
    "lfs_object_missing",
    "unsafe_url",
}


# --------------------------------------------------------------------------- records


@dataclass
class ExportItem:
    """A cell whose selected take will be exported as audio/<stem><ext>."""

    plan: CellPlan
    stem: str

    @property
    def take(self) -> codex.Take:
        assert self.plan.take is not None
        return self.plan.take

    @property
    def file_name(self) -> str:
        return f"audio/{self.stem}{self.take.extension}"


@dataclass
class Located:
    """Where the verified bytes of one export are on this machine."""

    item: ExportItem
    path: Path
    size: int
    sha256: str
    source_path: str  # path inside the project


@dataclass
class Skip:
    document: str
    cell_id: str
    verse_id: str
    reason: str
    detail: str = ""
    index: int = 0  # the cell's position in its document (report order)


@dataclass
class Stats:
    """What this run transferred (logged; not in the report, which must be run-independent)."""

    downloaded_files: int = 0
    downloaded_bytes: int = 0
    reused_files: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def downloaded(self, size: int) -> None:
        with self.lock:
            self.downloaded_files += 1
            self.downloaded_bytes += size

    def reused(self) -> None:
        with self.lock:
            self.reused_files += 1


@dataclass
class CollectResult:
    output_dir: Path
    exported: int
    report: dict[str, Any]
    stats: Stats


@dataclass
class ProjectPlan:
    """The project read and the rules applied: what to export, what was skipped and why."""

    items: list[ExportItem]
    skips: list[Skip]
    cells_seen: int
    documents: list[str]
    failed_documents: list[dict[str, str]]


# --------------------------------------------------------------------------- planning (both sources)


def plan_documents(
    documents: Iterable[tuple[str, Callable[[], list[codex.Cell]]]],
    text_source: TextSource,
    require_validated: bool = False,
) -> ProjectPlan:
    """Parse each document (a broken one is reported and the rest continue) and plan its cells."""
    plans: list[CellPlan] = []
    skips: list[Skip] = []
    names: list[str] = []
    failed: list[dict[str, str]] = []
    cells_seen = 0
    for name, load in documents:
        names.append(name)
        try:
            cells = load()
        except CodexError as exc:
            failed.append({"document": name, "error": str(exc)})
            continue
        cells_seen += len(cells)
        for cell in cells:
            plan = codex.plan_cell(cell, text_source, require_validated)
            if plan.skip_reason is None:
                plans.append(plan)
            else:
                skips.append(
                    Skip(
                        cell.document,
                        cell.cell_id,
                        cell.verse_id,
                        plan.skip_reason,
                        _detail(plan),
                        cell.index,
                    )
                )
    stems = codex.cell_file_stems([p.cell for p in plans])
    items = [ExportItem(plan, stem) for plan, stem in zip(plans, stems, strict=True)]
    return ProjectPlan(items, skips, cells_seen, names, failed)


def _detail(plan: CellPlan) -> str:
    if plan.skip_reason == "takes_missing":
        missing = [t.audio_id for t in plan.cell.takes if t.missing and not t.deleted]
        return f"take(s) flagged isMissing in the app: {', '.join(missing)}"
    return ""


def _skip(item: ExportItem, reason: str, detail: str = "") -> Skip:
    cell = item.plan.cell
    return Skip(cell.document, cell.cell_id, cell.verse_id, reason, detail, cell.index)


# --------------------------------------------------------------------------- local source


def local_plan(project_dir: Path, text_source: TextSource, require_validated: bool = False) -> ProjectPlan:
    documents = [
        (path.relative_to(project_dir).as_posix(), lambda path=path: codex.read_codex_document(path))
        for path in codex.iter_project_documents(project_dir)
    ]
    return plan_documents(documents, text_source, require_validated)


def locate_local(project_dir: Path, items: list[ExportItem]) -> tuple[list[Located], list[Skip]]:
    """Find each take's file in a local project (or git checkout); pointers and escapes are skipped."""
    from tqdm import tqdm

    located: list[Located] = []
    skips: list[Skip] = []
    for item in tqdm(items, desc="read takes", unit="file", disable=None):
        url = item.take.url
        try:
            candidates = codex.attachment_repo_paths(url)
            paths = [(c, codex.resolve_attachment(project_dir, c)) for c in candidates]
        except CodexError as exc:
            skips.append(_skip(item, "unsafe_url", str(exc)))
            continue
        found = [(rel, p) for rel, p in paths if p.is_file()]
        audio = [(rel, p) for rel, p in found if p.stat().st_size > 0 and not is_lfs_pointer(p)]
        if audio:
            rel, path = audio[0]
            located.append(Located(item, path, path.stat().st_size, sha256_file(path), rel))
        elif any(is_lfs_pointer(p) for _, p in found):
            rel, pointer_path = next((rel, p) for rel, p in found if is_lfs_pointer(p))
            stored = _local_lfs_object(project_dir, pointer_path)
            if stored is not None:  # a git checkout that fetched the object but did not check it out
                located.append(Located(item, stored[0], stored[1].size, stored[1].oid, rel))
                continue
            skips.append(
                _skip(
                    item,
                    "lfs_pointer",
                    f"{rel} is a Git LFS pointer: run `git lfs pull` or use source.type gitlab",
                )
            )
        elif found:
            skips.append(_skip(item, "empty_file", f"{found[0][0]} is empty"))
        else:
            skips.append(_skip(item, "file_missing", f"{candidates[0]} not found"))
    return located, skips


def _local_lfs_object(project_dir: Path, pointer_path: Path) -> tuple[Path, LfsPointer] | None:
    """The object of an LFS pointer from the checkout's own `.git/lfs/objects` store, if verified."""
    pointer = parse_lfs_pointer(pointer_path.read_bytes()[:2048])
    if pointer is None:
        return None
    path = project_dir / ".git" / "lfs" / "objects" / pointer.oid[:2] / pointer.oid[2:4] / pointer.oid
    if path.is_file() and path.stat().st_size == pointer.size and sha256_file(path) == pointer.oid:
        return path, pointer
    return None


# --------------------------------------------------------------------------- GitLab source + cache


def gitlab_collect_plan(
    source: GitLabSource,
    cache: DownloadCache,
    text_source: TextSource,
    workers: int,
    stats: Stats,
    require_validated: bool = False,
) -> tuple[ProjectPlan, dict[str, Any]]:
    """List the tree, fetch the `.codex` documents (through the cache) and plan the export."""
    tree = source.list_tree()
    docs = sorted(
        p for p in tree if p.startswith(codex.TARGET_DIR + "/") and p.endswith(".codex") and p.count("/") == 2
    )
    if not docs:
        raise PipelineError(
            f"{source.where} at {source.commit_id[:12]}: no {codex.TARGET_DIR}/*.codex files; is this a Codex project?"
        )
    _fetch_blobs(source, cache, [tree[p] for p in docs], workers, stats, "documents")
    documents = [
        (
            path,
            lambda path=path: codex.parse_codex_bytes(cache.blob_path(tree[path].blob_id).read_bytes(), path),
        )
        for path in docs
    ]
    return plan_documents(documents, text_source, require_validated), tree


def _fetch_blobs(
    source: GitLabSource, cache: DownloadCache, entries: Iterable[Any], workers: int, stats: Stats, desc: str
) -> None:
    jobs: list[tuple[str, Callable[[], None]]] = []
    for entry in {e.blob_id: e for e in entries}.values():
        if cache.has_blob(entry.blob_id):
            stats.reused()
            continue

        def job(entry: Any = entry) -> None:
            size = source.download_file(entry.path, cache.blob_path(entry.blob_id), entry.blob_id)
            stats.downloaded(size)

        jobs.append((entry.path, job))
    run_parallel(jobs, workers, f"download {desc}")


def _fetch_lfs_objects(
    source: GitLabSource, cache: DownloadCache, pointers: list[LfsPointer], workers: int, stats: Stats
) -> dict[str, str]:
    """Download the LFS objects the cache lacks (in parallel); oid -> why one is unavailable."""
    missing = [p for p in pointers if not cache.has_lfs(p)]
    for _ in range(len(pointers) - len(missing)):
        stats.reused()
    if not missing:
        return {}
    errors: dict[str, str] = {}
    actions = source.lfs.batch("download", missing)
    jobs: list[tuple[str, Callable[[], None]]] = []
    for pointer in sorted(missing, key=lambda p: p.oid):
        action = actions[pointer.oid]
        if action.href is None:
            errors[pointer.oid] = action.error or "not available"
            continue

        def job(action: Any = action) -> None:
            size = source.lfs.download(action, cache.lfs_path(action.oid))
            stats.downloaded(size)

        jobs.append((pointer.oid, job))
    run_parallel(jobs, workers, "download LFS objects")
    return errors


def locate_gitlab(
    source: GitLabSource,
    cache: DownloadCache,
    tree: dict[str, Any],
    items: list[ExportItem],
    workers: int,
    stats: Stats,
) -> tuple[list[Located], list[Skip]]:
    """Fetch each take (git blob, then its LFS object when the blob is a pointer) into the cache."""
    skips: list[Skip] = []
    found: list[tuple[ExportItem, Any]] = []
    for item in items:
        try:
            candidates = codex.attachment_repo_paths(item.take.url)
        except CodexError as exc:
            skips.append(_skip(item, "unsafe_url", str(exc)))
            continue
        entry = next((tree[c] for c in candidates if c in tree), None)
        if entry is None:
            skips.append(_skip(item, "file_missing", f"{candidates[-1]} is not in the repository"))
            continue
        found.append((item, entry))

    _fetch_blobs(source, cache, [e for _, e in found], workers, stats, "takes")

    pointers: dict[str, LfsPointer] = {}
    item_pointer: list[tuple[ExportItem, Any, LfsPointer | None]] = []
    for item, entry in found:
        path = cache.blob_path(entry.blob_id)
        pointer = None
        if path.stat().st_size <= 1024:
            pointer = parse_lfs_pointer(path.read_bytes())
        item_pointer.append((item, entry, pointer))
        if pointer is not None:
            pointers[pointer.oid] = pointer

    errors = _fetch_lfs_objects(source, cache, list(pointers.values()), workers, stats)
    located: list[Located] = []
    for item, entry, pointer in item_pointer:
        if pointer is None:
            path = cache.blob_path(entry.blob_id)
            if path.stat().st_size == 0:
                skips.append(_skip(item, "empty_file", f"{entry.path} is empty"))
                continue
            located.append(Located(item, path, path.stat().st_size, sha256_file(path), entry.path))
        elif pointer.oid in errors:
            detail = f"{entry.path}: LFS object {pointer.oid[:12]} unavailable: {errors[pointer.oid]}"
            skips.append(_skip(item, "lfs_object_missing", detail))
        else:
            located.append(Located(item, cache.lfs_path(pointer.oid), pointer.size, pointer.oid, entry.path))
    return located, skips


# --------------------------------------------------------------------------- output


def _place(src: Path, dst: Path, link: bool) -> None:
    """Hard-link from the cache (fast, no extra space), else copy."""
    if link:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return
    shutil.copyfile(src, dst)


def build_report(
    source_info: dict[str, Any],
    plan: ProjectPlan,
    located: list[Located],
    skips: list[Skip],
    text_source: str,
) -> dict[str, Any]:
    """The summary written to collect_report.json (deterministic: no times, no transfer counts)."""
    by_reason = Counter(s.reason for s in skips)
    problems = [s for s in skips if s.reason in PROBLEM_REASONS]
    problems.sort(key=lambda s: (s.document, s.index, s.reason))
    return {
        "source": source_info,
        "text_source": text_source,
        "documents": {"seen": len(plan.documents), "failed": plan.failed_documents},
        "cells": {
            "seen": plan.cells_seen,
            "exported": len(located),
            "exported_validated": sum(x.item.take.validated for x in located),  # a reviewer approved
            "skipped": len(skips),
            "skipped_by_reason": dict(sorted(by_reason.items())),
        },
        "problems": [
            {
                "document": s.document,
                "cell_id": s.cell_id,
                "verse_id": s.verse_id,
                "reason": s.reason,
                "detail": s.detail,
            }
            for s in problems
        ],
        "audio": {
            "files": len(located),
            "bytes": sum(x.size for x in located),
            "duration_s": round(sum(x.item.take.duration_s or 0.0 for x in located), 3),
        },
    }


def metadata_row(x: Located) -> dict[str, object]:
    take, cell = x.item.take, x.item.plan.cell
    return {
        "file_name": x.item.file_name,
        "transcription": x.item.plan.text,
        "verse_id": cell.verse_id,
        "document": cell.document,
        "audio_id": take.audio_id,
        "duration_s": "" if take.duration_s is None else f"{take.duration_s:g}",
        "cell_id": cell.cell_id,
        "mime_type": take.mime_type or "",
        "sample_rate": take.sample_rate if take.sample_rate is not None else "",
        "size_bytes": x.size,
        "sha256": x.sha256,
        "source_path": x.source_path,
    }


#: What a collect output of an earlier version (before the output marker) always holds.
COLLECT_LEGACY = ("collect_report.json", "metadata.csv", "audio")


def write_output(output_dir: Path, located: list[Located], report: dict[str, Any], link: bool) -> None:
    """Rebuild the whole output directory atomically (audio/, metadata.csv, collect_report.json)."""
    from tqdm import tqdm

    ordered = sorted(located, key=lambda x: (x.item.plan.cell.document, x.item.plan.cell.index))
    with atomic_directory(output_dir, "collect", COLLECT_LEGACY) as tmp:
        audio = tmp / "audio"
        audio.mkdir()
        for x in tqdm(ordered, desc="write audio", unit="file", disable=None):
            _place(x.path, tmp / x.item.file_name, link)
        write_metadata(tmp / "metadata.csv", [metadata_row(x) for x in ordered], METADATA_COLUMNS)
        write_json(tmp / "collect_report.json", report)


def check_output_dir(output_dir: Path, project_dir: Path | None = None) -> None:
    """Refuse an output folder whose replacement would delete something that is not ours.

    The output is rebuilt by replacing the whole folder: pointed by mistake at the Codex
    project, a folder holding it, or any other data, that would delete it. Only a new or empty
    folder, or one that collect wrote (`fsutil.claim_output_dir`), may be replaced.
    """
    out = output_dir.resolve()
    if project_dir is not None:
        project = project_dir.resolve()
        if out == project or out in project.parents:
            raise PipelineError(
                f"{output_dir}: is (or holds) the Codex project {project_dir}; refusing to replace it. "
                "Choose another --output_dir / paths.raw_dataset"
            )
    claim_output_dir(output_dir, "collect", COLLECT_LEGACY)


def collect(cfg: Config, output_dir: str | Path) -> CollectResult:
    """Collect the configured Codex project into `output_dir` (the raw dataset)."""
    output_dir = Path(output_dir)
    text_source: TextSource = cfg.collect.text_source
    workers = cfg.collect.download_workers
    stats = Stats()
    if cfg.require_source("collect").type == "local":
        project_dir = Path(cfg.source.path or "")
        if not project_dir.is_dir():
            raise PipelineError(f"{cfg.config_path}: source.path {project_dir} is not a folder")
        check_output_dir(output_dir, project_dir)
        plan = local_plan(project_dir, text_source, cfg.collect.require_validated_audio)
        located, more = locate_local(project_dir, plan.items)
        info: dict[str, Any] = {"type": "local", "path": cfg.source.path}
        link = False  # never hard-link a user's own files into the pipeline's outputs
    else:
        check_output_dir(output_dir)
        cache = DownloadCache(Path(cfg.paths.cache) / "collect")
        cache.clean()
        source = connect_gitlab(cfg)
        plan, tree = gitlab_collect_plan(
            source, cache, text_source, workers, stats, cfg.collect.require_validated_audio
        )
        located, more = locate_gitlab(source, cache, tree, plan.items, workers, stats)
        info = {
            "type": "gitlab",
            "url": redact_url(cfg.source.url),
            "project": cfg.source.project,
            "ref": cfg.source.ref or source.default_branch,
            "commit": source.commit_id,
        }
        link = True
    skips = plan.skips + more
    report = build_report(info, plan, located, skips, text_source)
    _refuse_empty(cfg, output_dir, plan, report)
    write_output(output_dir, located, report, link)
    _log_summary(output_dir, report, stats)
    return CollectResult(output_dir, len(located), report, stats)


def _refuse_empty(cfg: Config, output_dir: Path, plan: ProjectPlan, report: dict[str, Any]) -> None:
    """Stop before writing when nothing would be collected, for either source.

    An empty project (no documents, or no recorded text cells) is almost always the wrong
    folder or branch; an empty output would also replace a good earlier one.
    """
    where = redact_url(cfg.source.url) + f" {cfg.source.project}" if cfg.source.type == "gitlab" else cfg.source.path
    kept = f"; {output_dir} is left as it was" if output_dir.exists() else ""
    if not plan.documents:
        raise PipelineError(f"{where}: no {codex.TARGET_DIR}/*.codex files; is this a Codex project?{kept}")
    if report["cells"]["exported"] == 0:
        failed = len(plan.failed_documents)
        reasons = ", ".join(f"{k} {v}" for k, v in report["cells"]["skipped_by_reason"].items()) or "no text cells"
        raise PipelineError(
            f"{where}: nothing to collect: {len(plan.documents)} document(s)"
            + (f" ({failed} unreadable)" if failed else "")
            + f", {report['cells']['seen']} cell(s), none with a usable recording ({reasons}); "
            f"check source.path / the branch{kept}"
        )


def _log_summary(output_dir: Path, report: dict[str, Any], stats: Stats) -> None:
    cells = report["cells"]
    reasons = ", ".join(f"{k} {v}" for k, v in cells["skipped_by_reason"].items()) or "none"
    log.info(
        "collect: %d cells seen, %d exported to %s (%d of them validated by a reviewer), %d skipped (%s)",
        cells["seen"],
        cells["exported"],
        output_dir,
        cells["exported_validated"],
        cells["skipped"],
        reasons,
    )
    if stats.downloaded_files or stats.reused_files:
        log.info(
            "downloads: %d file(s), %.1f MB; %d reused from the cache",
            stats.downloaded_files,
            stats.downloaded_bytes / 1e6,
            stats.reused_files,
        )
    for failed in report["documents"]["failed"]:
        log.error("document skipped (the others were collected): %s", failed["error"])
    for problem in report["problems"][:20]:
        log.warning(
            "%s (%s): %s: %s", problem["verse_id"], problem["document"], problem["reason"], problem["detail"]
        )
    if len(report["problems"]) > 20:
        log.warning("... %d more problems in collect_report.json", len(report["problems"]) - 20)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --preprocess / --diarize / --prepare-training (run the next stages too) live in cli.py:
    # a stage module never runs another stage.
    parser.add_argument("--output_dir", default=None, help="raw dataset folder (default: paths.raw_dataset)")


def run(cfg: Config, args: argparse.Namespace) -> int:
    collect(cfg, cfg.flag_or_path(args, "output_dir", "raw_dataset"))
    return 0
