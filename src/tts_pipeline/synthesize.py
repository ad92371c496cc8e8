"""synthesize: voice the verses nobody recorded, with the trained model.

Reads the same Codex source as `collect` (local folder or GitLab), lists the text cells that
have no usable human recording (the collect rules from `codex.py`), and writes

    <output_dir>/audio/<BOOK_CCC_VVV>.webm   WebM/Opus 48 kHz mono (or .wav, `synthesis.format`)
    <output_dir>/metadata.csv                file_name,transcription,verse_id,speaker,duration_s,
                                             model_revision,document,cell_id,speaker_id,chunks
    <output_dir>/synthesize_report.json      speaker, verses not voiced and why, unreadable documents

through `fsutil.atomic_directory`, so a crash never leaves a half output. Each verse is cached
under `<paths.cache>/synthesize/` by (model revision, normalised text chunks, speaker, the
synthesis settings), so when 10 verses change only those 10 are synthesized again. Long verses
are split at sentence, then clause punctuation to at most `synthesis.max_chars` characters and
joined with `synthesis.pause_s` of silence: the model never sees text longer than it learned.

`--write-back` hands the takes back to the Codex project (see `writeback.py`).
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import shutil
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import codex
from .audio import encode_webm_opus
from .cache import ContentCache
from .errors import PipelineError
from .fsutil import (
    atomic_directory,
    claim_output_dir,
    sha256_file,
    sha256_json,
    write_json,
)
from .metadata import write_metadata

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, DatasetSection, SynthesisSection
    from .modeling import LoadedVoice

log = logging.getLogger(__name__)

#: Bump when the cached audio would differ for the same inputs (changes the cache keys).
CACHE_VERSION = 1
METADATA_COLUMNS = [
    "file_name",
    "transcription",
    "verse_id",
    "speaker",
    "duration_s",
    "model_revision",
    "document",
    "cell_id",
    "speaker_id",
    "chunks",
]
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


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class VerseToVoice:
    """A text cell with no usable recording: what this stage voices."""

    verse_id: str  # "MRK 1:9"
    cell_id: str  # metadata.id as written (may be a UUID)
    document: str  # the .codex file stem, e.g. "MRK"
    text: str  # HTML stripped, entities decoded
    stem: str  # output file stem, e.g. "MRK_001_009"


@dataclass
class SynthesizedVerse:
    """One voiced verse: its audio file (relative to the output dir) and what made it."""

    verse: VerseToVoice
    file_name: str  # "audio/MRK_001_009.webm"
    speaker: str
    speaker_id: int
    duration_s: float
    model_revision: str
    chunks: list[str]
    cached: bool = False

    def row(self) -> dict[str, object]:
        return {
            "file_name": self.file_name,
            "transcription": self.verse.text,
            "verse_id": self.verse.verse_id,
            "speaker": self.speaker,
            "duration_s": f"{self.duration_s:.3f}",
            "model_revision": self.model_revision,
            "document": self.verse.document,
            "cell_id": self.verse.cell_id,
            "speaker_id": self.speaker_id,
            "chunks": len(self.chunks),
        }


@dataclass
class SynthesisSettings:
    """The settings that change the audio (part of every cache key)."""

    max_chars: int = 200
    pause_s: float = 0.3
    format: str = "webm"
    seed: int = 0
    speaking_rate: float = 1.0

    @classmethod
    def from_config(cls, section: SynthesisSection) -> SynthesisSettings:
        return cls(
            max_chars=int(section.max_chars),
            pause_s=float(section.pause_s),
            format=str(section.format),
            seed=int(getattr(section, "seed", 0)),
            speaking_rate=float(getattr(section, "speaking_rate", 1.0)),
        )


@dataclass
class SynthesisReport:
    """What a run did: the voiced verses, the ones that could not be voiced, cache hits."""

    verses: list[SynthesizedVerse] = field(default_factory=list)
    failed: list[tuple[VerseToVoice, str]] = field(default_factory=list)
    cache_hits: int = 0
    model_revision: str = ""


# --------------------------------------------------------------------------- which verses


def missing_verses(documents: Iterable[tuple[str, bytes | None]]) -> tuple[list[VerseToVoice], list[str]]:
    """The text cells without a usable recording, in document order, and the documents skipped.

    `documents` is (path, bytes) of each `.codex` file. The rules are collect's (`codex.py`);
    a take this pipeline wrote back (`metadata.synthetic`) is not a recording, so its verse
    stays listed and re-runs keep producing (and write-back deduplicating) it. A broken
    document is reported and skipped (its verses are not voiced), the others still are.
    """
    cells: list[codex.Cell] = []
    problems: list[str] = []
    for path, data in documents:
        if data is None:
            problems.append(f"{path}: cannot read the file")
            continue
        try:
            cells.extend(c for c in codex.parse_codex_bytes(data, path) if codex.needs_recording(c))
        except codex.CodexError as exc:
            log.error("%s", exc)
            problems.append(str(exc))
    stems = codex.cell_file_stems(cells)
    verses = [
        VerseToVoice(verse_id=c.verse_id, cell_id=c.cell_id, document=c.document, text=c.text, stem=stem)
        for c, stem in zip(cells, stems, strict=True)
    ]
    return verses, problems


def local_documents(project_dir: str | Path) -> list[tuple[str, bytes | None]]:
    """(path, bytes) of a local project's `.codex` documents; None for one that cannot be read."""
    out: list[tuple[str, bytes | None]] = []
    for path in codex.iter_project_documents(project_dir):
        try:
            out.append((str(path), path.read_bytes()))
        except OSError as exc:  # named and skipped by missing_verses, like a broken document
            log.error("%s: cannot read (%s); its verses are skipped", path, exc.strerror)
            out.append((str(path), None))
    return out


