"""Build examples/demo-codex-project from ../shared/data/pyannote-sample.

The 13 utterances of the 30 s two-speaker sample (cut at the STM times) become 13 recorded
verses of a tiny Codex project, re-encoded to WebM/Opus 48 kHz like the recording app.
Around them the project exercises every collect rule: a deleted older take, a take chosen
by recency (no selectedAudioId), a merged cell, a paratext cell, a milestone cell, a cell
whose only take is deleted, and verses with text but no recording (for `synthesize`).
Reviewer approval (Codex `validatedBy`) is on 11 of the 13 exported takes; in the cell chosen
by recency, the approved take wins over a newer unapproved one and an older take whose approval
was withdrawn (`isDeleted: true`), so `collect.require_validated_audio: true` exports 11 clips.

Run from the repo root:  python scripts/make_demo_project.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tts_pipeline.audio import encode_webm_opus, read_wav

BASE_TIME = 1_730_000_000_000  # ms, a fixed "createdAt" so the project is reproducible
REVIEWER = "demo-reviewer"
#: utterances whose take no reviewer approved yet (LUK 1:4, LUK 1:5)
UNVALIDATED = {11, 12}


def approval(created: int, deleted: bool = False) -> dict:
    """One Codex validatedBy entry: a reviewer approved the take (deleted: approval withdrawn)."""
    return {
        "username": REVIEWER,
        "creationTimestamp": created,
        "updatedTimestamp": created,
        "isDeleted": deleted,
    }


def read_stm(path: Path) -> list[tuple[str, float, float, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            _, _, speaker, start, end, text = parts
            rows.append((speaker, float(start), float(end), text))
    return rows


def text_cell(verse_id: str, html: str, **metadata_extra) -> dict:
    metadata = {"id": verse_id, "type": "text", "cellLabel": verse_id.split(":")[-1], "edits": [], "data": {}}
    metadata.update(metadata_extra)
    return {"kind": 2, "languageId": "html", "value": html, "metadata": metadata}


def attachment(book: str, audio_id: str, created: int, duration: float, text: str, **flags) -> dict:
    validated_by = flags.get("validated_by")
    return {
        "url": f".project/attachments/files/{book}/{audio_id}.webm",
        "type": "audio",
        "createdAt": created,
        "updatedAt": created,
        "isDeleted": flags.get("deleted", False),
        "isMissing": flags.get("missing", False),
        "metadata": {
            "mimeType": "audio/webm",
            "sampleRate": 48000,
            "channels": 1,
            "durationSec": round(duration, 3),
        },
        "transcription": {"content": text, "language": "en"},
        "createdBy": flags.get("created_by", "demo-recorder"),
        **({"validatedBy": validated_by} if validated_by is not None else {}),
    }


def build(source: Path, out: Path) -> None:
    samples, rate = read_wav(source / "sample.wav")
    utterances = read_stm(source / "sample.stm")
    if out.exists():
        shutil.rmtree(out)
    files_dir = out / ".project" / "attachments" / "files"

    def save_take(book: str, audio_id: str, start: float, end: float) -> float:
        clip = samples[int(start * rate) : int(end * rate)]
        (files_dir / book).mkdir(parents=True, exist_ok=True)
        (files_dir / book / f"{audio_id}.webm").write_bytes(encode_webm_opus(clip, rate))
        return len(clip) / rate

    books: dict[str, list[dict]] = {"MRK": [], "LUK": []}
    books["MRK"].append(
        {
            "kind": 2,
            "languageId": "html",
            "value": "<h1>Mark</h1>",
            "metadata": {"id": "MRK 1:0", "type": "paratext", "edits": [], "data": {}},
        }
    )
    books["MRK"].append(
        {
            "kind": 2,
            "languageId": "html",
            "value": "1",
            "metadata": {"id": "MRK 1", "type": "milestone", "edits": [], "data": {}},
        }
    )
    for index, (speaker, start, end, text) in enumerate(utterances):
        book, verse = ("MRK", index + 1) if index < 8 else ("LUK", index - 7)
        verse_id = f"{book} 1:{verse}"
        html = "<span>" + text.replace("'", "&#39;") + "</span>"
        audio_id = f"audio-{BASE_TIME + index * 1000}-{book.lower()}{verse:03d}"
        created = BASE_TIME + index * 1000
        cell = text_cell(verse_id, html)
        duration = save_take(book, audio_id, start, end)
        approved = [] if index in UNVALIDATED else [approval(created + 60_000)]
        cell["metadata"]["attachments"] = {
            audio_id: attachment(book, audio_id, created, duration, text, validated_by=approved),
        }
        cell["metadata"]["selectedAudioId"] = audio_id
        if index == 2:  # an older, deleted take (file gone) next to the selected one
            old_id = f"audio-{created - 500}-old"
            cell["metadata"]["attachments"][old_id] = attachment(
                book, old_id, created - 500, 1.0, text, deleted=True
            )
        if index == 4:  # no selectedAudioId: the newest approved take wins over an older one
            older_id = f"audio-{created - 700}-older"
            save_take(book, older_id, start, min(end, start + 0.5))
            cell["metadata"]["attachments"][older_id] = attachment(
                book, older_id, created - 700, 0.5, text, validated_by=[approval(created, deleted=True)]
            )
            # ... and the approved take wins over a newer take no reviewer has checked yet
            newer_id = f"audio-{created + 400}-unchecked"
            save_take(book, newer_id, start, min(end, start + 0.6))
            cell["metadata"]["attachments"][newer_id] = attachment(book, newer_id, created + 400, 0.6, text)
            del cell["metadata"]["selectedAudioId"]
        if index == 6:  # a take that was recorded but whose file is missing on disk
            missing_id = f"audio-{created + 300}-missing"
            cell["metadata"]["attachments"][missing_id] = attachment(
                book, missing_id, created + 300, 1.0, text, missing=True
            )
        cell["metadata"]["data"]["speakerHint"] = speaker  # not used by the pipeline; for humans
        books[book].append(cell)

    # Verses with text and no usable recording: what `synthesize` voices.
    books["MRK"].append(text_cell("MRK 1:9", "<span>We will meet again in the morning.</span>"))
    deleted_only = text_cell("MRK 1:10", "<span>Thank you for calling, goodbye.</span>")
    deleted_id = f"audio-{BASE_TIME + 90_000}-deleted"
    deleted_only["metadata"]["attachments"] = {
        deleted_id: attachment("MRK", deleted_id, BASE_TIME + 90_000, 1.0, "", deleted=True)
    }
    books["MRK"].append(deleted_only)
    books["LUK"].append(
        text_cell("LUK 1:7", "<span>It is a long way from Texas to New Jersey, isn&#39;t it?</span>")
    )
    # Cells every consumer must skip.
    merged = text_cell("LUK 1:8", "<span>This cell was merged into the previous one.</span>")
    merged["metadata"]["data"]["merged"] = True
    books["LUK"].append(merged)
    deleted_cell = text_cell("LUK 1:9", "<span>This cell was deleted.</span>")
    deleted_cell["metadata"]["data"]["deleted"] = True
    books["LUK"].append(deleted_cell)
    books["LUK"].append(text_cell("LUK 1:10", "<span></span>"))  # empty text

    target = out / "files" / "target"
    target.mkdir(parents=True)
    for book, cells in books.items():
        document = {
            "cells": cells,
            "metadata": {"id": book, "originalName": book, "sourceFile": f"{book}.source"},
        }
        (target / f"{book}.codex").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    (out / "metadata.json").write_text(
        json.dumps(
            {
                "format": "scripture burrito",
                "projectName": "tts-pipeline demo",
                "languages": {"source": "eng", "target": "eng"},
                "meta": {"generator": {"softwareName": "tts-pipeline scripts/make_demo_project.py"}},
            },
            indent=2,
        )
        + "\n"
    )
    shutil.copy(source / "LICENSE", out / "LICENSE-audio.txt")
    (out / "README.md").write_text(
        "# Demo Codex project\n\nBuilt by `scripts/make_demo_project.py` from pyannote.audio's `sample.wav`"
        " (MIT, see LICENSE-audio.txt): 13 utterances by two speakers, re-encoded to WebM/Opus 48 kHz.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/pyannote-sample"))
    parser.add_argument("--out", type=Path, default=Path("examples/demo-codex-project"))
    args = parser.parse_args()
    build(args.source, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
