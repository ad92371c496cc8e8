"""Codex project parsing: documents -> cells -> takes, and the rules for which take to use.

Why one module: `collect` (which recordings to export) and `synthesize` (which verses still
need a voice) must agree exactly on what counts as a usable recording, so the rules live here
and both stages call them. Format facts: see DESIGN.md, "Codex project format".
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .errors import PipelineError

#: Where the recording app keeps audio (gitignored) and where git keeps it (Git LFS pointers).
ATTACHMENT_FILES_DIR = ".project/attachments/files"
ATTACHMENT_POINTERS_DIR = ".project/attachments/pointers"
TARGET_DIR = "files/target"
AUDIO_EXTENSIONS = (".webm", ".wav", ".mp3", ".m4a", ".ogg", ".opus", ".flac", ".aac", ".mp4")

#: Cell types that are never voiced (only "text" cells are).
SKIPPED_CELL_TYPES = ("paratext", "milestone", "style")

TextSource = Literal["cell", "transcription"]


class CodexError(PipelineError):
    """A Codex project file that cannot be used; the message names the file."""


@dataclass
class Take:
    """One audio attachment of a cell (a recording of the verse)."""

    audio_id: str
    url: str
    created_at: int  # ms since the epoch (0 when unknown)
    updated_at: int
    deleted: bool
    missing: bool
    duration_s: float | None
    transcription: str  # the take's transcription.content, HTML stripped ("" when absent)
    mime_type: str | None
    sample_rate: int | None = None
    channels: int | None = None
    #: metadata.synthetic: made by a TTS model (our write-back), not a person: never a recording
    synthetic: bool = False
    #: user names of the reviewers who approved this take (validatedBy entries not isDeleted)
    validated_by: tuple[str, ...] = ()
    created_by: str | None = None  # the uploader (createdBy)

    @property
    def validated(self) -> bool:
        """A reviewer approved this take in the app (an active validatedBy entry)."""
        return bool(self.validated_by)

    @property
    def usable(self) -> bool:
        """A human recording that can be exported: not deleted, not missing, not synthetic."""
        return not self.deleted and not self.missing and not self.synthetic

    @property
    def extension(self) -> str:
        """File extension of the recording (".webm" when the URL has none we know)."""
        return attachment_extension(self.url, self.mime_type)


@dataclass
class Cell:
    """One cell of a `.codex` document, reduced to what the pipeline needs."""

    document: str  # the .codex file stem, e.g. "MRK"
    verse_id: str  # "MRK 1:1" (metadata.id, or data.globalReferences[0] for UUID ids)
    cell_id: str  # metadata.id as written
    text: str  # HTML stripped, entities decoded, whitespace collapsed
    takes: list[Take] = field(default_factory=list)
    selected_audio_id: str | None = None
    #: deleted|merged|hidden|paratext|milestone|style|type_<other>|empty_text|no_id|not_a_cell; None = text
    skip_reason: str | None = None
    cell_type: str = "text"
    index: int = 0  # position in the document (stable order)


@dataclass
class CellPlan:
    """What to do with one cell: export `take` with `text`, or skip it for `skip_reason`."""

    cell: Cell
    take: Take | None
    text: str
    skip_reason: str | None  # cell reasons, or no_audio | takes_deleted | synthetic_only | takes_missing


# --------------------------------------------------------------------------- text


class _TextExtractor(HTMLParser):
    """Visible text of a cell's HTML: tags removed, footnote markers and scripts dropped."""

    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "td", "section"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = " ".join(v or "" for k, v in attrs if k == "class").split()
        if self._skip_stack or tag in ("script", "style") or "footnote-marker" in classes:
            if tag not in ("br", "img", "hr", "input", "meta", "link", "wbr"):  # void tags never close
                self._skip_stack.append(tag)
            return
        if tag in self.BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_stack:
            if tag in self._skip_stack:  # also closes tags left open inside (sloppy HTML)
                del self._skip_stack[len(self._skip_stack) - 1 - self._skip_stack[::-1].index(tag) :]
            return
        if tag in self.BLOCK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_stack:
            self.parts.append(data)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: Any) -> str:
    """Cell HTML -> plain text: tags removed, entities decoded, whitespace collapsed."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    parser = _TextExtractor()
    parser.feed(value)
    parser.close()
    text = html.unescape("".join(parser.parts))  # double-escaped entities (&amp;#39;) too
    text = _LONE_SURROGATE.sub("", text)  # half an emoji ("\\ud83d" in the JSON): not UTF-8, not speech
    return " ".join(text.split())


# --------------------------------------------------------------------------- verse ids

_REF = re.compile(r"^([A-Za-z0-9]{2,4}) (0|[1-9]\d{0,2}):(0|[1-9]\d{0,2})(?:-(0|[1-9]\d{0,2}))?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def is_verse_reference(value: str) -> bool:
    """True for 'MRK 1:1' style references (also 'MRK 1:1-3' ranges)."""
    return bool(_REF.match(value))


def verse_file_stem(verse_id: str) -> str:
    """'MRK 1:1' -> 'MRK_001_001'; any other id -> a safe name with a short hash (unique).

    Standard references map to `BOOK_CCC_VVV` (ranges `BOOK_CCC_VVV-VVV`); everything else is
    sanitised and suffixed with 8 hex digits of its SHA-1, so two different ids never share a
    stem, and the two shapes never collide with each other.
    """
    match = _REF.match(verse_id)
    if match:
        book, chapter, verse, end = match.groups()
        stem = f"{book.upper()}_{int(chapter):03d}_{int(verse):03d}"
        if book != book.upper():  # 'mrk 1:1' must not collide with 'MRK 1:1'
            return f"{stem}_{_short_hash(verse_id)}"
        return f"{stem}-{int(end):03d}" if end is not None else stem
    safe = _UNSAFE.sub("_", verse_id.strip()).strip("_-")[:80] or "cell"
    return f"{safe}_{_short_hash(verse_id)}"


def _short_hash(value: str) -> str:
    return hashlib.sha1(value.encode("utf-8")).hexdigest()[:8]


def cell_file_stems(cells: Iterable[Cell]) -> list[str]:
    """One unique file stem per cell, in order: the verse stem, disambiguated when needed.

    Two cells can share a verse id (a verse split over cells with UUID ids); then every one of
    them gets `_<hash of document/cell id>` appended, so names do not depend on order. Cells
    that even share document and cell id (a duplicated cell in the app) hash their position in
    the document too, so two of them never write one file.
    """
    cells = list(cells)
    stems = [verse_file_stem(c.verse_id) for c in cells]
    counts = Counter(stems)
    same_id = Counter((c.document, c.cell_id) for c in cells)

    def unique(stem: str, c: Cell) -> str:
        if counts[stem] == 1:
            return stem
        key = f"{c.document}/{c.cell_id}" + (f"/{c.index}" if same_id[c.document, c.cell_id] > 1 else "")
        return f"{stem}_{_short_hash(key)}"

    return [unique(stem, c) for stem, c in zip(stems, cells, strict=True)]


# --------------------------------------------------------------------------- parsing


def _as_ms(value: Any) -> int:
    """createdAt/updatedAt as ms since the epoch: numbers, digit strings or ISO dates."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return 0
    return 0


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number >= 0 else None  # not NaN, not negative