def source_documents(cfg: Config) -> list[tuple[str, bytes | None]]:
    """(path, bytes) of every `.codex` document of the configured source (local or GitLab)."""
    if cfg.require_source("synthesize").type == "local":
        return local_documents(cfg.source.path or ".")
    from . import writeback

    return writeback.gitlab_documents(cfg)


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

    Falls back to NFC + lowercase when `tts_pipeline.text` is not available.
    """
    try:
        from .text import normalize_text  # type: ignore[attr-defined]
    except ImportError:
        normalize_text = None
    if normalize_text is not None and dataset_cfg is not None:
        return lambda text: normalize_text(text, dataset_cfg)

    def fallback(text: str) -> str:
        form = getattr(dataset_cfg, "unicode_normalization", "NFC") if dataset_cfg else "NFC"
        if form != "none":
            text = unicodedata.normalize(form, text)
        if dataset_cfg is None or dataset_cfg.lowercase:
            text = text.lower()
        return " ".join(text.split())

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
    try:
        from .modeling import resolve_checkpoint
    except ImportError:  # pragma: no cover - older modeling.py
        resolve_checkpoint = None
    if resolve_checkpoint is not None:
        return Path(resolve_checkpoint(model_dir, checkpoint_dir, which))
    if str(which) != "final":  # pragma: no cover
        raise PipelineError(f"synthesis.checkpoint {which!r}: only 'final' is supported by this version")
    return Path(model_dir)


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

    def __init__(self, model_dir: Path, loaded: LoadedVoice | None = None) -> None:
        self.model_dir = model_dir
        self._voice = loaded

    @property
    def speakers(self) -> dict[int, dict[str, Any]]:
        from .modeling import load_speakers

        return self._voice.speakers if self._voice is not None else load_speakers(self.model_dir)

    def get(self) -> LoadedVoice:
        if self._voice is None:
            from .modeling import load_voice

            log.info("loading model %s", self.model_dir)
            self._voice = load_voice(self.model_dir)
        return self._voice


def resolve_speaker(
    speakers: dict[int, dict[str, Any]], speaker: str | int | None, model_dir: Path
) -> tuple[int, str]:
    """(id, name) for a speaker name or id; None = the speaker with the most hours."""
    from .modeling import LoadedVoice

    probe = LoadedVoice(model=None, tokenizer=None, speakers=speakers, directory=model_dir)  # type: ignore[arg-type]
    sid = probe.speaker_id(speaker)
    name = str(speakers.get(sid, {}).get("name", f"speaker_{sid}"))
    return sid, name


def render(voice: LoadedVoice, chunks: list[str], speaker_id: int, settings: SynthesisSettings) -> np.ndarray:
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
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        return buffer.getvalue()
    raise PipelineError(f"synthesis.format {fmt!r}: expected webm or wav")


# --------------------------------------------------------------------------- the stage


def cache_key(revision: str, chunks: list[str], speaker_id: int, settings: SynthesisSettings) -> str:
    """Everything that changes one verse's audio (the raw text only through its chunks)."""
    return sha256_json(
        {
            "version": CACHE_VERSION,
            "model": revision,
            "chunks": chunks,
            "speaker_id": speaker_id,
            "pause_s": settings.pause_s,
            "format": settings.format,
            "seed": settings.seed,
            "speaking_rate": settings.speaking_rate,
        }
    )


#: What a synthesized folder of an earlier version (before the output marker) always holds.
SYNTHESIZE_LEGACY = ("synthesize_report.json", "metadata.csv")


