"""The voice library: turn text into a trained model's speech (no stage, no source, no output folder).

What the `synthesize` stage, the try-it page (`webdemo`), evaluation and write-back share:
splitting a verse into chunks the model can read (`split_text`, `text_chunks`), the dataset's text
normalisation (`text_normalizer`), which model directory and revision (`resolve_model_dir`,
`model_revision`), the speaker (`resolve_speaker`), speech for the chunks (`render`) and the
audio file bytes (`encode`). Heavy imports (torch, transformers) stay inside `modeling`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import modeling
from .audio import encode_webm_opus, wav_bytes
from .errors import PipelineError
from .fsutil import sha256_file, sha256_json
from .text import normalize_text

if TYPE_CHECKING:  # pragma: no cover
    from .config import DatasetSection, SynthesisSection

log = logging.getLogger(__name__)

NONFINITE_AUDIO = "the model produced NaN/inf audio (a diverged or damaged checkpoint?)"
#: Files of a model directory that decide what it says (training state is left out).
_MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "pytorch_model*.bin",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "speakers.json",
)


@dataclass(frozen=True)
class VerseToVoice:
    """A text cell with no usable recording: what `synthesize` voices (and write-back adds)."""

    verse_id: str  # "MRK 1:9"
    cell_id: str  # metadata.id as written (may be a UUID)
    document: str  # the .codex file stem, e.g. "MRK"
    text: str  # HTML stripped, entities decoded
    stem: str  # output file stem, e.g. "MRK_001_009"


# --------------------------------------------------------------------------- text


_END = r"[.!?\u2026\u061f\u0964\u0965\u3002\uff01\uff1f]"
_CLOSE = r"[\"'\u201d\u2019)\]\u300d\u300f]"
#: Whitespace after a sentence end and up to two closing quotes/brackets (which stay with their
#: sentence: the separator itself is dropped), or right after a CJK full stop.
_SENTENCE = re.compile(
    rf"(?:(?<={_END})|(?<={_END}{_CLOSE})|(?<={_END}{_CLOSE}{_CLOSE}))\s+"
    rf"|(?<=[\u3002\uff01\uff1f])(?!{_CLOSE}|\s)"
)
_CLAUSE = re.compile(r"(?<=[,;:\u060c\u061b\u3001\uff0c\uff1b\uff1a\u2014\u2013])\s*|\s+(?=[\u2014\u2013])")


def _pieces(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [p.strip() for p in pattern.split(text) if p and p.strip()]


def _split_words(text: str, max_chars: int) -> list[str]:
    """Greedy word packing; a single word longer than max_chars is cut."""
    out: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.append(word[:max_chars])
            word = word[max_chars:]
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= max_chars:
            current = candidate
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    return out


def split_text(text: str, max_chars: int) -> list[str]:
    """Split `text` into chunks of at most `max_chars`: at sentence ends, then clauses, then words.

    Adjacent pieces are packed back together while they fit, so a verse of two short
    sentences stays one chunk and pauses appear only where a verse is really long.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    text = " ".join(text.split())
    if not text:
        return []
    if len(text) <= max_chars:
        return [text]
    units: list[tuple[str, bool]] = []  # (piece, starts a new sentence)
    for sentence in _pieces(text, _SENTENCE):
        first = True
        if len(sentence) <= max_chars:
            units.append((sentence, True))
            continue
        for clause in _pieces(sentence, _CLAUSE):
            parts = [clause] if len(clause) <= max_chars else _split_words(clause, max_chars)
            for part in parts:
                units.append((part, first))
                first = False
    chunks: list[str] = []
    for piece, _ in units:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    return chunks


def text_normalizer(dataset_cfg: DatasetSection | None) -> Callable[[str], str]:
    """The dataset stage's text normalisation, so the model reads text as it was trained on.

    Without a dataset section: NFC + lowercase, whitespace collapsed.
    """
    if dataset_cfg is not None:
        return lambda text: normalize_text(text, dataset_cfg)

    def fallback(text: str) -> str:
        return " ".join(unicodedata.normalize("NFC", text).lower().split())

    return fallback


def text_chunks(text: str, max_chars: int, normalize: Callable[[str], str]) -> list[str]:
    """The normalised chunks the model will read for `text` (split first, at the raw punctuation)."""
    chunks = []
    for piece in split_text(text, max_chars):
        normalized = normalize(piece).strip()
        if not normalized:
            continue
        chunks.extend(split_text(normalized, max_chars) if len(normalized) > max_chars else [normalized])
    return chunks


# --------------------------------------------------------------------------- model


def resolve_model_dir(model_dir: str | Path, checkpoint_dir: str | Path, which: str) -> Path:
    """The model directory for `synthesis.checkpoint` (final | latest | best | <step>)."""
    return Path(modeling.resolve_checkpoint(model_dir, checkpoint_dir, which))


def model_revision(model_dir: str | Path) -> str:
    """A content hash of the files that decide what the model says (weights, config, vocab, speakers)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"{model_dir}: not a model directory (no config.json); has training finished?")
    files: dict[str, str] = {}
    for pattern in _MODEL_FILE_PATTERNS:
        for path in sorted(model_dir.glob(pattern)):
            if path.is_file():
                files[path.name] = sha256_file(path)
    return sha256_json(files)[:16]


class LazyVoice:
    """Loads the model only when a verse is not in the cache (a fully cached run loads nothing)."""

    def __init__(self, model_dir: Path, loaded: modeling.LoadedVoice | None = None) -> None:
        self.model_dir = model_dir
        self._voice = loaded

    @property
    def speakers(self) -> dict[int, dict[str, Any]]:
        return self._voice.speakers if self._voice is not None else modeling.load_speakers(self.model_dir)

    def get(self) -> modeling.LoadedVoice:
        if self._voice is None:
            log.info("loading model %s", self.model_dir)
            self._voice = modeling.load_voice(self.model_dir)
        return self._voice


def resolve_speaker(
    speakers: dict[int, dict[str, Any]], speaker: str | int | None, model_dir: Path
) -> tuple[int, str]:
    """(id, name) for a speaker name or id; None = the speaker with the most hours."""
    probe = modeling.LoadedVoice(model=None, tokenizer=None, speakers=speakers, directory=model_dir)  # type: ignore[arg-type]
    sid = probe.speaker_id(speaker)
    name = str(speakers.get(sid, {}).get("name", f"speaker_{sid}"))
    return sid, name


def render(
    voice: modeling.LoadedVoice, chunks: list[str], speaker_id: int, settings: SynthesisSection
) -> np.ndarray:
    """Speech for the chunks, joined with `pause_s` of silence; seeded so output is repeatable."""
    voice.model.speaking_rate = settings.speaking_rate  # VitsModel reads it at every forward
    pause = np.zeros(int(round(settings.pause_s * voice.sampling_rate)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for chunk in chunks:
        wave = voice.synthesize(chunk, speaker_id, seed=settings.seed)
        if wave.size == 0:
            continue
        if parts:
            parts.append(pause)
        parts.append(np.asarray(wave, dtype=np.float32).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """The audio file bytes: WebM/Opus 48 kHz (what the recording app writes) or 16-bit WAV."""
    if fmt == "webm":
        return encode_webm_opus(samples, sample_rate)
    if fmt == "wav":
        return wav_bytes(samples, sample_rate)
    raise PipelineError(f"synthesis.format {fmt!r}: expected webm or wav")
