"""preprocess: raw takes -> 16 kHz mono 16-bit WAV at -20 LUFS, trimmed, measured, filtered.

Reads `raw/metadata.csv` + the raw audio (any format PyAV decodes), writes
`preprocessed/audio/<stem>.wav`, a new `metadata.csv` with quality columns, `rejected.csv`
(`file_name,reason,detail`) and a metric JSON. One clip = one small pipeline of single-job steps
(decode -> measure -> resample -> trim -> loudness -> normalise -> write), run in a process pool
over a lazily read metadata file, so memory stays flat in corpus size.

Why a per-file cache: adding 10 clips to 5,000 must not redo 5,000. Each clip's result (WAV +
measures, or the decode error) is stored under `<cache>/preprocess/` keyed by the input's
SHA-256 + every setting that changes the result + a hash of the processing code. The filters (duration,
clipping, SNR, speech rate) are not in the key: they are applied to the cached measures on every
run, so tuning a filter never re-decodes anything. Output WAVs are hard links to cache entries
(copies where the file system refuses), so a re-run costs a hash and a link per clip. The cache
can be deleted at any time (`.cache/tts-pipeline/preprocess`); it is never a DVC output.

Columns: the raw columns are carried over, except `duration_s`, which becomes the length of the
written (trimmed) clip; `trimmed_s` is the silence removed; `peak_db` and `clipping_ratio` are
measured on the decoded input at its own rate (before resampling smears them; a lossy codec's
ringing makes the ratio an underestimate); `loudness_before_lufs` is the trimmed clip's before
the gain; `snr_db` is estimated from 10 ms frame levels; `chars_per_second` counts letters and
digits per second of the written clip.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import importlib
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import audio_quality as aq
from .audio import AudioError, AudioTooLongError, decode_audio_native, is_lfs_pointer, write_wav
from .cache import ContentCache
from .clip_processing import (
    ClipMeasures,
    Filters,
    ProcessParams,
    Rejection,
    check_declared_length,
    check_filters,
    process_audio,
)
from .config import Config
from .errors import PipelineError
from .fsutil import (
    atomic_directory,
    claim_output_dir,
    overlapping_input,
    sha256_file,
    sha256_json,
    write_json,
)
from .metadata import FIRST_COLUMNS, MetadataError, clip_base_dir, iter_metadata
from .process_pool import default_workers, make_pool, ordered_imap

log = logging.getLogger(__name__)

#: Layout of a cache entry's JSON.
CACHE_FORMAT = 1
#: Modules whose code decides what a clip becomes: their source is part of the cache key, so a
#: code change (which makes DVC re-run the stage) never reuses a result of the old code.
CODE_MODULES = ("preprocess", "clip_processing", "audio_quality", "audio")
#: Decoding stops (clip rejected as too_long) past this length, so a stray hour-long file
#: cannot take gigabytes of memory in a worker. Part of the cache key.
MAX_DECODE_S = 600.0

QUALITY_COLUMNS = (
    "duration_s",
    "trimmed_s",
    "peak_db",
    "loudness_before_lufs",
    "clipping_ratio",
    "snr_db",
    "chars_per_second",
)
#: Every rejection reason, so the metric file has stable keys for `dvc metrics diff`.
REASONS = (
    "missing",
    "bad_path",
    "duplicate",
    "empty",
    "lfs_pointer",
    "corrupt",
    "truncated",
    "too_long",
    "too_short",
    "silent",
    "clipped",
    "low_snr",
    "empty_transcription",
    "speech_rate_low",
    "speech_rate_high",
    "speech_rate_outlier",
    "unreadable",
    "error",
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Context:
    """What every worker needs besides the row (small, pickled once per task chunk)."""

    out_audio_dir: Path
    cache_dir: Path
    params: ProcessParams
    filters: Filters
    code: str  # code_fingerprint(), computed once in the main process


@dataclass
class ClipTask:
    index: int
    row: dict[str, str]
    stem: str
    source: Path | None
    problem: Rejection | None = None


@dataclass
class ClipOutcome:
    """One clip's fate, sent back from a worker; `row` is the output metadata row when kept."""

    index: int
    file_name: str
    row: dict[str, Any] | None = None
    rejection: Rejection | None = None
    decoded: bool = False
    cache_hit: bool = False
    duration_s: float = 0.0
    trimmed_s: float = 0.0


