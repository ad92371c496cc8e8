"""metadata.csv: the file contract between stages.

`file_name,transcription` always come first (the Hugging Face audiofolder convention),
then any further columns. Rows are read lazily so memory stays flat in corpus size.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import PipelineError
from .fsutil import atomic_write_text

FIRST_COLUMNS = ("file_name", "transcription")


class MetadataError(ValueError):
    """A metadata.csv that cannot be used, with the file (and row) in the message."""


def iter_metadata(path: str | Path) -> Iterator[dict[str, str]]:
    """Yield rows of a metadata.csv as dicts, checking the required columns first."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found")
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which would hide `file_name`.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            missing = [c for c in FIRST_COLUMNS if c not in header]
            if missing:
                raise MetadataError(
                    f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header)})"
                )
            for row in reader:
                if None in row:  # line_num: the file's line (a quoted transcription may span lines)
                    raise MetadataError(f"{path}:{reader.line_num}: more fields than the header has")
                yield row
        except UnicodeDecodeError:
            raise MetadataError(
                f"{path}:{_first_non_utf8_line(path)}: not UTF-8 text; save the file as UTF-8"
            ) from None


def _first_non_utf8_line(path: Path) -> int:
    """Line number of the first line that is not UTF-8 (the decoder fails a whole block ahead)."""
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return 0


def resolve_clip_path(base_dir: Path, file_name: str) -> Path:
    """`file_name` (`audio/<stem>.wav`) relative to `base_dir`, the preprocessed dir.

    A flat dir of the WAVs also works; when neither exists the relative path is returned, so
    the caller's "not found" message names where the clip was expected.
    """
    direct = base_dir / file_name
    if direct.is_file():
        return direct
    flat = base_dir / Path(file_name).name
    return flat if flat.is_file() else direct


def clip_base_dir(audio_dir: str | Path) -> Path:
    """The folder `file_name` columns are relative to, given the folder a user named.

    Our `file_name`s read `audio/<stem>.<ext>`, relative to a step's folder; the planning
    document's commands pass the step's `audio/` folder itself (`--input_dir .../raw/audio`).
    """
    audio_dir = Path(audio_dir)
    if audio_dir.name == "audio" and not (audio_dir / "audio").is_dir():
        return audio_dir.parent
    return audio_dir


def default_metadata_csv(audio_dir: str | Path) -> Path:
    """`<audio_dir>/metadata.csv`, or the step folder's when `audio_dir` is its `audio/` folder."""
    return clip_base_dir(audio_dir) / "metadata.csv"


def read_metadata(path: str | Path) -> list[dict[str, str]]:
    return list(iter_metadata(path))


def columns_for(rows: Iterable[dict[str, object]], extra_first: Iterable[str] = ()) -> list[str]:
    """Column order: file_name, transcription, then `extra_first`, then the rest in first-seen order."""
    columns = list(FIRST_COLUMNS)
    for name in extra_first:
        if name not in columns:
            columns.append(name)
    for row in rows:
        for name in row:
            if name not in columns:
                columns.append(name)
    return columns


def format_metadata(rows: list[dict[str, object]], columns: list[str] | None = None) -> str:
    columns = columns or columns_for(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def write_metadata(path: str | Path, rows: list[dict[str, object]], columns: list[str] | None = None) -> None:
    """Write rows atomically with file_name,transcription first; `None` becomes an empty cell."""
    atomic_write_text(path, format_metadata(rows, columns))


def read_synthesized(output_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a synthesized/metadata.csv (for write-back and the web demo)."""
    path = Path(output_dir) / "metadata.csv"
    try:
        return read_metadata(path)
    except MetadataError as exc:
        raise PipelineError(f"{exc}; run `tts-pipeline synthesize` first") from None