def synthesize_verses(
    verses: list[VerseToVoice],
    model_dir: str | Path,
    output_dir: str | Path,
    settings: SynthesisSettings,
    cache_dir: str | Path | None = None,
    speaker: str | int | None = None,
    normalize: Callable[[str], str] | None = None,
    progress: bool = True,
    loaded: LoadedVoice | None = None,
    problems: Iterable[str] = (),
) -> SynthesisReport:
    """Voice `verses` into `output_dir` (replaced atomically): audio/ + metadata.csv.

    Verses whose text yields nothing the model can say are reported in `failed`, not written.
    `loaded` is the already loaded model of `model_dir` (else it is loaded on the first cache miss).
    `problems` (unreadable documents) go into `synthesize_report.json` next to metadata.csv.
    """
    from tqdm import tqdm

    model_dir = Path(model_dir)
    output_dir = Path(output_dir)
    normalize = normalize or text_normalizer(None)
    revision = model_revision(model_dir)
    voice = LazyVoice(model_dir, loaded)
    speaker_id, speaker_name = resolve_speaker(voice.speakers, speaker, model_dir)
    cache = Path(cache_dir) if cache_dir is not None else None
    report = SynthesisReport(model_revision=revision)
    log.info(
        "%d verse(s) to voice with model %s (revision %s), speaker %s (id %d)",
        len(verses), model_dir, revision, speaker_name, speaker_id,
    )  # fmt: skip
    with atomic_directory(output_dir, "synthesize", SYNTHESIZE_LEGACY) as tmp:
        audio_dir = tmp / "audio"
        audio_dir.mkdir()
        for verse in tqdm(verses, desc="synthesize", unit="verse", disable=not progress):
            chunks = text_chunks(verse.text, settings.max_chars, normalize)
            if not chunks:
                report.failed.append((verse, "the normalised text is empty"))
                continue
            key = cache_key(revision, chunks, speaker_id, settings)
            file_name = f"audio/{verse.stem}.{settings.format}"
            hit = _from_cache(cache, key, settings.format, tmp / file_name)
            if hit is not None:
                duration = hit
                report.cache_hits += 1
            else:
                model = voice.get()
                samples = render(model, chunks, speaker_id, settings)
                if samples.size == 0:
                    report.failed.append((verse, "no character of the text is in the model's vocabulary"))
                    continue
                if not np.isfinite(samples).all():  # encoded, NaN becomes full-scale noise
                    report.failed.append((verse, NONFINITE_AUDIO))
                    continue
                duration = round(samples.size / model.sampling_rate, 3)
                data = encode(samples, model.sampling_rate, settings.format)
                (tmp / file_name).write_bytes(data)
                _to_cache(cache, key, settings.format, data, duration)
            report.verses.append(
                SynthesizedVerse(
                    verse=verse,
                    file_name=file_name,
                    speaker=speaker_name,
                    speaker_id=speaker_id,
                    duration_s=duration,
                    model_revision=revision,
                    chunks=chunks,
                    cached=hit is not None,
                )
            )
        write_metadata(tmp / "metadata.csv", [v.row() for v in report.verses], METADATA_COLUMNS)
        write_json(
            tmp / "synthesize_report.json",
            {
                "model_revision": revision,
                "speaker": {"id": speaker_id, "name": speaker_name},
                "voiced": len(report.verses),
                "not_voiced": [
                    {"verse_id": v.verse_id, "document": v.document, "reason": reason}
                    for v, reason in report.failed
                ],
                "unreadable_documents": list(problems),
            },
        )
    for verse, reason in report.failed:
        log.warning("%s (%s): not voiced: %s", verse.verse_id, verse.document, reason)
    return report


def _from_cache(cache: Path | None, key: str, fmt: str, target: Path) -> float | None:
    """Copy a cached verse to `target`; its duration, or None on a miss (or a damaged entry)."""
    hit = ContentCache(cache, f".{fmt}").get(key) if cache is not None else None
    if hit is None or hit.data is None:
        return None
    try:
        duration = float(hit.meta["duration_s"])
    except (ValueError, KeyError, TypeError):
        return None
    shutil.copyfile(hit.data, target)
    return duration


def _to_cache(cache: Path | None, key: str, fmt: str, data: bytes, duration: float) -> None:
    if cache is not None:  # audio first: an entry counts only once its .json exists
        ContentCache(cache, f".{fmt}").put(key, {"duration_s": duration}, data)


