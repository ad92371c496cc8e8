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
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from . import approvals, modeling, writeback
from .cache import ContentCache
from .fsutil import (
    atomic_directory,
    claim_output_dir,
    sha256_json,
    write_json,
)
from .metadata import read_synthesized, write_metadata
from .verses import missing_verses, source_documents
from .voice import (
    NONFINITE_AUDIO,
    LazyVoice,
    VerseToVoice,
    encode,
    model_revision,
    render,
    resolve_model_dir,
    resolve_speaker,
    text_chunks,
    text_normalizer,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, SynthesisSection

log = logging.getLogger(__name__)

#: Bump when the cached audio would differ for the same inputs (changes the cache keys).
CACHE_VERSION = 2  # 2: WAV takes are written by audio.wav_bytes (stdlib, scale 32767)
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


# --------------------------------------------------------------------------- records


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
class SynthesisReport:
    """What a run did: the voiced verses, the ones that could not be voiced, cache hits."""

    verses: list[SynthesizedVerse] = field(default_factory=list)
    failed: list[tuple[VerseToVoice, str]] = field(default_factory=list)
    cache_hits: int = 0
    model_revision: str = ""


# --------------------------------------------------------------------------- the stage


def cache_key(revision: str, chunks: list[str], speaker_id: int, settings: SynthesisSection) -> str:
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
    settings: SynthesisSection,
    cache_dir: str | Path | None = None,
    speaker: str | int | None = None,
    normalize: Callable[[str], str] | None = None,
    progress: bool = True,
    loaded: modeling.LoadedVoice | None = None,
    problems: Iterable[str] = (),
) -> SynthesisReport:
    """Voice `verses` into `output_dir` (replaced atomically): audio/ + metadata.csv.

    Verses whose text yields nothing the model can say are reported in `failed`, not written.
    `loaded` is the already loaded model of `model_dir` (else it is loaded on the first cache miss).
    `problems` (unreadable documents) go into `synthesize_report.json` next to metadata.csv.
    """
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
        _write_report(tmp, report, speaker_id, speaker_name, problems)
    for verse, reason in report.failed:
        log.warning("%s (%s): not voiced: %s", verse.verse_id, verse.document, reason)
    return report


def _write_report(
    folder: Path, report: SynthesisReport, speaker_id: int, speaker_name: str, problems: Iterable[str]
) -> None:
    """metadata.csv (the voiced verses) and synthesize_report.json (what was not voiced and why)."""
    write_metadata(folder / "metadata.csv", [v.row() for v in report.verses], METADATA_COLUMNS)
    write_json(
        folder / "synthesize_report.json",
        {
            "model_revision": report.model_revision,
            "speaker": {"id": speaker_id, "name": speaker_name},
            "voiced": len(report.verses),
            "not_voiced": [
                {"verse_id": v.verse_id, "document": v.document, "reason": reason}
                for v, reason in report.failed
            ],
            "unreadable_documents": list(problems),
        },
    )


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
    model_root = cfg.flag_or_path(args, "model_dir", "model")
    checkpoint_dir = cfg.flag_or_path(args, "checkpoint_dir", "checkpoints")
    output_dir = cfg.flag_or_path(args, "output_dir", "synthesized")
    speaker = getattr(args, "speaker", None) or cfg.synthesis.speaker
    settings = cfg.synthesis
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
    settings: SynthesisSection,
    normalize: Callable[[str], str],
    write_back: bool,
) -> int:
    """Print what a real run would voice (and add to the project); touch nothing."""
    revision = model_revision(model_dir)
    sid, name = resolve_speaker(modeling.load_speakers(model_dir), speaker, model_dir)
    print(f"dry run: model {model_dir} (revision {revision}), speaker {name} (id {sid})")
    for verse in verses:
        chunks = text_chunks(verse.text, settings.max_chars, normalize)
        print(f"  would voice {verse.verse_id:<12} {verse.document:<6} {len(chunks)} chunk(s): {verse.text}")
    if write_back:
        takes = [writeback.SyntheticTake.planned(v, revision, name, settings.format) for v in verses]
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
