"""Write-back: hand synthesized takes back to the Codex project, safely and only when asked.

Rules (the same for a local folder and for GitLab):

* Each synthesized verse becomes a **new** audio attachment of its cell (a fresh audioId), with
  `metadata.synthetic: true`, `generator`, `modelRevision` and `speaker`, so the app, people
  and this pipeline can tell it from a recording. Nothing is overwritten or deleted.
* `selectedAudioId` is set to the new take only when the cell has **no** `selectedAudioId` at
  all; an existing selection (a person's choice, or an older synthetic take) is never changed.
  The app falls back to the newest usable take anyway, so an unselected take still plays.
* A cell is left alone when it was recorded since synthesis (it has a usable human take now) or
  its text changed since (the take would not match it): re-run `synthesize` first.
* Re-running adds no duplicates: a cell that already has our synthetic take for the same text,
  model revision and speaker (even one a person deleted, i.e. rejected) is skipped.
* Audio goes where the app puts a recording: `.project/attachments/files/<BOOK>/<id>.webm`
  (what `url` points at) and, when the project has a `pointers/` folder (a git-synced
  project), the same bytes at `.project/attachments/pointers/<BOOK>/<id>.webm` (the copy git
  tracks through Git LFS). For GitLab the audio is uploaded through the LFS batch
  API and only the pointer file is committed under `pointers/` (`files/` is gitignored).
* Local: the audio files are written first, then each `.codex` file atomically, keeping its
  formatting and every other byte of meaning; a document changed by someone else while we
  worked is left untouched (error). GitLab: one commit on a new branch + a merge request,
  never a commit to the default branch.
* `dry_run` lists what would change and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codex
from .errors import PipelineError
from .fsutil import atomic_write_bytes, atomic_write_text
from .gitlab_source import GitLabSource, connect_gitlab
from .lfs import lfs_upload, make_lfs_pointer_file  # noqa: F401 - lfs_upload: write-back's upload client

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .synthesize import VerseToVoice

log = logging.getLogger(__name__)

GENERATOR = "tts-pipeline"
MIME_TYPES = {"webm": "audio/webm", "wav": "audio/wav"}


# --------------------------------------------------------------------------- records


@dataclass
class SyntheticTake:
    """A synthesized verse to attach to its cell (audio_path None: planned only, dry run)."""

    document: str  # .codex stem, e.g. "MRK"
    cell_id: str
    verse_id: str
    text: str
    model_revision: str
    speaker: str
    format: str = "webm"
    duration_s: float | None = None
    audio_path: Path | None = None

    @classmethod
    def planned(cls, verse: VerseToVoice, revision: str, speaker: str, fmt: str) -> SyntheticTake:
        return cls(verse.document, verse.cell_id, verse.verse_id, verse.text, revision, speaker, fmt)

    @classmethod
    def from_row(cls, row: dict[str, str], synthesized_dir: Path) -> SyntheticTake:
        """From a row of synthesized/metadata.csv."""
        path = synthesized_dir / row["file_name"]
        return cls(
            document=row["document"],
            cell_id=row["cell_id"],
            verse_id=row["verse_id"],
            text=row["transcription"],
            model_revision=row["model_revision"],
            speaker=row.get("speaker", ""),
            format=path.suffix.lstrip(".") or "webm",
            duration_s=float(row["duration_s"]) if row.get("duration_s") else None,
            audio_path=path,
        )


@dataclass
class Change:
    """One new attachment: which cell, the new audioId, and whether it becomes the selected take."""

    take: SyntheticTake
    audio_id: str
    files_path: str  # .project/attachments/files/<BOOK>/<id>.<ext> (the attachment url)
    pointer_path: str  # .project/attachments/pointers/<BOOK>/<id>.<ext> (tracked by git LFS)
    select: bool


@dataclass
class WriteBackReport:
    changes: list[Change] = field(default_factory=list)
    skipped: list[tuple[SyntheticTake, str]] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)  # .codex paths changed (or that would be)
    branch: str | None = None
    merge_request: str | None = None

    def summary(self, dry_run: bool) -> str:
        verb = "would add" if dry_run else "added"
        lines = [f"write-back: {verb} {len(self.changes)} synthetic take(s), skipped {len(self.skipped)}"]
        for change in self.changes:
            sel = ", selected" if change.select else ""
            lines.append(f"  {verb} {change.take.verse_id} ({change.take.document}): {change.audio_id}{sel}")
        for take, reason in self.skipped:
            lines.append(f"  skipped {take.verse_id} ({take.document}): {reason}")
        if self.branch:
            lines.append(
                f"  branch {self.branch}"
                + (f", merge request {self.merge_request}" if self.merge_request else "")
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- planning (pure)


def _is_ours(attachment: Any) -> bool:
    meta = attachment.get("metadata") if isinstance(attachment, dict) else None
    return isinstance(meta, dict) and meta.get("synthetic") is True and meta.get("generator") == GENERATOR


def _transcription(attachment: dict[str, Any]) -> str:
    value = attachment.get("transcription")
    content = value.get("content") if isinstance(value, dict) else value
    return codex.clean_text(content)


def new_audio_id(take: SyntheticTake, now_ms: int, taken: set[str]) -> str:
    """`audio-<ms>-tts<hash>`: the app's id shape (audio-<ms>-<suffix>), unique in the cell."""
    digest = hashlib.sha256(f"{take.document}/{take.cell_id}/{take.model_revision}".encode()).hexdigest()
    ms = now_ms
    while (audio_id := f"audio-{ms}-tts{digest[:8]}") in taken:
        ms += 1
    return audio_id