def read_synthesized(output_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a synthesized/metadata.csv (for write-back and the web demo)."""
    from .metadata import MetadataError, read_metadata

    path = Path(output_dir) / "metadata.csv"
    try:
        return read_metadata(path)
    except MetadataError as exc:
        raise PipelineError(f"{exc}; run `tts-pipeline synthesize` first") from None


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", default=None, help="trained model (default: paths.model)")
    parser.add_argument(
        "--checkpoint_dir", default=None, help="training checkpoints (default: paths.checkpoints)"
    )
    parser.add_argument("--output_dir", default=None, help="where to write (default: paths.synthesized)")
    parser.add_argument("--speaker", default=None, help="speaker name or id (default: synthesis.speaker)")
    parser.add_argument(
        "--write-back",
        dest="write_back",
        action="store_true",
        help="add the synthesized takes to the Codex project (local) or open a merge request (GitLab)",
    )
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="list the verses to voice and the changes write-back would make; write nothing",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    model_root = Path(getattr(args, "model_dir", None) or cfg.paths.model)
    checkpoint_dir = Path(getattr(args, "checkpoint_dir", None) or cfg.paths.checkpoints)
    output_dir = Path(getattr(args, "output_dir", None) or cfg.paths.synthesized)
    speaker = getattr(args, "speaker", None) or cfg.synthesis.speaker
    settings = SynthesisSettings.from_config(cfg.synthesis)
    if not getattr(args, "dry_run", False):
        claim_output_dir(output_dir, "synthesize", SYNTHESIZE_LEGACY)  # before loading the model
    model_dir = resolve_model_dir(model_root, checkpoint_dir, cfg.synthesis.checkpoint)
    normalize = text_normalizer(cfg.dataset)

    verses, problems = missing_verses(source_documents(cfg))
    log.info("%d text cell(s) without a usable recording", len(verses))
    if getattr(args, "dry_run", False):
        return _dry_run(cfg, verses, model_dir, speaker, settings, normalize, bool(args.write_back))

    report = synthesize_verses(
        verses, model_dir, output_dir, settings,
        cache_dir=Path(cfg.paths.cache) / "synthesize", speaker=speaker, normalize=normalize,
        problems=problems,
    )  # fmt: skip
    print(
        f"synthesize: {len(report.verses)} verse(s) voiced into {output_dir} "
        f"({report.cache_hits} from cache, {len(report.failed)} not voiced, "
        f"{len(problems)} document(s) unreadable), model revision {report.model_revision}"
    )
    if getattr(args, "write_back", False):
        _write_back_approved(cfg, output_dir)
    return 0  # like collect: unreadable documents are reported (log + synthesize_report.json), not fatal


def _write_back_approved(cfg: Config, output_dir: Path) -> None:
    """Write back the synthesized takes; only the approved ones when `synthesis.require_approval`."""
    from . import approvals, writeback

    rows = read_synthesized(output_dir)
    if approvals.required(cfg):
        approvals_file = approvals.approvals_path(output_dir)
        rows, waiting, rejected = approvals.split(rows, approvals_file)
        print(
            f"write-back: {len(rows)} approved take(s); {waiting} waiting for review, {rejected} rejected "
            f"(synthesis.require_approval; review them with `tts-pipeline demo --config {cfg.config_path}`, "
            f"verdicts in {approvals_file})"
        )
        if not rows:
            return
    takes = [writeback.SyntheticTake.from_row(row, output_dir) for row in rows]
    writeback.write_back_takes(cfg, takes, dry_run=False)


def _dry_run(
    cfg: Config,
    verses: list[VerseToVoice],
    model_dir: Path,
    speaker: str | None,
    settings: SynthesisSettings,
    normalize: Callable[[str], str],
    write_back: bool,
) -> int:
    """Print what a real run would voice (and add to the project); touch nothing."""
    from .modeling import load_speakers

    revision = model_revision(model_dir)
    sid, name = resolve_speaker(load_speakers(model_dir), speaker, model_dir)
    print(f"dry run: model {model_dir} (revision {revision}), speaker {name} (id {sid})")
    for verse in verses:
        chunks = text_chunks(verse.text, settings.max_chars, normalize)
        print(f"  would voice {verse.verse_id:<12} {verse.document:<6} {len(chunks)} chunk(s): {verse.text}")
    if write_back:
        from . import writeback

        takes = [writeback.SyntheticTake.planned(v, revision, name, settings.format) for v in verses]
        from . import approvals

        if approvals.required(cfg):
            path = approvals.approvals_path(cfg.paths.synthesized)
            verdicts = approvals.load(path)
            takes = [
                t
                for t in takes
                if verdicts.get(approvals.take_key(t.verse_id, t.model_revision), {}).get("verdict")
                == "approved"
            ]
            print(
                f"dry run: write-back needs approval; {len(takes)} of {len(verses)} take(s) approved in {path}"
            )
        writeback.write_back_takes(cfg, takes, dry_run=True)
    return 0
