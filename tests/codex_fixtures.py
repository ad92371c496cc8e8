"""Build synthetic Codex projects for tests, with the answer key next to them.

`build_project(n_takes=200)` makes a project that exercises every collect rule (selected,
newest, deleted and missing takes; deleted/merged/hidden/paratext/milestone/style cells;
empty text; HTML entities; UUID cell ids; LFS and non-LFS takes; a pointer whose LFS object
is gone; a `../` URL; a missing file; a corrupt document) and returns, independently of
the code under test, the rows collect must write and the skip counts it must report.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fake_gitlab import lfs_pointer

ROOT = Path(__file__).resolve().parent
REAL_CLIPS = sorted((ROOT / "data" / "librispeech-6spk").glob("*/*.webm"))
FILES = ".project/attachments/files"
POINTERS = ".project/attachments/pointers"
BASE_MS = 1_700_000_000_000


@dataclass
class BuiltProject:
    git_files: dict[str, bytes] = field(default_factory=dict)  # what the repository holds (LFS: pointers)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # what the LFS server holds
    local_files: dict[str, bytes] = field(default_factory=dict)  # a working copy: real bytes under files/
    rows: list[dict[str, object]] = field(default_factory=list)  # expected metadata rows, in order
    skipped: Counter = field(default_factory=Counter)  # expected skip counts (git source)
    local_skipped: Counter = field(default_factory=Counter)  # expected skip counts (local source)
    takes: int = 0

    def write_local(self, root: Path) -> Path:
        for path, data in self.local_files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return root


class _Builder:
    def __init__(self, seed: int, real_clips: int) -> None:
        self.rng = random.Random(seed)
        self.clips = [p.read_bytes() for p in REAL_CLIPS[:real_clips]]
        self.project = BuiltProject()
        self.clock = BASE_MS
        self.n = 0

    def audio_bytes(self) -> bytes:
        if self.clips:
            return self.clips.pop(0)
        size = self.rng.randint(2_000, 30_000)
        return b"\x1aE\xdf\xa3" + self.rng.randbytes(size)  # EBML magic + noise: collect copies bytes

    def take(
        self, book: str, storage: str = "lfs", ext: str = ".webm", **flags: bool
    ) -> tuple[str, dict, bytes]:
        """One attachment; its bytes go where `storage` says (lfs | git | pointer_only | nowhere)."""
        self.n += 1
        self.clock += 1000
        audio_id = f"audio-{self.clock}-{self.n:04d}"
        data = self.audio_bytes()
        url = f"{FILES}/{book}/{audio_id}{ext}"
        mime = {".webm": "audio/webm", ".wav": "audio/wav"}[ext]
        attachment = {
            "url": url,
            "type": "audio",
            "createdAt": self.clock,
            "updatedAt": self.clock,
            "isDeleted": flags.get("deleted", False),
            "isMissing": flags.get("missing", False),
            "metadata": {
                "mimeType": mime,
                "sampleRate": 48000,
                "channels": 1,
                "durationSec": round(len(data) / 8000, 3),
            },
            "transcription": {"content": f"take {self.n}", "language": "x"},
        }
        self.project.takes += 1
        if not flags.get("deleted") and not flags.get("missing"):
            self.store(book, audio_id + ext, data, storage)
        return audio_id, attachment, data

    def store(self, book: str, name: str, data: bytes, storage: str) -> None:
        p = self.project
        if storage == "lfs":
            oid, pointer = lfs_pointer(data)
            p.git_files[f"{POINTERS}/{book}/{name}"] = pointer
            p.lfs_objects[oid] = data
            p.local_files[f"{FILES}/{book}/{name}"] = data
        elif storage == "git":  # committed directly, no LFS
            p.git_files[f"{FILES}/{book}/{name}"] = data
            p.local_files[f"{FILES}/{book}/{name}"] = data
        elif storage == "pointer_only":  # the LFS object never reached the server
            _, pointer = lfs_pointer(data)
            p.git_files[f"{POINTERS}/{book}/{name}"] = pointer
            p.local_files[f"{POINTERS}/{book}/{name}"] = pointer


def cell(cell_id: str, html: str, cell_type: str = "text", **meta: object) -> dict:
    metadata: dict[str, object] = {"id": cell_id, "type": cell_type, "edits": [], "data": {}}
    metadata.update(meta)
    return {"kind": 2, "languageId": "html", "value": html, "metadata": metadata}


KINDS = [
    "plain",
    "plain",
    "plain",
    "newest",
    "selected_older",
    "deleted_old",
    "selected_deleted",
    "html",
    "uuid",
    "git",
    "plain",
    "all_deleted",
    "missing",
    "no_audio",
    "merged",
    "deleted_cell",
    "hidden",
    "empty_text",
    "style",
    "wav",
]


def build_project(
    n_takes: int = 200, seed: int = 0, real_clips: int = 60, books: tuple[str, ...] = ("GEN", "EXO", "LEV")
) -> BuiltProject:
    """A project with `n_takes` attachments (plus the special cases) and its answer key."""
    b = _Builder(seed, real_clips)
    p = b.project
    documents: dict[str, list[dict]] = {book: [] for book in books}
    for book in books:
        documents[book].append(cell(f"{book} 1:0", f"<h1>{book}</h1>", "paratext"))
        documents[book].append(cell(f"{book} 1", "1", "milestone"))
        p.skipped["paratext"] += 1
        p.skipped["milestone"] += 1
    verse = {book: 0 for book in books}
    specials = ["pointer_only", "escape", "file_missing"]
    i = 0
    while p.takes < n_takes or specials:
        book = books[i % len(books)]
        kind = specials.pop(0) if (i % 37 == 5 and specials) else KINDS[i % len(KINDS)]
        if p.takes >= n_takes and specials:
            kind = specials.pop(0)
        i += 1
        verse[book] += 1
        vid = f"{book} 1:{verse[book]}"
        text = f"Verse {vid} says something {b.rng.randint(0, 999)}."
        c = cell(vid, f"<span>{text}</span>")
        meta = c["metadata"]
        export: tuple[str, bytes, str, str] | None = None  # (audio_id, bytes, ext, text)
        reason = None

        def attach(*takes: tuple[str, dict, bytes], meta: dict = meta) -> None:
            meta["attachments"] = {aid: att for aid, att, _ in takes}

        if kind in ("plain", "git", "wav"):
            storage = "git" if kind == "git" else "lfs"
            ext = ".wav" if kind == "wav" else ".webm"
            t = b.take(book, storage, ext)
            attach(t)
            meta["selectedAudioId"] = t[0]
            export = (t[0], t[2], ext, text)
        elif kind == "newest":
            old, new = b.take(book), b.take(book)
            attach(old, new)
            export = (new[0], new[2], ".webm", text)
        elif kind == "selected_older":
            old, new = b.take(book), b.take(book)
            attach(old, new)
            meta["selectedAudioId"] = old[0]
            export = (old[0], old[2], ".webm", text)
        elif kind == "deleted_old":
            old, new = b.take(book, deleted=True), b.take(book)
            attach(old, new)
            meta["selectedAudioId"] = new[0]
            export = (new[0], new[2], ".webm", text)
        elif kind == "selected_deleted":
            usable, gone = b.take(book), b.take(book, deleted=True)
            attach(usable, gone)
            meta["selectedAudioId"] = gone[0]
            export = (usable[0], usable[2], ".webm", text)
        elif kind == "html":
            c["value"] = (
                '<p><span>Tom &amp; Jerry&#39;s</span>&nbsp;<b>big</b>\n  day<sup class="footnote-marker" data-footnote="x">1</sup></p>'
            )
            text = "Tom & Jerry's big day"
            t = b.take(book)
            attach(t)
            meta["selectedAudioId"] = t[0]
            export = (t[0], t[2], ".webm", text)
        elif kind == "uuid":
            meta["id"] = str(uuid.UUID(int=b.rng.getrandbits(128)))
            meta["data"] = {"globalReferences": [vid]}
            t = b.take(book)
            attach(t)
            export = (t[0], t[2], ".webm", text)
        elif kind == "all_deleted":
            attach(b.take(book, deleted=True))
            reason = "takes_deleted"
        elif kind == "missing":
            attach(b.take(book, missing=True))
            reason = "takes_missing"
        elif kind == "no_audio":
            reason = "no_audio"
        elif kind in ("merged", "deleted_cell", "hidden"):
            flag = {"merged": "merged", "deleted_cell": "deleted", "hidden": "hidden"}[kind]
            meta["data"] = {flag: True}
            attach(b.take(book))
            reason = flag
        elif kind == "empty_text":
            c["value"] = "<span> </span>"
            attach(b.take(book))
            reason = "empty_text"
        elif kind == "style":
            meta["type"] = "style"
            attach(b.take(book))
            reason = "style"
        elif kind == "pointer_only":
            t = b.take(book, "pointer_only")
            attach(t)
            reason = "lfs_object_missing"
        elif kind == "escape":
            t = b.take(book)
            t[1]["url"] = "../../outside/secret.webm"
            attach(t)
            reason = "unsafe_url"
        elif kind == "file_missing":
            t = b.take(book, "nowhere")
            attach(t)
            reason = "file_missing"
        documents[book].append(c)
        if reason is not None:
            p.skipped[reason] += 1
            p.local_skipped[reason] += 1
        if export is not None:
            audio_id, data, ext, row_text = export
            stem = f"{book}_001_{verse[book]:03d}"
            p.rows.append(
                {
                    "file_name": f"audio/{stem}{ext}",
                    "transcription": row_text,
                    "verse_id": vid,
                    "document": book,
                    "audio_id": audio_id,
                    "bytes": data,
                }
            )
    for reason in ("paratext", "milestone"):
        p.local_skipped[reason] = p.skipped[reason]
    # a local checkout without `git lfs pull` only has the pointer: that is reported as lfs_pointer
    p.local_skipped["lfs_pointer"] = p.local_skipped.pop("lfs_object_missing")
    for book, cells in documents.items():
        text = json.dumps({"cells": cells, "metadata": {"id": book}}, indent=1) + "\n"
        p.git_files[f"files/target/{book}.codex"] = text.encode()
        p.local_files[f"files/target/{book}.codex"] = text.encode()
    broken = b'{"cells": [{"kind": 2, "value": "<span>cut off'
    p.git_files["files/target/BAD.codex"] = broken
    p.local_files["files/target/BAD.codex"] = broken
    p.git_files["metadata.json"] = p.local_files["metadata.json"] = b'{"projectName": "fixture"}\n'
    order = {book: n for n, book in enumerate(sorted(books))}
    p.rows.sort(key=lambda r: order[str(r["document"])])  # documents in name order, cells in file order
    return p