def _as_int(value: Any) -> int | None:
    number = _as_float(value)
    return int(number) if number is not None else None


def _validators(value: Any) -> tuple[str, ...]:
    """Reviewer names of a validatedBy list; withdrawn approvals (isDeleted: true) don't count."""
    if not isinstance(value, list):
        return ()
    names = []
    for entry in value:
        if not isinstance(entry, dict) or entry.get("isDeleted") is True:
            continue
        name = entry.get("username")
        names.append(name.strip() if isinstance(name, str) and name.strip() else "?")
    return tuple(names)


def _is_audio(audio_id: str, attachment: dict[str, Any]) -> bool:
    kind = attachment.get("type")
    if kind is not None:
        return kind == "audio"
    url = str(attachment.get("url") or "")
    return url.lower().endswith(AUDIO_EXTENSIONS) or audio_id.startswith("audio")


def _parse_take(audio_id: str, attachment: Any) -> Take | None:
    if not isinstance(attachment, dict) or not _is_audio(audio_id, attachment):
        return None
    meta = attachment.get("metadata") if isinstance(attachment.get("metadata"), dict) else {}
    transcription = attachment.get("transcription")
    content = transcription.get("content") if isinstance(transcription, dict) else transcription
    created = _as_ms(attachment.get("createdAt"))
    if not created:  # ids look like audio-<ms>-<suffix>
        match = re.match(r"^audio-(\d{10,})", audio_id)
        created = int(match.group(1)) if match else 0
    return Take(
        audio_id=audio_id,
        url=str(attachment.get("url") or ""),
        created_at=created,
        updated_at=_as_ms(attachment.get("updatedAt")) or created,
        deleted=bool(attachment.get("isDeleted", False)),
        missing=bool(attachment.get("isMissing", False)),
        duration_s=_as_float(meta.get("durationSec")),
        transcription=clean_text(content),
        mime_type=meta.get("mimeType") if isinstance(meta.get("mimeType"), str) else None,
        sample_rate=_as_int(meta.get("sampleRate")),
        channels=_as_int(meta.get("channels")),
        synthetic=meta.get("synthetic") is True,
        validated_by=_validators(attachment.get("validatedBy")),
        created_by=attachment["createdBy"] if isinstance(attachment.get("createdBy"), str) else None,
    )