def _cells_by_id(cells: list[Any]) -> dict[str, list[int]]:
    """Cell id -> the indices of the cells with that id (a copy-pasted cell can share one)."""
    by_id: dict[str, list[int]] = {}
    for index, raw in enumerate(cells):
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        if isinstance(meta, dict) and meta.get("id") is not None:
            by_id.setdefault(str(meta["id"]).strip(), []).append(index)
    return by_id


def _why_not(take: SyntheticTake, raw: dict[str, Any], index: int) -> str | None:
    """Why the cell must not get this take now (no longer voiceable, recorded, text changed), or None."""
    cell = codex.parse_cell(raw, take.document, index)
    if cell.skip_reason is not None:
        return f"cell is no longer voiceable ({cell.skip_reason})"
    if codex.usable_take(cell) is not None:
        return "recorded since synthesis: a usable recording exists"
    if cell.text != take.text:
        return "cell text changed since synthesis; re-run synthesize"
    return None


def _existing_take(attachments: dict[str, Any], take: SyntheticTake) -> str | None:
    """Why the cell already has this take (ours, same text, model revision and speaker), or None."""
    duplicate = next(
        (
            aid
            for aid, att in attachments.items()
            if _is_ours(att)
            and att["metadata"].get("modelRevision") == take.model_revision
            and att["metadata"].get("speaker", take.speaker) == take.speaker
            and _transcription(att) == take.text
        ),
        None,
    )
    if duplicate is None:
        return None
    state = " (deleted by a user)" if attachments[duplicate].get("isDeleted") else ""
    return f"already has this synthetic take: {duplicate}{state}"


def new_attachment(take: SyntheticTake, files_path: str, now_ms: int, language: str | None) -> dict[str, Any]:
    """The attachment record the app would write for a recording, marked synthetic and ours."""
    ext = take.format
    return {
        "url": files_path,
        "type": "audio",
        "createdAt": now_ms,
        "updatedAt": now_ms,
        "isDeleted": False,
        "isMissing": False,
        "metadata": {
            "mimeType": MIME_TYPES.get(ext, f"audio/{ext}"),
            "sampleRate": 48000 if ext == "webm" else _wav_rate(take.audio_path),
            "channels": 1,
            "durationSec": take.duration_s,
            "synthetic": True,
            "generator": GENERATOR,
            "modelRevision": take.model_revision,
            "speaker": take.speaker,
        },
        "transcription": {"content": take.text, **({"language": language} if language else {})},
    }


