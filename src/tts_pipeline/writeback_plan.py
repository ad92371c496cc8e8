"""What a write-back would change: the records and the pure planning (no files, no network).

`plan_takes` works on document bytes, so the local folder, GitLab and a dry run share it;
`writeback.py` reads the documents, writes the result and pushes it. The rules are in the
docstring of `writeback.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import codex

log = logging.getLogger(__name__)


class Verse(Protocol):
    """A verse to voice (what `SyntheticTake.planned` reads of the voice library's VerseToVoice)."""

    document: str
    cell_id: str
    verse_id: str
    text: str


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
    def planned(cls, verse: Verse, revision: str, speaker: str, fmt: str) -> SyntheticTake:
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