def _verse_id(cell_id: str, data: dict[str, Any]) -> str:
    if is_verse_reference(cell_id):
        return cell_id
    refs = data.get("globalReferences")
    if isinstance(refs, list):
        refs = [r for r in refs if isinstance(r, str) and r.strip()]
        if refs:
            return refs[0].strip()
    return cell_id


def _cell_skip_reason(cell_id: str, cell_type: str, data: dict[str, Any], text: str) -> str | None:
    if data.get("deleted"):
        return "deleted"
    if data.get("merged"):
        return "merged"
    if data.get("hidden"):
        return "hidden"
    if cell_type in SKIPPED_CELL_TYPES:
        return cell_type
    if cell_type != "text":
        return f"type_{_UNSAFE.sub('_', cell_type)[:40]}"
    if not cell_id:
        return "no_id"
    if not text:
        return "empty_text"
    return None


def parse_cell(raw: Any, document: str, index: int) -> Cell:
    """One raw cell dict -> Cell (never raises for odd content; odd cells get a skip_reason)."""
    if not isinstance(raw, dict):
        return Cell(document, "", "", "", skip_reason="not_a_cell", cell_type="", index=index)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    cell_id = str(meta.get("id") or "").strip()
    cell_type = str(meta.get("type") or "text")
    text = clean_text(raw.get("value"))
    attachments = meta.get("attachments") if isinstance(meta.get("attachments"), dict) else {}
    takes = [t for aid, a in attachments.items() if (t := _parse_take(str(aid), a)) is not None]
    selected = meta.get("selectedAudioId")
    return Cell(
        document=document,
        verse_id=_verse_id(cell_id, data),
        cell_id=cell_id,
        text=text,
        takes=takes,
        selected_audio_id=str(selected) if selected else None,
        skip_reason=_cell_skip_reason(cell_id, cell_type, data, text),
        cell_type=cell_type,
        index=index,
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: Python reads infinity, and writing it back gives invalid JSON
        raise ValueError(f"number {text[:40]} is too large")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def load_codex_json(data: bytes, path: str | Path) -> Any:
    """The JSON value of a `.codex` file's bytes; anything unreadable is a CodexError naming the file.

    Valid JSON can still defeat a parser: nesting thousands deep (RecursionError), numbers of
    thousands of digits (ValueError): each is one bad document, never a crash of the whole run.
    """
    try:
        return json.loads(data.decode("utf-8-sig"), parse_float=_finite_float, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise CodexError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CodexError(
            f"{path}: broken JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
            "fix or restore the file (e.g. from git history)"
        ) from None
    except RecursionError:
        raise CodexError(f"{path}: JSON nested too deeply to read; fix or restore the file") from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise CodexError(f"{path}: unreadable JSON value ({str(exc)[:120]}); fix or restore the file") from None


def parse_codex_bytes(data: bytes, path: str | Path) -> list[Cell]:
    """Parse the bytes of a `.codex` file (local or downloaded); `path` names it in errors."""
    doc = load_codex_json(data, path)
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        raise CodexError(f'{path}: not a Codex document (expected {{"cells": [...], "metadata": {{...}}}})')
    document = PurePosixPath(str(path).replace("\\", "/")).stem
    cells = []
    for i, raw in enumerate(doc["cells"]):
        try:
            cells.append(parse_cell(raw, document, i))
        except (ValueError, TypeError, OverflowError, RecursionError, AttributeError) as exc:
            # an absurd value (createdAt: 1e400, NaN, a list where text belongs): the document is suspect
            raise CodexError(
                f"{path}: cell {i + 1} has a value that cannot be used ({type(exc).__name__}: "
                f"{str(exc)[:120]}); fix or restore the file"
            ) from None
    return cells


def read_codex_document(path: str | Path) -> list[Cell]:
    """Read one `.codex` file; broken JSON raises CodexError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CodexError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_codex_bytes(data, path)


def iter_project_documents(project_dir: str | Path) -> Iterator[Path]:
    """The project's `files/target/*.codex` documents, sorted by name."""
    project_dir = Path(project_dir)
    target = project_dir / TARGET_DIR
    if not target.is_dir():
        raise CodexError(f"{project_dir}: no {TARGET_DIR}/ folder; is this a Codex project (source.path)?")
    yield from sorted(p for p in target.glob("*.codex") if p.is_file())


# --------------------------------------------------------------------------- rules


def usable_take(cell: Cell, require_validated: bool = False) -> Take | None:
    """The take to export: selectedAudioId if usable, else the newest validated usable take,
    else the newest usable take. With `require_validated`, only validated takes are candidates.

    Usable = not deleted, not missing, not synthetic (a synthesized take written back by this
    pipeline is never training data, and its verse still needs a human recording). A take a
    reviewer approved beats a newer one nobody has checked yet.
    """
    usable = [t for t in cell.takes if t.usable and (t.validated or not require_validated)]
    if cell.selected_audio_id:
        for take in usable:
            if take.audio_id == cell.selected_audio_id:
                return take
    candidates = [t for t in usable if t.validated] or usable
    if not candidates:
        return None
    return max(candidates, key=lambda t: (t.created_at, t.updated_at, t.audio_id))


def no_take_reason(cell: Cell, require_validated: bool = False) -> str:
    """Why a cell has no usable take: no_audio | takes_deleted | synthetic_only | takes_missing
    | not_validated (usable takes, none approved, and `require_validated`)."""
    if require_validated and any(t.usable for t in cell.takes):
        return "not_validated"
    if not cell.takes:
        return "no_audio"
    alive = [t for t in cell.takes if not t.deleted]
    if not alive:
        return "takes_deleted"
    if all(t.synthetic for t in alive):
        return "synthetic_only"
    return "takes_missing"


def plan_cell(cell: Cell, text_source: TextSource = "cell", require_validated: bool = False) -> CellPlan:
    """The export decision for one cell (the single source of the collect rules).

    text_source "cell" uses the cell's text; "transcription" the take's transcription
    (falling back to nothing: a take without transcription is skipped as empty_text).
    """
    reason = cell.skip_reason
    if reason is not None and not (reason == "empty_text" and text_source == "transcription"):
        return CellPlan(cell, None, "", reason)
    take = usable_take(cell, require_validated)
    if take is None:
        return CellPlan(cell, None, "", no_take_reason(cell, require_validated))
    text = cell.text if text_source == "cell" else take.transcription
    if not text:
        return CellPlan(cell, take, "", "empty_text")
    return CellPlan(cell, take, text, None)


def is_text_cell(cell: Cell) -> bool:
    """A voiceable cell: a text cell with text, not deleted/merged/hidden."""
    return cell.skip_reason is None


def needs_recording(cell: Cell) -> bool:
    """A verse with text but no usable recording: what `synthesize` voices."""
    return is_text_cell(cell) and usable_take(cell) is None


# --------------------------------------------------------------------------- attachments


def _url_parts(url: str) -> PurePosixPath:
    """Normalise an attachment URL to a relative POSIX path, refusing anything else."""
    text = url.strip().replace("\\", "/")
    if not text or "\x00" in text:
        raise CodexError(f"attachment URL {url!r}: empty or invalid")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) or text.startswith("/"):
        raise CodexError(
            f"attachment URL {url!r}: must be a path inside the project (no scheme, not absolute)"
        )
    path = PurePosixPath(text)
    if ".." in path.parts:
        raise CodexError(f"attachment URL {url!r}: refers outside the project folder ('..'); refused")
    return path


def attachment_repo_paths(url: str) -> list[str]:
    """Repository-relative candidates for a take's audio, best first.

    The app keeps the bytes under `.project/attachments/files/` (gitignored) and commits them
    under `.project/attachments/pointers/` through Git LFS, so both are tried.
    """
    path = _url_parts(url).as_posix()
    candidates = [path]
    files_prefix = ATTACHMENT_FILES_DIR + "/"
    pointers_prefix = ATTACHMENT_POINTERS_DIR + "/"
    if path.startswith(files_prefix):
        candidates.append(pointers_prefix + path[len(files_prefix) :])
    elif path.startswith(pointers_prefix):
        candidates.append(files_prefix + path[len(pointers_prefix) :])
    return candidates


def resolve_attachment(project_dir: str | Path, url: str) -> Path:
    """The local path of an attachment URL; refuses URLs that escape the project (CodexError).

    Symlinks are resolved before the check, so a link pointing outside is refused too.
    """
    root = Path(project_dir).resolve()
    candidate = (root / _url_parts(url)).resolve()
    if candidate != root and root not in candidate.parents:
        raise CodexError(f"attachment URL {url!r}: resolves outside the project folder {root}; refused")
    return candidate


def attachment_extension(url: str, mime_type: str | None = None) -> str:
    """Lower-case extension of the recording, from the URL or else the MIME type."""
    suffix = PurePosixPath(url.replace("\\", "/")).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return suffix
    by_mime = {
        "audio/webm": ".webm",
        "audio/wav": ".wav",
        "audio/x-wav": ".wav",
        "audio/wave": ".wav",
        "audio/mpeg": ".mp3",
        "audio/mp4": ".m4a",
        "audio/x-m4a": ".m4a",
        "audio/ogg": ".ogg",
        "audio/flac": ".flac",
    }
    mime = (mime_type or "").split(";")[0].strip().lower()
    return by_mime.get(mime, suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix or "") else ".webm")