def _attach(
    meta: dict[str, Any], attachments: dict[str, Any], take: SyntheticTake, audio_id: str,
    now_ms: int, language: str | None,
) -> Change:  # fmt: skip
    """Add the take under `audio_id`, selecting it only when the cell has no selection at all."""
    files_path = f"{codex.ATTACHMENT_FILES_DIR}/{take.document}/{audio_id}.{take.format}"
    pointer_path = f"{codex.ATTACHMENT_POINTERS_DIR}/{take.document}/{audio_id}.{take.format}"
    attachments[audio_id] = new_attachment(take, files_path, now_ms, language)
    meta["attachments"] = attachments
    select = not meta.get("selectedAudioId")
    if select:
        meta["selectedAudioId"] = audio_id
    return Change(take, audio_id, files_path, pointer_path, select)


def plan_document(
    doc: dict[str, Any],
    takes: list[SyntheticTake],
    now_ms: int,
    language: str | None = None,
) -> tuple[list[Change], list[tuple[SyntheticTake, str]]]:
    """Add `takes` to the cells of the parsed document `doc` (modified in place).

    Returns the changes made and the takes skipped with the reason. The caller decides
    whether to write the result (so a dry run is this function and a print).
    """
    changes: list[Change] = []
    skipped: list[tuple[SyntheticTake, str]] = []
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list):
        return changes, [(t, "not a Codex document") for t in takes]
    by_id = _cells_by_id(cells)
    added: set[str] = set()  # audio ids given in this document (file names must not collide)
    for take in takes:
        indices = by_id.get(take.cell_id, [])
        if not indices:
            skipped.append((take, "cell not found (deleted since synthesis?)"))
            continue
        # a duplicated cell id (copy-paste in the app): the cell whose text the take voices
        index = next((i for i in indices if codex.clean_text(cells[i].get("value")) == take.text), indices[0])
        raw = cells[index]
        attachments = raw["metadata"].get("attachments")
        attachments = {} if attachments is None else attachments
        reason = _why_not(take, raw, index)
        if reason is None and not isinstance(attachments, dict):  # never replace what we do not understand
            reason = "cell attachments are not a mapping; left alone"
        reason = reason or _existing_take(attachments, take)
        if reason is not None:
            skipped.append((take, reason))
            continue
        audio_id = new_audio_id(take, now_ms, set(attachments) | added)
        added.add(audio_id)
        changes.append(_attach(raw["metadata"], attachments, take, audio_id, now_ms, language))
    return changes, skipped


def _wav_rate(path: Path | None) -> int | None:
    if path is None or not path.is_file():
        return None
    import soundfile as sf

    return int(sf.info(str(path)).samplerate)


def dump_like(original: str, doc: Any) -> str:
    """Serialise `doc` the way `original` was written (indent, trailing newline).

    The app writes `JSON.stringify(doc, null, 2)`-style files; matching it keeps the diff of
    a write-back to the cells that changed.
    """
    body = original.lstrip("\ufeff")
    indent: int | str | None = None
    lines = body.splitlines()
    if len(lines) > 1:
        second = lines[1]
        lead = second[: len(second) - len(second.lstrip())]
        indent = lead if lead.startswith("\t") else len(lead) or None
    ascii_only = "\\u" in body and all(ord(c) < 128 for c in body)
    if indent is None:
        text = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":"))
    else:
        text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    # a lone surrogate (half an emoji) cannot be UTF-8: keep it escaped, as the app wrote it
    text = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)
    return text + ("\n" if body.endswith("\n") else "")


