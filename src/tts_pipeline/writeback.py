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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codex
from .errors import PipelineError
from .fsutil import atomic_write_bytes, atomic_write_text
from .gitlab_source import GitLabSource, connect_gitlab
from .lfs import lfs_upload, make_lfs_pointer_file  # noqa: F401 - lfs_upload: write-back's upload client
from .metadata import read_synthesized
from .writeback_plan import Change, SyntheticTake, WriteBackReport, plan_takes

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

log = logging.getLogger(__name__)

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
    source = connect_gitlab(cfg, write=True)
    target = _target_branch(source)
    documents = read_gitlab_documents(source)
    report, new_texts = plan_takes(documents, takes, now_ms, cfg.code)
    if dry_run or not report.changes:
        return report
    branch = branch_name([c.take for c in report.changes])
    report.branch = branch
    if _branch_exists(source, branch):
        return _resume_pushed_branch(cfg, source, branch, target, report)
    actions = _commit_actions(report.changes, new_texts)
    _upload_audio(source, [c.take.audio_path for c in report.changes])  # type: ignore[misc]
    _commit_branch(source, branch, report.changes, actions)
    mr = _open_merge_request(source, branch, target, report.changes)
    report.merge_request = getattr(mr, "web_url", None) or f"!{mr.iid}"
    return report


def _resume_pushed_branch(
    cfg: Config, source: GitLabSource, branch: str, target: str, report: WriteBackReport
) -> WriteBackReport:
    """Our branch exists (an earlier run): check it holds these takes; open its merge request if missing."""
    _check_branch_holds(cfg, source, branch, report)
    mrs = source.project.mergerequests.list(source_branch=branch, get_all=False)
    if mrs:
        report.merge_request = getattr(mrs[0], "web_url", None)
    else:  # an earlier run committed but could not open the merge request: open it now
        mr = _open_merge_request(source, branch, target, report.changes)
        report.merge_request = getattr(mr, "web_url", None) or f"!{mr.iid}"
    report.skipped.extend((c.take, f"already pushed to branch {branch}") for c in report.changes)
    report.changes, report.documents = [], []
    return report


def _commit_actions(changes: list[Change], new_texts: dict[str, str]) -> list[dict[str, Any]]:
    """The commit: an LFS pointer file per take (the audio goes to LFS) and the changed documents."""
    actions: list[dict[str, Any]] = []
    for change in changes:
        if change.take.audio_path is None or not change.take.audio_path.is_file():
            raise PipelineError(
                f"{change.take.audio_path}: synthesized audio not found; run synthesize first"
            )
        pointer = make_lfs_pointer_file(change.take.audio_path)[1].decode("ascii")  # committed, not the audio
        actions.append({"action": "create", "file_path": change.pointer_path, "content": pointer})
    for path, text in new_texts.items():
        actions.append({"action": "update", "file_path": path, "content": text})
    return actions


def _upload_audio(source: GitLabSource, blobs: list[Path]) -> None:
    """Send the audio to Git LFS before committing (paths, not bytes: a whole book need not fit in memory)."""
    try:
        sent = source.lfs.upload(blobs)
    except PipelineError as exc:
        raise PipelineError(
            f"{source.where}: write-back stopped while uploading the audio (Git LFS): {exc}. "
            "Nothing was committed and no branch was made; fix that and re-run"
        ) from None
    log.info("uploaded %d LFS object(s) to %s", sent, source.where)


def _commit_branch(source: GitLabSource, branch: str, changes: list[Change], actions: list[dict[str, Any]]) -> None:
    """One API call makes the branch and its commit together: refused, neither exists."""
    import gitlab

    revision = ", ".join(sorted({c.take.model_revision for c in changes}))
    try:
        source.project.commits.create(
            {
                "branch": branch,
                "start_sha": source.commit_id,
                "commit_message": f"Add {len(changes)} synthesized take(s) (tts-pipeline, model {revision})",
                "actions": actions,
            }
        )
    except gitlab.exceptions.GitlabError as exc:
        raise PipelineError(
            f"{_refused(source, exc)}. Nothing was committed and no branch was made; re-run when fixed"
        ) from None


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
    synthesized_dir = Path(synthesized_dir)
    takes = [SyntheticTake.from_row(row, synthesized_dir) for row in read_synthesized(synthesized_dir)]
    return write_back_takes(cfg, takes, dry_run=dry_run)