@dataclass
class PreprocessSummary:
    total: int = 0
    kept: int = 0
    seconds_kept: float = 0.0
    seconds_trimmed: float = 0.0
    rejected: Counter = field(default_factory=Counter)
    decoded: int = 0
    cache_hits: int = 0
    elapsed_s: float = 0.0
    output_dir: str = ""

    def add(self, outcome: ClipOutcome) -> None:
        self.total += 1
        self.decoded += outcome.decoded
        self.cache_hits += outcome.cache_hit
        if outcome.rejection is None:
            self.kept += 1
            self.seconds_kept += outcome.duration_s
            self.seconds_trimmed += outcome.trimmed_s
        else:
            self.rejected[outcome.rejection.reason] += 1

    def to_metrics(self) -> dict[str, Any]:
        """Deterministic numbers only (no timings, no cache counts) for `dvc metrics`."""
        return {
            "clips_total": self.total,
            "clips_kept": self.kept,
            "clips_rejected": self.total - self.kept,
            "hours_kept": round(self.seconds_kept / 3600.0, 4),
            "seconds_trimmed": round(self.seconds_trimmed, 2),
            "rejected_by_reason": {reason: self.rejected.get(reason, 0) for reason in REASONS},
        }

    def format(self) -> str:
        lines = [
            f"preprocess: {self.total} clips in, {self.kept} kept "
            f"({self.seconds_kept / 3600.0:.3f} h, {self.seconds_kept:.1f} s), "
            f"{self.total - self.kept} rejected",
            f"  {self.decoded} decoded, {self.cache_hits} from cache, "
            f"{self.seconds_trimmed:.1f} s of silence trimmed, {self.elapsed_s:.1f} s",
        ]
        for reason, count in sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  rejected {reason}: {count}")
        if self.output_dir:
            lines.append(f"  output: {self.output_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- one clip (cache and files)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the processing code and the decoder/resampler versions that shape the output."""
    import av
    import soxr

    sources = {}
    for name in CODE_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        sources[name] = sha256_file(module.__file__)
    return sha256_json({"sources": sources, "av": av.__version__, "soxr": soxr.__version__})


def cache_key(content_sha256: str, params: ProcessParams, code: str) -> str:
    return sha256_json(
        {
            "format": CACHE_FORMAT,
            "code": code,
            "max_decode_s": MAX_DECODE_S,
            "input": content_sha256,
            "params": dataclasses.asdict(params),
        }
    )


def _read_cache(cache_dir: Path, key: str) -> dict[str, Any] | None:
    hit = ContentCache(cache_dir, ".wav").get(key)
    if hit is None or hit.meta.get("format") != CACHE_FORMAT or (hit.meta.get("audio") and hit.data is None):
        return None
    return hit.meta


def _write_cache(
    cache_dir: Path, key: str, audio: np.ndarray | None, entry: dict[str, Any], rate: int
) -> None:
    """WAV first, then the JSON that marks the entry complete (`cache.ContentCache`)."""
    write = None if audio is None else (lambda path: write_wav(path, audio, rate))
    ContentCache(cache_dir, ".wav").put(key, entry, write=write)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _strip_path(message: str, path: Path) -> str:
    """Cached details must not name a file: the same bytes may come back under another name."""
    prefix = f"{path}: "
    message = message[len(prefix) :] if message.startswith(prefix) else message
    return message.replace(f": '{path}'", "").replace(str(path), "the file")


def _fmt(value: float, digits: int) -> float:
    return round(float(value), digits)


def process_clip(ctx: Context, task: ClipTask) -> ClipOutcome:
    """Everything for one metadata row; never raises for a bad clip (it comes back rejected)."""
    row = task.row
    outcome = ClipOutcome(index=task.index, file_name=row["file_name"])
    if task.problem is not None:
        outcome.rejection = task.problem
        return outcome
    source = task.source
    assert source is not None
    try:
        size = source.stat().st_size
    except OSError:
        outcome.rejection = Rejection(
            "missing", "file not found in the input folder"
        )  # no local path in outputs
        return outcome
    if size == 0:
        outcome.rejection = Rejection("empty", "empty file (0 bytes)")
        return outcome
    try:
        if is_lfs_pointer(source):
            outcome.rejection = Rejection("lfs_pointer", "a Git LFS pointer, not audio: run `git lfs pull`")
            return outcome
        content_hash = sha256_file(source)
    except OSError as exc:  # permissions, a file vanishing mid-run
        outcome.rejection = Rejection("unreadable", f"cannot read: {_strip_path(str(exc), source)}")
        return outcome

    key = cache_key(content_hash, ctx.params, ctx.code)
    entry = _read_cache(ctx.cache_dir, key)
    outcome.cache_hit = entry is not None
    if entry is None:
        entry = _compute_entry(ctx, key, source)
        outcome.decoded = True

    if entry.get("error"):
        outcome.rejection = Rejection(**entry["error"])
        return outcome
    measures = ClipMeasures(**entry["measures"])
    transcription = row.get("transcription") or ""
    rejection = check_declared_length(measures, row.get("duration_s")) or check_filters(
        measures, transcription, ctx.filters
    )
    if rejection is not None:
        outcome.rejection = rejection
        return outcome

    out_name = f"{task.stem}.wav"
    _link_or_copy(ContentCache(ctx.cache_dir, ".wav").paths(key)[0], ctx.out_audio_dir / out_name)
    chars = aq.count_speech_chars(transcription)
    out_row: dict[str, Any] = dict(row)
    out_row.update(
        file_name=f"audio/{out_name}",
        duration_s=_fmt(measures.duration_s, 3),
        trimmed_s=_fmt(measures.trimmed_s, 3),
        peak_db=_fmt(measures.peak_db, 2),
        loudness_before_lufs=_fmt(measures.loudness_before_lufs, 2),
        clipping_ratio=_fmt(measures.clipping_ratio, 6),
        snr_db=_fmt(measures.snr_db, 1),
        chars_per_second=_fmt(chars / measures.duration_s, 2),
    )
    outcome.row = out_row
    outcome.duration_s = measures.duration_s
    outcome.trimmed_s = measures.trimmed_s
    return outcome


def _compute_entry(ctx: Context, key: str, source: Path) -> dict[str, Any]:
    """Decode + process one file and store the result (or its decode error) in the cache."""
    entry: dict[str, Any] = {"format": CACHE_FORMAT, "audio": False, "measures": None, "error": None}
    audio = None
    try:
        samples, rate = decode_audio_native(source, max_seconds=MAX_DECODE_S)
        if not np.isfinite(samples).all():  # a float WAV/FLAC can hold NaN/inf: nothing to measure
            raise AudioError("contains NaN or infinite samples")
    except AudioTooLongError as exc:
        entry["error"] = {"reason": "too_long", "detail": _strip_path(str(exc), source)}
    except AudioError as exc:
        entry["error"] = {"reason": "corrupt", "detail": _strip_path(str(exc), source)}
    else:
        try:
            audio, measures = process_audio(samples, rate, ctx.params)
        except Exception as exc:  # a bug or a freak input: reject this clip, not the corpus
            log.warning("%s: processing failed", source, exc_info=True)
            entry["error"] = {"reason": "error", "detail": f"processing failed: {type(exc).__name__}: {exc}"}
            return entry  # not cached: it may be transient (memory) or fixed in the code
        entry["measures"] = dataclasses.asdict(measures)
        entry["audio"] = audio is not None
    _write_cache(ctx.cache_dir, key, audio, entry, ctx.params.sample_rate)
    return entry


# --------------------------------------------------------------------------- the corpus


#: Fewer kept clips than this: no corpus statistics, only the absolute speech-rate bounds.
MIN_CLIPS_FOR_RATE_STATS = 10
#: Floor of the robust spread of log speech rates (about +-16 %), so a corpus of very even
#: readers (or a tiny one) does not turn ordinary variation into "outliers".
MIN_LOG_RATE_SIGMA = 0.15


def speech_rate_bounds(rates: list[float], sigmas: float) -> tuple[float, float, float] | None:
    """(low, high, median) chars/s beyond which a clip's rate is an outlier for this corpus.

    Robust statistics on log rates (rates are ratios: 2x too fast and 2x too slow are equally
    suspicious): median +- `sigmas` x 1.4826 x MAD. Reading speed differs by language and
    script, so a corpus-relative bound catches transcripts that belong to another verse far
    better than the absolute min/max_chars_per_second can. None for too few clips.
    """
    if len(rates) < MIN_CLIPS_FOR_RATE_STATS:
        return None
    logs = np.log(np.asarray(rates, dtype=np.float64))
    median = float(np.median(logs))
    sigma = max(1.4826 * float(np.median(np.abs(logs - median))), MIN_LOG_RATE_SIGMA)
    return math.exp(median - sigmas * sigma), math.exp(median + sigmas * sigma), math.exp(median)


def _drop_rate_outliers(
    folder: Path,
    columns: list[str],
    rejected: csv.DictWriter,
    bounds: tuple[float, float, float],
    raw_names: dict[str, str],
) -> list[tuple[float, float]]:
    """Second pass over the written metadata.csv (still in the temp dir): move the clips whose
    speech rate is outside `bounds` to rejected.csv. Returns (duration_s, trimmed_s) of each."""
    low, high, median = bounds
    source = folder / "metadata.csv"
    kept = folder / "metadata.csv.part"
    dropped: list[tuple[float, float]] = []
    with (
        open(source, newline="", encoding="utf-8") as handle,
        open(kept, "w", newline="", encoding="utf-8") as out,
    ):
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in csv.DictReader(handle):
            rate = float(row["chars_per_second"])
            if low <= rate <= high:
                writer.writerow(row)
                continue
            (folder / row["file_name"]).unlink()
            dropped.append((float(row["duration_s"]), float(row["trimmed_s"])))
            rejected.writerow(
                {
                    "file_name": raw_names[row["file_name"]],
                    "reason": "speech_rate_outlier",
                    "detail": f"{rate:.1f} chars/s outside this corpus' {low:.1f}-{high:.1f} "
                    f"(median {median:.1f}): transcript of another verse?",
                }
            )
    os.replace(kept, source)
    return dropped


def _read_header(metadata_path: Path) -> list[str]:
    with open(metadata_path, newline="", encoding="utf-8-sig") as handle:  # as iter_metadata reads it
        return next(csv.reader(handle), [])


def output_columns(input_header: list[str]) -> list[str]:
    """file_name, transcription, the raw columns in their order, then the quality columns."""
    columns = list(FIRST_COLUMNS)
    columns += [c for c in input_header if c not in columns]
    columns += [c for c in QUALITY_COLUMNS if c not in columns]
    return columns


def _tasks(metadata_path: Path, base_dir: Path) -> Iterator[ClipTask]:
    """Rows as tasks, lazily; path escapes and duplicate output names are decided here."""
    base = base_dir.resolve()
    seen: dict[str, str] = {}
    for index, row in enumerate(iter_metadata(metadata_path)):
        file_name = row["file_name"]
        stem = Path(file_name).stem
        # Lexical, not resolve(): DVC's symlink cache type (or audio kept on another disk) makes
        # raw/audio/* links to files elsewhere, which are the user's own; `..` and absolute
        # names in the metadata are what must not leave the folder.
        source = Path(os.path.normpath(base / file_name))
        problem = None
        if not file_name or not source.is_relative_to(base):
            problem = Rejection("bad_path", f"{file_name!r} points outside the input folder")
        elif stem.casefold() in seen:
            problem = Rejection(
                "duplicate", f"output name audio/{stem}.wav already used by {seen[stem.casefold()]}"
            )
        else:
            seen[stem.casefold()] = file_name
        yield ClipTask(index=index, row=row, stem=stem, source=source, problem=problem)


def _count_rows(metadata_path: Path) -> int:
    """A first pass that also validates every row, so a broken file fails before any work."""
    return sum(1 for _ in iter_metadata(metadata_path))


#: What a preprocessed folder of an earlier version (before the output marker) always holds.
PREPROCESS_LEGACY = ("metadata.csv", "rejected.csv", "audio")


def preprocess_corpus(
    input_metadata: Path,
    output_dir: Path,
    cache_dir: Path,
    params: ProcessParams,
    filters: Filters,
    input_dir: Path | None = None,
    metrics_file: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessSummary:
    """Preprocess every row of `input_metadata` into `output_dir` (replaced atomically).

    `file_name` paths are relative to `input_dir` (default: the metadata file's folder).
    Never writes into the input; cached clips are not decoded again.
    """
    started = time.perf_counter()
    input_metadata = Path(input_metadata)
    base_dir = Path(input_dir) if input_dir is not None else input_metadata.parent
    output_dir = Path(output_dir)
    total = _check_input_and_output(input_metadata, base_dir, output_dir)
    columns = output_columns(_read_header(input_metadata))
    workers = max(1, min(workers or default_workers(), max(total, 1)))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "preprocess: %d clips from %s -> %s (%d worker%s, cache %s)",
        total, input_metadata, output_dir, workers, "s" if workers > 1 else "", cache_dir,
    )  # fmt: skip
    summary = PreprocessSummary(output_dir=str(output_dir))
    with (
        atomic_directory(output_dir, "preprocess", PREPROCESS_LEGACY) as tmp,
        contextlib.ExitStack() as stack,
    ):
        audio_dir = tmp / "audio"
        audio_dir.mkdir()
        ctx = Context(audio_dir, cache_dir, params, filters, code=code_fingerprint())
        meta_handle = stack.enter_context(open(tmp / "metadata.csv", "w", newline="", encoding="utf-8"))
        rej_handle = stack.enter_context(open(tmp / "rejected.csv", "w", newline="", encoding="utf-8"))
        meta = csv.DictWriter(meta_handle, fieldnames=columns, lineterminator="\n")
        rejected = csv.DictWriter(
            rej_handle, fieldnames=["file_name", "reason", "detail"], lineterminator="\n"
        )
        meta.writeheader()
        rejected.writeheader()
        outcomes = _run_clips(stack, ctx, _tasks(input_metadata, base_dir), workers)
        bar = tqdm(total=total, unit="clip", desc="preprocess", disable=not progress or None)
        rates, raw_names = _write_outcomes(outcomes, columns, meta, rejected, summary, bar)
        bar.close()
        meta_handle.close()
        _reject_rate_outliers(tmp, columns, rejected, rates, raw_names, filters, summary)
    summary.elapsed_s = time.perf_counter() - started
    if metrics_file is not None:
        write_json(metrics_file, summary.to_metrics())
    return summary


def _check_input_and_output(input_metadata: Path, base_dir: Path, output_dir: Path) -> int:
    """Refuse an output inside or overlapping the input, claim the output, validate every row.

    Returns the number of rows. Runs before any work, so a bad call loses nothing.
    """
    resolved_out, resolved_in = output_dir.resolve(), base_dir.resolve()
    if resolved_out == resolved_in or resolved_out.is_relative_to(resolved_in):
        raise PipelineError(f"{output_dir}: output must not be inside the input folder {base_dir}")
    clash = overlapping_input(output_dir, base_dir, input_metadata)
    if clash is not None:  # it is replaced as a whole: the input would be deleted with it
        raise PipelineError(f"{output_dir}: output must be a folder of its own, apart from the input {clash}")
    claim_output_dir(output_dir, "preprocess", PREPROCESS_LEGACY)  # before any work
    if not input_metadata.is_file():
        raise PipelineError(f"{input_metadata}: metadata file not found (run `tts-pipeline collect` first)")
    try:
        return _count_rows(input_metadata)
    except MetadataError as exc:
        raise PipelineError(str(exc)) from None


def _run_clips(
    stack: contextlib.ExitStack, ctx: Context, tasks: Iterator[ClipTask], workers: int
) -> Iterator[ClipOutcome]:
    """The clips' outcomes in input order: in a process pool (closed with `stack`) or in this process."""
    worker = functools.partial(process_clip, ctx)
    if workers <= 1:
        return map(worker, tasks)
    _warm_up(ctx.params)  # start the workers before tqdm starts its monitor thread
    pool = stack.enter_context(make_pool(workers))
    return ordered_imap(pool, worker, tasks, window=workers * 8)


def _write_outcomes(
    outcomes: Iterator[ClipOutcome],
    columns: list[str],
    meta: csv.DictWriter,
    rejected: csv.DictWriter,
    summary: PreprocessSummary,
    bar: Any,
) -> tuple[list[float], dict[str, str]]:
    """Write each kept clip's row to metadata.csv and each rejection to rejected.csv.

    Returns the kept clips' chars/s (for the corpus-relative outlier bound) and
    output file_name -> raw file_name.
    """
    rates: list[float] = []
    raw_names: dict[str, str] = {}
    for outcome in outcomes:
        summary.add(outcome)
        if outcome.rejection is None:
            assert outcome.row is not None
            meta.writerow({c: outcome.row.get(c, "") for c in columns})
            rates.append(float(outcome.row["chars_per_second"]))
            raw_names[outcome.row["file_name"]] = outcome.file_name
        else:
            reason, detail = outcome.rejection.reason, outcome.rejection.detail
            rejected.writerow({"file_name": outcome.file_name, "reason": reason, "detail": detail})
            log.debug("rejected %s: %s (%s)", outcome.file_name, reason, detail)
        bar.update(1)
    return rates, raw_names


def _reject_rate_outliers(
    folder: Path,
    columns: list[str],
    rejected: csv.DictWriter,
    rates: list[float],
    raw_names: dict[str, str],
    filters: Filters,
    summary: PreprocessSummary,
) -> None:
    """The second pass: drop the kept clips whose speech rate is an outlier for this corpus."""
    sigmas = filters.speech_rate_outlier_sigmas
    bounds = speech_rate_bounds(rates, sigmas) if sigmas is not None else None
    if bounds is None or all(bounds[0] <= r <= bounds[1] for r in rates):
        return
    for duration, trimmed in _drop_rate_outliers(folder, columns, rejected, bounds, raw_names):
        summary.kept -= 1
        summary.seconds_kept -= duration
        summary.seconds_trimmed -= trimmed
        summary.rejected["speech_rate_outlier"] += 1


def _warm_up(params: ProcessParams) -> None:
    """Import the signal libraries and design the filters once in the main process, so forked
    workers start warm instead of each paying ~1 s of imports."""
    import av  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.signal  # noqa: F401
    import soxr  # noqa: F401

    aq._k_weighting_sos(params.sample_rate)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input_dir", help="raw dataset folder (default: paths.raw_dataset)")
    parser.add_argument("--input_metadata", help="raw metadata.csv (default: <input_dir>/metadata.csv)")
    parser.add_argument("--output_dir", help="output folder (default: paths.preprocessed)")
    parser.add_argument("--metrics_file", help="metric JSON (default: <paths.metrics>/preprocess.json)")
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: preprocess.workers, else all cores)"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    input_dir = clip_base_dir(args.input_dir) if getattr(args, "input_dir", None) else None
    if getattr(args, "input_metadata", None):
        input_metadata = Path(args.input_metadata)
    else:
        input_metadata = (input_dir or cfg.path("raw_dataset")) / "metadata.csv"
    if input_dir is None and not getattr(args, "input_metadata", None):
        input_dir = cfg.path("raw_dataset")
    output_dir = cfg.flag_or_path(args, "output_dir", "preprocessed")
    metrics_file = cfg.flag_or_path(args, "metrics_file", "metrics", under="preprocess.json")
    workers = getattr(args, "workers", None) or cfg.preprocess.workers
    summary = preprocess_corpus(
        input_metadata=input_metadata,
        output_dir=output_dir,
        cache_dir=cfg.path("cache") / "preprocess",
        params=ProcessParams.from_config(cfg),
        filters=Filters.from_config(cfg),
        input_dir=input_dir,
        metrics_file=metrics_file,
        workers=workers,
    )
    print(summary.format())
    print(f"  rejected list: {output_dir / 'rejected.csv'}; metrics: {metrics_file}")
    if summary.total and not summary.kept:
        log.warning("no clip was kept: see %s for the reasons", output_dir / "rejected.csv")
    return 0