def plan_takes(
    documents: dict[str, bytes],
    takes: list[SyntheticTake],
    now_ms: int | None = None,
    language: str | None = None,
) -> tuple[WriteBackReport, dict[str, str]]:
    """Plan every take against `documents` (repo path -> bytes); the new text of changed documents."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    report = WriteBackReport()
    new_texts: dict[str, str] = {}
    by_doc: dict[str, list[SyntheticTake]] = {}
    for take in takes:
        by_doc.setdefault(take.document, []).append(take)
    for document, doc_takes in sorted(by_doc.items()):
        path = f"{codex.TARGET_DIR}/{document}.codex"
        if path not in documents:
            report.skipped.extend((t, f"{path} not found in the project") for t in doc_takes)
            continue
        try:
            doc = codex.load_codex_json(documents[path], path)
            if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
                raise codex.CodexError(f'{path}: not a Codex document (expected {{"cells": [...]}})')
            original = documents[path].decode("utf-8-sig")
            changes, skipped = plan_document(doc, doc_takes, now_ms, language)
        except (codex.CodexError, ValueError, TypeError, OverflowError, RecursionError, AttributeError) as exc:
            why = str(exc) if isinstance(exc, codex.CodexError) else f"{path}: unusable content ({exc})"
            log.error("%s; its takes are not written back", why)
            report.skipped.extend((t, why) for t in doc_takes)
            continue
        report.changes.extend(changes)
        report.skipped.extend(skipped)
        if changes:
            new_texts[path] = dump_like(original, doc)
            report.documents.append(path)
    return report, new_texts


# --------------------------------------------------------------------------- local projects


def project_language(project_dir: Path) -> str | None:
    """The target language tag from the project's metadata.json, if any."""
    path = project_dir / "metadata.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        target = data.get("languages", {}).get("target")
        return target if isinstance(target, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def write_back_local(
    project_dir: str | Path, takes: list[SyntheticTake], dry_run: bool = False, now_ms: int | None = None
) -> WriteBackReport:
    """Add `takes` to a local Codex project (see the module docstring for the rules)."""
    project_dir = Path(project_dir)
    paths = {f"{codex.TARGET_DIR}/{p.name}": p for p in codex.iter_project_documents(project_dir)}
    documents: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    for rel, path in paths.items():
        try:
            documents[rel] = path.read_bytes()
        except OSError as exc:
            unreadable[rel] = f"{path}: cannot read ({exc.strerror}); its takes are not written back"
            log.error("%s", unreadable[rel])
    readable = [t for t in takes if f"{codex.TARGET_DIR}/{t.document}.codex" not in unreadable]
    report, new_texts = plan_takes(documents, readable, now_ms, project_language(project_dir))
    for take in takes:
        why = unreadable.get(f"{codex.TARGET_DIR}/{take.document}.codex")
        if why:
            report.skipped.append((take, why))
    if dry_run:
        return report
    missing = [c for c in report.changes if c.take.audio_path is None or not c.take.audio_path.is_file()]
    if missing:
        raise PipelineError(
            f"{missing[0].take.audio_path}: synthesized audio not found; run `tts-pipeline synthesize` first"
        )
    for rel, text in new_texts.items():
        changes = [c for c in report.changes if f"{codex.TARGET_DIR}/{c.take.document}.codex" == rel]
        written: list[Path] = []
        try:
            for change in changes:
                data = change.take.audio_path.read_bytes()  # type: ignore[union-attr]
                for target_rel in _local_targets(project_dir, change):
                    target = codex.resolve_attachment(project_dir, target_rel)
                    if target.exists():
                        raise PipelineError(f"{target}: already exists; refusing to overwrite")
                    atomic_write_bytes(target, data)
                    written.append(target)
            if paths[rel].read_bytes() != documents[rel]:
                raise PipelineError(
                    f"{paths[rel]}: changed while writing back; nothing written to it, re-run"
                )
            atomic_write_text(paths[rel], text)
        except BaseException:
            for target in written:
                target.unlink(missing_ok=True)
            raise
    return report


def _local_targets(project_dir: Path, change: Change) -> list[str]:
    """files/ always (the attachment url); pointers/ too when the project has that folder.

    A git-synced Codex project keeps the LFS-tracked copy under pointers/ (the app writes both);
    a plain folder without one (like the demo) gets no new folder.
    """
    targets = [change.files_path]
    if (project_dir / codex.ATTACHMENT_POINTERS_DIR).is_dir():
        targets.append(change.pointer_path)
    return targets


# --------------------------------------------------------------------------- GitLab


def read_gitlab_documents(source: GitLabSource) -> dict[str, bytes]:
    """The `.codex` documents under files/target/ at the source's pinned commit."""
    tree = source.list_tree(codex.TARGET_DIR)
    # top level only, like collect and the local source (a nested copy would shadow its name)
    return {
        path: source.read_file(path)
        for path in sorted(tree)
        if path.endswith(".codex") and path.count("/") == 2
    }


def gitlab_documents(cfg: Config) -> list[tuple[str, bytes]]:
    """(path, bytes) of the `.codex` documents of a GitLab source at `source.ref` (or the default branch)."""
    return list(read_gitlab_documents(connect_gitlab(cfg)).items())


def _target_branch(source: GitLabSource) -> str:
    """The branch the merge request targets: source.ref when it names a branch, else the default branch."""
    import gitlab

    ref = source.ref
    if ref:
        try:
            source.project.branches.get(ref)
            return ref
        except gitlab.exceptions.GitlabGetError:
            log.warning(
                "source.ref %r is not a branch; the merge request targets %s", ref, source.default_branch
            )
    if not source.default_branch:
        raise PipelineError(f"{source.where}: no default branch to open a merge request against")
    return str(source.default_branch)


def _branch_exists(source: GitLabSource, branch: str) -> bool:
    import gitlab

    try:
        source.project.branches.get(branch)
        return True
    except gitlab.exceptions.GitlabGetError as exc:
        if getattr(exc, "response_code", None) == 404:
            return False
        raise PipelineError(
            f"{source.where}: cannot check branch {branch} (HTTP {exc.response_code})"
        ) from None


def branch_name(takes: list[SyntheticTake]) -> str:
    """Deterministic per (model revision, verses): pushing the same takes twice finds the branch."""
    revisions = sorted({t.model_revision for t in takes})
    digest = hashlib.sha256(
        json.dumps(
            sorted((t.document, t.cell_id, t.text, t.model_revision, t.speaker) for t in takes)
        ).encode()
    ).hexdigest()
    return f"tts-pipeline/synthesized-{'-'.join(r[:10] for r in revisions)[:40]}-{digest[:8]}"


def write_back_gitlab(
    cfg: Config, takes: list[SyntheticTake], dry_run: bool = False, now_ms: int | None = None
) -> WriteBackReport:
    """Commit the takes on a new branch (audio through LFS) and open a merge request.

    The branch starts at the exact commit the documents were read from (`start_sha`), so a
    change pushed meanwhile shows up as a merge conflict instead of being overwritten.
    """
    import gitlab

    source = connect_gitlab(cfg, write=True)
    target = _target_branch(source)
    documents = read_gitlab_documents(source)
    report, new_texts = plan_takes(documents, takes, now_ms, cfg.code)
    if dry_run or not report.changes:
        return report
    branch = branch_name([c.take for c in report.changes])
    report.branch = branch
    project = source.project
    if _branch_exists(source, branch):
        _check_branch_holds(cfg, source, branch, report)
        mrs = project.mergerequests.list(source_branch=branch, get_all=False)
        if mrs:
            report.merge_request = getattr(mrs[0], "web_url", None)
        else:  # an earlier run committed but could not open the merge request: open it now
            mr = _open_merge_request(source, branch, target, report.changes)
            report.merge_request = getattr(mr, "web_url", None) or f"!{mr.iid}"
        report.skipped.extend((c.take, f"already pushed to branch {branch}") for c in report.changes)
        report.changes, report.documents = [], []
        return report
    blobs: list[Path] = []  # paths, not bytes: a whole book of takes need not fit in memory
    actions: list[dict[str, Any]] = []
    for change in report.changes:
        if change.take.audio_path is None or not change.take.audio_path.is_file():
            raise PipelineError(
                f"{change.take.audio_path}: synthesized audio not found; run synthesize first"
            )
        blobs.append(change.take.audio_path)
        pointer = make_lfs_pointer_file(change.take.audio_path)[1].decode("ascii")  # committed, not the audio
        actions.append({"action": "create", "file_path": change.pointer_path, "content": pointer})
    for path, text in new_texts.items():
        actions.append({"action": "update", "file_path": path, "content": text})
    try:
        sent = source.lfs.upload(blobs)
    except PipelineError as exc:
        raise PipelineError(
            f"{source.where}: write-back stopped while uploading the audio (Git LFS): {exc}. "
            "Nothing was committed and no branch was made; fix that and re-run"
        ) from None
    log.info("uploaded %d LFS object(s) to %s", sent, source.where)
    revision = ", ".join(sorted({c.take.model_revision for c in report.changes}))
    try:
        project.commits.create(
            {
                "branch": branch,
                "start_sha": source.commit_id,
                "commit_message": f"Add {len(report.changes)} synthesized take(s) (tts-pipeline, model {revision})",
                "actions": actions,
            }
        )
    except gitlab.exceptions.GitlabError as exc:
        # one API call makes the branch and its commit together: refused, neither exists
        raise PipelineError(
            f"{_refused(source, exc)}. Nothing was committed and no branch was made; re-run when fixed"
        ) from None
    mr = _open_merge_request(source, branch, target, report.changes)
    report.merge_request = getattr(mr, "web_url", None) or f"!{mr.iid}"
    return report


def _check_branch_holds(cfg: Config, source: GitLabSource, branch: str, report: WriteBackReport) -> None:
    """An existing branch of our name must hold exactly these takes (an earlier run of ours).

    Otherwise (somebody's work on a branch of that name, a different set of takes) it is not
    ours to reuse or overwrite: stop and say how to proceed.
    """
    at_branch = connect_gitlab(cfg, write=True, ref=branch)
    planned, _ = plan_takes(read_gitlab_documents(at_branch), [c.take for c in report.changes], 0, cfg.code)
    if planned.changes:
        raise PipelineError(
            f"{source.where}: branch {branch} already exists but does not hold these "
            f"{len(report.changes)} synthesized take(s) (other content); nothing was pushed. Delete or "
            "rename that branch in GitLab (Repository > Branches) and re-run"
        )


def _refused(source: GitLabSource, exc: Any) -> PipelineError:
    return PipelineError(
        f"{source.where}: write-back refused (HTTP {getattr(exc, 'response_code', None)}): "
        f"{getattr(exc, 'error_message', exc)}; the token needs api + write_repository scopes"
    )


def _open_merge_request(source: GitLabSource, branch: str, target: str, changes: list[Change]) -> Any:
    """Open the merge request of a pushed branch (also on a re-run, if an earlier run could not)."""
    import gitlab

    revision = ", ".join(sorted({c.take.model_revision for c in changes}))
    speakers = ", ".join(sorted({c.take.speaker for c in changes}))
    listing = "\n".join(f"- {c.take.verse_id}: {c.take.text}" for c in changes)
    try:
        return source.project.mergerequests.create(
            {
                "source_branch": branch,
                "target_branch": target,
                "title": f"Synthesized audio for {len(changes)} verse(s) without a recording",
                "description": (
                    f"Added by tts-pipeline (model revision {revision}, speaker {speakers}). Each take is a "
                    "new attachment marked `synthetic: true`; no recording was changed or removed.\n\n"
                    + listing
                ),
                "remove_source_branch": True,
            }
        )
    except gitlab.exceptions.GitlabError as exc:
        raise PipelineError(
            f"{_refused(source, exc)}. Could not open the merge request; branch {branch} holds the "
            f"complete commit: re-run to open its merge request, or open it by hand from {branch} into {target}"
        ) from None


# --------------------------------------------------------------------------- entry points


def write_back_takes(cfg: Config, takes: list[SyntheticTake], dry_run: bool = False) -> WriteBackReport:
    """Write-back to the configured source (local folder or GitLab) and print the summary."""
    if cfg.source.type == "local":
        report = write_back_local(cfg.source.path or ".", takes, dry_run=dry_run)
    else:
        report = write_back_gitlab(cfg, takes, dry_run=dry_run)
    print(report.summary(dry_run))
    return report


def write_back(cfg: Config, synthesized_dir: str | Path, dry_run: bool = False) -> WriteBackReport:
    """Write-back of everything in a synthesized/ output directory."""
    from .synthesize import read_synthesized

    synthesized_dir = Path(synthesized_dir)
    takes = [SyntheticTake.from_row(row, synthesized_dir) for row in read_synthesized(synthesized_dir)]
    return write_back_takes(cfg, takes, dry_run=dry_run)
