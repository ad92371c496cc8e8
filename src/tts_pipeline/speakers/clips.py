"""The speakers stage's input: the preprocessed clips of a metadata.csv and their audio."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import AudioError, decode_audio, read_wav
from ..errors import PipelineError
from ..metadata import MetadataError, iter_metadata, resolve_clip_path


@dataclass
class Clip:
    """One preprocessed clip: its metadata `file_name`, where the audio is, how long it is."""

    file_name: str
    path: Path
    duration_s: float
    text: str = ""  # the transcription (shown on the review page)


def load_clips(metadata_csv: Path, audio_dir: Path) -> list[Clip]:
    """Clips of a preprocessed metadata.csv, sorted by file_name so results never depend on row order."""
    import soundfile as sf

    try:
        rows = list(iter_metadata(metadata_csv))
    except MetadataError as exc:
        raise PipelineError(str(exc)) from None
    clips: dict[str, Clip] = {}
    for row in rows:
        name = row["file_name"]
        if name in clips:
            raise PipelineError(f"{metadata_csv}: file_name {name!r} appears twice")
        path = resolve_clip_path(audio_dir, name)
        if not path.is_file():
            raise PipelineError(
                f"{metadata_csv}: audio for {name!r} not found at {path} (re-run preprocess?)"
            )
        try:
            info = sf.info(str(path))
            duration = info.frames / info.samplerate
        except Exception:  # not a soundfile format: fall back to the metadata column
            duration = float(row.get("duration_s") or 0.0)
        clips[name] = Clip(name, path, float(duration), str(row.get("transcription") or ""))
    if not clips:
        rejected = Path(metadata_csv).with_name("rejected.csv")
        why = f"; preprocess kept no clip, the reasons are in {rejected}" if rejected.is_file() else ""
        raise PipelineError(f"{metadata_csv}: no clips to analyse{why}")
    return [clips[k] for k in sorted(clips)]


def load_samples(clip: Clip, sample_rate: int = 16000) -> tuple[np.ndarray, int]:
    """A clip's samples: WAV/FLAC at their own rate, anything else decoded at `sample_rate`."""
    try:
        if clip.path.suffix.lower() in (".wav", ".flac"):
            return read_wav(clip.path)
        return decode_audio(clip.path, sample_rate), sample_rate
    except (AudioError, RuntimeError, ValueError) as exc:
        raise PipelineError(f"{clip.path}: cannot read audio ({exc}); re-run preprocess") from None
