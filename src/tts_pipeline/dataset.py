"""dataset stage: preprocessed clips + speaker labels -> a training-ready Hugging Face dataset.

Output (`data/<code>/dataset/`, written atomically, byte-identical on re-run):

    dataset_dict.json, train/, validation/[, test/]   DatasetDict.save_to_disk (audio embedded)
    speakers.json      {"<id>": {"name", "clips", "hours", "source_id"}} (modeling.save_speakers)
    vocab.json         only when training.base_model is null: the scratch tokenizer's vocabulary
    rejected.csv       file_name,reason,detail for every clip left out
    text_report.json   characters the tokenizer lacks, with counts and examples
    README.md          dataset card: clips and hours per split and speaker

Rules worth knowing:
- A clip of metadata.csv missing from speaker_ids.json stops the stage
  (`dataset.unlabelled_clips: error`) or is rejected with reason `no_speaker` (`drop`).
  Without any speaker_ids.json (speakers stage skipped) every clip is speaker 0, with a warning.
- Speaker ids are renumbered 0..n-1 (ordered by the incoming id) over the clips that survive;
  `source_id` in speakers.json keeps the speakers stage's id.
- Splits are stratified by speaker: a speaker with >= 2 clips has at least one validation clip
  (and, with `test_split` > 0, one with >= 3 clips has a test clip); train keeps at least one.
- The `text` column holds `text.normalize_text` output (what synthesis will also produce);
  characters the tokenizer lacks stay in it and are reported, unless `oov_policy` is
  `drop_clip`. A clip whose text tokenises to nothing is always rejected.

`datasets` 5 decodes audio only through torchcodec (not installed, CUDA-linked): the audio
column is built from WAV bytes without ever decoding, and readers should
`cast_column("audio", Audio(decode=False))` and decode the bytes with soundfile.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from . import fsutil, modeling
from .errors import PipelineError
from .metadata import MetadataError, default_metadata_csv, iter_metadata, resolve_clip_path
from .text import OovReport, Tokenized, normalize_text, tokenizer_view

if TYPE_CHECKING:  # pragma: no cover
    from transformers import VitsTokenizer

    from .config import Config, DatasetSection

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPEAKER_IDS_FILE = "speaker_ids.json"
VOCAB_FILE = "vocab.json"
REJECTED_FILE = "rejected.csv"
TEXT_REPORT_FILE = "text_report.json"
CARD_FILE = "README.md"
#: What a dataset folder of an earlier version (before the output marker) always holds.
DATASET_LEGACY = (VOCAB_FILE, TEXT_REPORT_FILE)
#: Why a clip can be left out (every one appears in the metric, 0 included, for stable columns).
REASONS = (
    "duplicate",
    "empty_after_normalization",
    "no_speaker",
    "audio_missing",
    "audio_unreadable",
    "audio_empty",
    "no_tokenizable_text",
    "oov_chars",
)
#: Bumped when the saved layout changes, so the datasets fingerprint changes with it.
FORMAT_VERSION = 1
_SHARD_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)$", re.IGNORECASE)


# --------------------------------------------------------------------------- records


@dataclass
class Clip:
    """One usable clip on its way into the dataset."""

    file_name: str
    audio_path: Path
    text_original: str
    text: str
    source_speaker: int
    speaker: str
    verse_id: str
    duration_s: float
    audio_sha256: str
    speaker_id: int = -1  # final contiguous id, set by `renumber_speakers`


@dataclass
class Rejection:
    file_name: str
    reason: str
    detail: str = ""


@dataclass
class SpeakerLabels:
    """speaker_ids.json, read: clip -> speaker id, speaker id -> name."""

    clips: dict[str, int]
    names: dict[int, str]
    path: Path | None = None  # None = fallback: no speakers stage output, one speaker


@dataclass
class DatasetSummary:
    """What the stage made: the splits, what was left out and why, and what the tokenizer lacks."""

    splits: dict[str, list[Clip]]
    rejected: list[Rejection]
    speakers: dict[int, dict[str, Any]]
    oov: OovReport
    input_clips: int
    vocab: dict[str, int] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected_by(self) -> dict[str, int]:
        """Rejections per reason (only reasons that occurred)."""
        return dict(sorted(Counter(r.reason for r in self.rejected).items()))


# --------------------------------------------------------------------------- inputs


def load_speaker_labels(path: Path | None) -> SpeakerLabels:
    """Read speaker_ids.json (format in docs/ARCHITECTURE.md); absent = one speaker, warned."""
    if path is None or not path.is_file():
        log.warning(
            "%s not found (speakers stage skipped?): every clip is treated as one speaker, speaker_0",
            path,
        )
        return SpeakerLabels(clips={}, names={0: "speaker_0"}, path=None)
    try:
        data = fsutil.read_json(path)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("clips"), dict):
        raise PipelineError(f"{path}: expected an object with a 'clips' mapping (see docs/ARCHITECTURE.md)")
    clips: dict[str, int] = {}
    for name, entry in data["clips"].items():
        sid = entry.get("speaker_id") if isinstance(entry, dict) else entry
        if isinstance(sid, bool) or not isinstance(sid, int) or sid < 0:
            raise PipelineError(
                f"{path}: clips[{name!r}].speaker_id must be a non-negative integer, got {sid!r}"
            )
        clips[name] = sid
    names: dict[int, str] = {}
    speakers = data.get("speakers") or {}
    if not isinstance(speakers, dict):
        raise PipelineError(f"{path}: 'speakers' must map speaker id -> {{name, ...}}")
    for key, info in speakers.items():
        try:
            sid = int(key)
        except ValueError:
            raise PipelineError(f"{path}: speaker key {key!r} is not an integer id") from None
        name = info.get("name") if isinstance(info, dict) else None
        names[sid] = str(name) if name else f"speaker_{sid}"
    for sid in sorted(set(clips.values()) - set(names)):
        names[sid] = f"speaker_{sid}"
    return SpeakerLabels(clips=clips, names=names, path=path)


def read_clips(
    metadata_csv: Path,
    audio_dir: Path,
    labels: SpeakerLabels,
    cfg: DatasetSection,
    sample_rate: int,
) -> tuple[list[Clip], list[Rejection], int]:
    """Rows of metadata.csv -> clips with normalised text and speaker; rejections with reasons.

    Returns (clips, rejections, number of input rows). Raises PipelineError for input that
    means the pipeline is misconfigured (wrong sample rate, clips unknown to speaker_ids.json
    under `unlabelled_clips: error`).
    """
    import soundfile as sf

    try:
        rows = list(iter_metadata(metadata_csv))
    except MetadataError as exc:
        raise PipelineError(str(exc)) from None
    clips: list[Clip] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    unlabelled: list[str] = []
    for row in tqdm(rows, desc="dataset: reading clips", unit="clip", disable=len(rows) < 200):
        name = row["file_name"]
        if name in seen:
            rejected.append(Rejection(name, "duplicate", f"{metadata_csv}: file_name listed twice"))
            continue
        seen.add(name)
        original = row.get("transcription") or ""
        text = normalize_text(original, cfg)
        if not text:
            rejected.append(Rejection(name, "empty_after_normalization", repr(original)))
            continue
        if labels.path is None:
            source_speaker = 0
        elif name in labels.clips:
            source_speaker = labels.clips[name]
        else:
            unlabelled.append(name)
            rejected.append(Rejection(name, "no_speaker", f"not in {labels.path}"))
            continue
        path = resolve_clip_path(audio_dir, name)
        if not path.is_file():
            rejected.append(Rejection(name, "audio_missing", str(path)))
            log.warning("%s: audio file missing, clip rejected", path)
            continue
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            rejected.append(Rejection(name, "audio_unreadable", f"{path}: {exc}"))
            log.warning("%s: cannot read audio (%s), clip rejected", path, exc)
            continue
        if info.samplerate != sample_rate or info.channels != 1:
            raise PipelineError(
                f"{path}: {info.samplerate} Hz, {info.channels} channel(s); the dataset expects "
                f"{sample_rate} Hz mono (audio.sample_rate). Re-run preprocess with the same settings."
            )
        if info.frames == 0:
            rejected.append(Rejection(name, "audio_empty", str(path)))
            continue
        clips.append(
            Clip(
                file_name=name,
                audio_path=path,
                text_original=original,
                text=text,
                source_speaker=source_speaker,
                speaker=labels.names.get(source_speaker, f"speaker_{source_speaker}"),
                verse_id=row.get("verse_id") or "",
                duration_s=info.frames / info.samplerate,
                audio_sha256=fsutil.sha256_file(path),
            )
        )
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else "")
        message = f"{labels.path}: {len(unlabelled)} clip(s) of {metadata_csv} have no speaker: {shown}"
        if cfg.unlabelled_clips == "error" or len(unlabelled) == len(rows):
            raise PipelineError(
                message
                + ". Re-run the speakers stage on this metadata.csv"
                + (" (or set dataset.unlabelled_clips: drop)" if len(unlabelled) < len(rows) else "")
            )
        log.warning("%s; rejected (dataset.unlabelled_clips: drop)", message)
    return clips, rejected, len(rows)


# --------------------------------------------------------------------------- tokenizer


def load_base_tokenizer(base_model: str) -> VitsTokenizer:
    """The base model's tokenizer (hub id or local path), with a clear error when unreachable."""
    return modeling.load_tokenizer(base_model)


def check_text(
    clips: list[Clip], tokenizer: VitsTokenizer, policy: str, report: OovReport
) -> tuple[list[Clip], list[Rejection]]:
    """Run every clip's text through the tokenizer's own preparation; report and reject.

    Every character the tokenizer would drop is added to `report`. A clip is rejected when
    nothing of its text survives (`no_tokenizable_text`), or, with policy `drop_clip`, when
    anything is dropped (`oov_chars`).
    """
    kept: list[Clip] = []
    rejected: list[Rejection] = []
    cache: dict[str, Tokenized] = {}
    for clip in tqdm(clips, desc="dataset: tokenizer coverage", unit="clip", disable=len(clips) < 200):
        view = cache.get(clip.text)
        if view is None:
            view = cache[clip.text] = tokenizer_view(clip.text, tokenizer)
        report.add(clip.file_name, clip.text, view.dropped)
        if not view.kept:
            rejected.append(Rejection(clip.file_name, "no_tokenizable_text", repr(clip.text)))
        elif policy == "drop_clip" and view.dropped:
            chars = "".join(sorted(set(view.dropped)))
            rejected.append(Rejection(clip.file_name, "oov_chars", repr(chars)))
        else:
            kept.append(clip)
    return kept, rejected


# --------------------------------------------------------------------------- splits


def _split_sizes(n: int, cfg: DatasetSection) -> tuple[int, int, int]:
    """(train, validation, test) counts for one speaker's n clips."""

    def share(ratio: float, minimum_n: int) -> int:
        if ratio <= 0:
            return 0
        count = int(n * ratio + 0.5)
        return max(1, count) if n >= minimum_n else count

    n_val = share(cfg.validation_split, 2)
    n_test = share(cfg.test_split, 3)
    while n - n_val - n_test < 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split_clips(clips: list[Clip], cfg: DatasetSection) -> dict[str, list[Clip]]:
    """Stratified by speaker, deterministic for a given seed; split order shuffled if asked.

    Each speaker's clips are sorted by file name and (with `shuffle`) shuffled by a generator
    seeded with (seed, speaker), so one speaker's split does not move when another's clips change.
    """
    names = ["train", "validation"] + (["test"] if cfg.test_split > 0 else [])
    splits: dict[str, list[Clip]] = {name: [] for name in names}
    by_speaker: dict[int, list[Clip]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.source_speaker, []).append(clip)
    for speaker, group in sorted(by_speaker.items()):
        group = sorted(group, key=lambda c: c.file_name)
        if cfg.shuffle:
            random.Random(f"{cfg.seed}:speaker:{speaker}").shuffle(group)
        n_train, n_val, n_test = _split_sizes(len(group), cfg)
        splits["train"] += group[:n_train]
        splits["validation"] += group[n_train : n_train + n_val]
        if n_test:
            splits["test"] += group[n_train + n_val :]
        if n_val == 0 and cfg.validation_split > 0:
            log.warning("speaker %s has %d clip(s): none in validation", group[0].speaker, len(group))
    for name, items in splits.items():
        items.sort(key=lambda c: c.file_name)
        if cfg.shuffle:
            random.Random(f"{cfg.seed}:split:{name}").shuffle(items)
    return splits


def renumber_speakers(splits: dict[str, list[Clip]]) -> dict[int, dict[str, Any]]:
    """Contiguous ids 0..n-1 over the speakers that still have clips; speakers.json content."""
    present = sorted({c.source_speaker for items in splits.values() for c in items})
    new_id = {old: new for new, old in enumerate(present)}
    if present != list(range(len(present))):
        log.info("speaker ids renumbered to stay contiguous: %s", new_id)
    speakers: dict[int, dict[str, Any]] = {}
    for items in splits.values():
        for clip in items:
            clip.speaker_id = new_id[clip.source_speaker]
            entry = speakers.setdefault(
                clip.speaker_id,
                {"name": clip.speaker, "source_id": clip.source_speaker, "clips": 0, "seconds": 0.0},
            )
            entry["clips"] += 1
            entry["seconds"] += clip.duration_s
    for entry in speakers.values():
        entry["hours"] = round(entry.pop("seconds") / 3600, 6)
    return dict(sorted(speakers.items()))


# --------------------------------------------------------------------------- the whole stage


def build_dataset(
    metadata_csv: Path,
    audio_dir: Path,
    speaker_ids: Path | None,
    output_dir: Path,
    cfg: DatasetSection,
    *,
    base_model: str | None,
    sample_rate: int = 16000,
    language: str = "",
) -> DatasetSummary:
    """Read, normalise, check against the tokenizer, split, and write the dataset atomically."""
    if not _SHARD_SIZE.match(cfg.max_shard_size.strip()):
        raise PipelineError(f"dataset.max_shard_size {cfg.max_shard_size!r}: expected e.g. '500MB'")
    clash = fsutil.overlapping_input(output_dir, audio_dir, metadata_csv, speaker_ids)
    if clash is not None:  # the output dir is replaced as a whole: it must not hold the input
        raise PipelineError(f"{output_dir}: output must be a folder of its own, apart from the input {clash}")
    fsutil.claim_output_dir(output_dir, "dataset", DATASET_LEGACY)
    labels = load_speaker_labels(speaker_ids)
    clips, rejected, n_input = read_clips(metadata_csv, audio_dir, labels, cfg, sample_rate)
    clips.sort(key=lambda c: c.file_name)  # the OOV report's examples must not follow the row order
    report = OovReport()
    vocab: dict[str, int] | None = None

    tokenizer = None
    if base_model:
        tokenizer = load_base_tokenizer(base_model)
        _warn_slow_uroman(tokenizer, clips, cfg)
        clips, dropped = check_text(clips, tokenizer, cfg.oov_policy, report)
        rejected += dropped
    splits = split_clips(clips, cfg)
    if not base_model:
        # Trained from scratch: the vocabulary is the training text's characters.
        vocab = modeling.build_vocab(c.text for c in splits["train"])
        with tempfile.TemporaryDirectory(prefix="tts-vocab-") as tmp:
            tokenizer = modeling.make_tokenizer(vocab, tmp)
            for name in list(splits):
                splits[name], dropped = check_text(splits[name], tokenizer, cfg.oov_policy, report)
                rejected += dropped
    for name in ("validation", "test"):
        if name in splits and not splits[name]:
            log.warning("the %s split is empty: no speaker has enough clips for it", name)
    if not splits["train"]:
        reasons = Counter(r.reason for r in rejected)
        hint = ""
        if reasons["no_tokenizable_text"] and cfg.oov_policy != "uroman":
            hint = (
                "; the tokenizer reads none of this text's characters: for a non-Latin script "
                "try dataset.oov_policy: uroman"
            )
        raise PipelineError(
            f"{metadata_csv}: no clip left for training ({n_input} read; rejected: {dict(reasons)}){hint}"
        )
    spoken = report.spoken()
    if spoken and cfg.oov_policy != "drop_clip":
        log.warning(
            "%d letter(s)/digit(s) are not in the tokenizer's vocabulary and will be dropped from "
            "the text the model hears: %s (see dataset.oov_policy / oov_map)",
            len(spoken),
            " ".join(e.char for e in spoken[:20]),
        )
    speakers = renumber_speakers(splits)
    rejected.sort(key=lambda r: (r.file_name, r.reason))
    summary = DatasetSummary(
        splits=splits, rejected=rejected, speakers=speakers, oov=report, input_clips=n_input, vocab=vocab
    )
    summary.metrics = summary_metrics(summary)
    write_dataset(output_dir, summary, cfg, sample_rate=sample_rate, language=language)
    return summary


def _warn_slow_uroman(tokenizer: VitsTokenizer, clips: list[Clip], cfg: DatasetSection) -> None:
    needs_uroman = getattr(tokenizer, "is_uroman", False) and cfg.oov_policy != "uroman"
    if needs_uroman and any(not c.text.isascii() for c in clips):
        log.warning(
            "the base tokenizer romanises non-ASCII text itself (is_uroman), building a new "
            "uroman per call (~2 s): set dataset.oov_policy: uroman to romanise once, here"
        )


# --------------------------------------------------------------------------- writing


def _features(sample_rate: int, audio_as_struct: bool) -> Any:
    from datasets import Audio, Features, Value

    audio: Any = {"bytes": Value("binary"), "path": Value("string")}
    return Features(
        {
            "audio": audio if audio_as_struct else Audio(sampling_rate=sample_rate),
            "text": Value("string"),
            "text_original": Value("string"),
            "speaker_id": Value("int64"),
            "speaker": Value("string"),
            "file_name": Value("string"),
            "verse_id": Value("string"),
            "duration_s": Value("float64"),
        }
    )


def _rows(clips: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows with the WAV bytes read lazily, so memory stays flat in corpus size."""
    for clip in clips:
        data = Path(clip["audio_path"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != clip["audio_sha256"]:
            raise PipelineError(f"{clip['audio_path']}: changed while the dataset was being built")
        row = {k: v for k, v in clip.items() if k not in ("audio_path", "audio_sha256")}
        row["audio"] = {"bytes": data, "path": Path(clip["file_name"]).name}
        yield row


def _split_dataset(clips: list[Clip], sample_rate: int, cache_dir: Path, split: str) -> Any:
    """One split as a Dataset: struct audio column written via a generator, then cast to Audio.

    Casting a {bytes, path} struct to `Audio` changes only the schema (no torchcodec needed);
    explicit fingerprints (hashes of the content) keep state.json identical across runs.
    """
    from datasets import Audio, Dataset, NamedSplit

    records = [
        {
            "audio_path": str(c.audio_path),
            "audio_sha256": c.audio_sha256,
            "text": c.text,
            "text_original": c.text_original,
            "speaker_id": c.speaker_id,
            "speaker": c.speaker,
            "file_name": c.file_name,
            "verse_id": c.verse_id,
            "duration_s": c.duration_s,
        }
        for c in clips
    ]
    content = [{k: v for k, v in r.items() if k != "audio_path"} for r in records]
    fingerprint = fsutil.sha256_json(
        {"v": FORMAT_VERSION, "split": split, "sr": sample_rate, "rows": content}
    )
    if not records:
        ds = Dataset.from_dict(
            {k: [] for k in _features(sample_rate, True)}, features=_features(sample_rate, True)
        )
    else:
        from datasets.exceptions import DatasetGenerationError

        try:
            ds = Dataset.from_generator(
                _rows,
                features=_features(sample_rate, True),
                cache_dir=str(cache_dir / split),
                gen_kwargs={"clips": records},
                split=NamedSplit(split),
                fingerprint=fingerprint[:16],
                writer_batch_size=64,  # rows of audio held in memory at once
            )
        except DatasetGenerationError as exc:  # datasets wraps what the generator raised
            cause = exc.__cause__
            if isinstance(cause, PipelineError):
                raise cause from None
            raise PipelineError(f"writing the {split} split failed: {cause or exc}") from exc
    import pyarrow as pa

    pa.default_memory_pool().release_unused()  # the writer's freed batches, kept by Arrow's allocator
    return ds.cast_column("audio", Audio(sampling_rate=sample_rate), new_fingerprint=fingerprint[16:32])


def _estimate_nbytes(ds: Any) -> int:
    """`Dataset._estimate_nbytes` for our audio column (bytes always embedded), without copying.

    datasets estimates the size of external audio files from the first 1,000 rows via
    `to_pylist()`, which turns up to 1,000 clips into Python bytes; every row here carries its
    bytes, so the estimate is the table size less the `path` strings, computed the same way.
    """
    nbytes = ds.data.nbytes
    head = ds.with_format("arrow")[:1000]
    path_nbytes = 0
    for chunk in head["audio"].chunks:
        storage = chunk.storage if hasattr(chunk, "storage") else chunk
        path_nbytes += storage.field("path").nbytes
    return nbytes + (-path_nbytes) * len(ds.data) // len(head)


def _record_batch_view(group: Any, start: int, rows: int) -> Any:
    """Rows [start, start + rows) of `group` laid out as `combine_chunks(group)` would hold them.

    The Arrow IPC writer rounds a sliced string/binary value buffer up to 64 bytes, so the bytes
    on disk include what follows the slice in its buffer. datasets' save combines each whole
    group first (a copy, zero-padded at its end, unless the group is one chunk already); copying
    only these rows plus up to 64 following ones gives the same bytes at a fraction of the memory.
    """
    import pyarrow as pa
    from datasets.table import embed_table_storage

    end = min(start + rows + 64, group.num_rows)
    window = group.slice(start, end - start)
    if any(column.num_chunks > 1 for column in group.columns):  # the group itself would be copied
        window = pa.Table.from_arrays(
            [pa.chunked_array([*column.chunks, column.chunks[0].slice(0, 0)]) for column in window.columns],
            schema=window.schema,
        ).combine_chunks()
    window = embed_table_storage(window, local_files=True, remote_files=False)  # fresh audio arrays
    return window.slice(0, min(rows, group.num_rows - start))


def _save_split(ds: Any, path: Path, max_shard_size: str) -> None:
    """`Dataset.save_to_disk` of one split, same bytes, in memory that does not grow with the clips.

    datasets' own save walks each shard in ~100 MB groups and copies every group several times
    (combine, cast, re-embed via Python bytes): hundreds of MB for audio. Here the same groups
    and the same record batches (writer_batch_size rows, counted from the start of each group)
    are written one record batch at a time, without the re-embedding (the bytes are embedded
    already and the paths are bare file names, so embedding would change nothing). state.json
    and dataset_info.json are written as datasets writes them; tests compare the bytes.
    """
    import pyarrow as pa
    from datasets import config as ds_config
    from datasets.arrow_writer import ArrowWriter, get_writer_batch_size_from_data_size
    from datasets.utils.py_utils import asdict, convert_file_size_to_int

    pool = pa.default_memory_pool()
    nbytes = _estimate_nbytes(ds)
    num_shards = min(len(ds.data), int(nbytes / convert_file_size_to_int(max_shard_size)) + 1)
    group = ds_config.DEFAULT_MAX_BATCH_SIZE
    if nbytes > 0:
        group = min(group, get_writer_batch_size_from_data_size(len(ds), nbytes))
    path.mkdir(parents=True, exist_ok=True)
    files = [f"data-{i:05d}-of-{num_shards:05d}.arrow" for i in range(num_shards)]
    bar = tqdm(total=len(ds), desc=f"dataset: saving {ds.split}", unit="clip", disable=len(ds) < 200)
    for index, filename in enumerate(files):
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
        writer = ArrowWriter(features=shard.features, path=str(path / filename), embed_local_files=False)
        try:
            for table in shard.with_format("arrow").iter(group):
                for start in range(0, table.num_rows, writer.writer_batch_size):
                    writer.write_table(_record_batch_view(table, start, writer.writer_batch_size))
                    pool.release_unused()  # Arrow's allocator keeps freed pages otherwise
                bar.update(table.num_rows)
            writer.finalize()
        finally:
            writer.close()
    bar.close()
    state = {
        key: ds.__dict__[key]
        for key in (
            "_fingerprint",
            "_format_columns",
            "_format_kwargs",
            "_format_type",
            "_output_all_columns",
        )
    }
    state["_split"] = str(ds.split) if ds.split is not None else ds.split
    state["_data_files"] = [{"filename": filename} for filename in files]
    (path / ds_config.DATASET_STATE_JSON_FILENAME).write_text(
        json.dumps(state, indent=2, sort_keys=True), encoding="utf-8"
    )
    info = asdict(ds.info)
    (path / ds_config.DATASET_INFO_FILENAME).write_text(
        json.dumps({key: info[key] for key in sorted(info)}, indent=2), encoding="utf-8"
    )


def write_dataset(
    output_dir: Path, summary: DatasetSummary, cfg: DatasetSection, *, sample_rate: int, language: str
) -> None:
    """save_to_disk + speakers.json + vocab.json + rejected.csv + text report + card, atomically."""
    from datasets import DatasetDict

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(
            prefix=f".{output_dir.name}.build-", dir=output_dir.parent, ignore_cleanup_errors=True
        ) as build,
        fsutil.atomic_directory(output_dir, "dataset", DATASET_LEGACY) as tmp,
    ):
        dd = DatasetDict(
            {
                name: _split_dataset(clips, sample_rate, Path(build), name)
                for name, clips in summary.splits.items()
            }
        )
        max_shard_size = cfg.max_shard_size.strip().replace(" ", "")
        (tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(dd)}), encoding="utf-8")
        for name, split in dd.items():
            if split.num_rows == 0:  # save_to_disk writes zero shards, load_from_disk fails: one empty shard
                split.save_to_disk(str(tmp / name), num_shards=1)
            else:
                _save_split(split, tmp / name, max_shard_size)
        del dd
        shutil.rmtree(build, ignore_errors=True)
        modeling.save_speakers(tmp, summary.speakers)
        if summary.vocab is not None:
            (tmp / VOCAB_FILE).write_text(
                json.dumps(summary.vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
            )
        (tmp / REJECTED_FILE).write_text(_rejected_csv(summary.rejected), encoding="utf-8")
        report = {
            "normalization": _normalization_settings(cfg),
            "oov": summary.oov.to_dict(with_examples=True),
        }
        (tmp / TEXT_REPORT_FILE).write_text(
            json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (tmp / CARD_FILE).write_text(dataset_card(summary, cfg, language, sample_rate), encoding="utf-8")


def _rejected_csv(rejected: list[Rejection]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "reason", "detail"])
    for r in rejected:
        writer.writerow([r.file_name, r.reason, r.detail])
    return buffer.getvalue()


def _normalization_settings(cfg: DatasetSection) -> dict[str, Any]:
    return {
        "unicode_normalization": cfg.unicode_normalization,
        "lowercase": cfg.lowercase,
        "punctuation_map": dict(sorted(cfg.punctuation_map.items())),
        "oov_policy": cfg.oov_policy,
        "oov_map": dict(sorted(cfg.oov_map.items())) if cfg.oov_policy == "map" else {},
    }


# --------------------------------------------------------------------------- summary


def _hours(clips: list[Clip]) -> float:
    return round(sum(c.duration_s for c in clips) / 3600, 6)


def summary_metrics(summary: DatasetSummary) -> dict[str, Any]:
    """The DVC metric: clips and hours per split and speaker, rejections by reason, OOV chars."""
    splits = summary.splits
    per_speaker: dict[str, Any] = {}
    for sid, info in summary.speakers.items():
        entry: dict[str, Any] = {"name": info["name"], "clips": info["clips"], "hours": info["hours"]}
        for name, clips in splits.items():
            mine = [c for c in clips if c.speaker_id == sid]
            entry[name] = {"clips": len(mine), "hours": _hours(mine)}
        per_speaker[str(sid)] = entry
    kept = [c for clips in splits.values() for c in clips]
    reasons = Counter(r.reason for r in summary.rejected)
    return {
        "input_clips": summary.input_clips,
        "clips": {name: len(clips) for name, clips in splits.items()} | {"total": len(kept)},
        "hours": {name: _hours(clips) for name, clips in splits.items()} | {"total": _hours(kept)},
        "num_speakers": len(summary.speakers),
        "speakers": per_speaker,
        "rejected": {reason: reasons.get(reason, 0) for reason in REASONS},
        "rejected_total": len(summary.rejected),
        "oov": summary.oov.to_dict(with_examples=False),
        "vocab_size": len(summary.vocab) if summary.vocab is not None else None,
    }


def dataset_card(summary: DatasetSummary, cfg: DatasetSection, language: str, sample_rate: int) -> str:
    """README.md of the dataset directory (no dates, no absolute paths: byte-identical on re-run)."""
    m = summary.metrics
    split_names = list(summary.splits)
    lines = [
        "---",
        f"pretty_name: {language or 'TTS'} speech (tts-pipeline)",
        "task_categories:",
        "  - text-to-speech",
        "---",
        "",
        f"# {language or 'TTS'} speech dataset",
        "",
        "Built by `tts-pipeline dataset` from the preprocessed recordings and the speaker labels.",
        f"Load with `datasets.load_from_disk`; audio is embedded WAV ({sample_rate} Hz mono 16-bit): cast",
        '`audio` to `Audio(decode=False)` and decode `["audio"]["bytes"]` with soundfile.',
        "",
        "## Splits",
        "",
        "| split | clips | hours |",
        "|---|---:|---:|",
    ]
    for name in split_names:
        lines.append(f"| {name} | {m['clips'][name]} | {m['hours'][name]:.4f} |")
    lines.append(f"| **total** | {m['clips']['total']} | {m['hours']['total']:.4f} |")
    lines += ["", "## Speakers", "", "| id | name | " + " | ".join(split_names) + " | hours |"]
    lines.append("|---:|---|" + "---:|" * (len(split_names) + 1))
    for sid, entry in m["speakers"].items():
        counts = " | ".join(str(entry[name]["clips"]) for name in split_names)
        lines.append(f"| {sid} | {entry['name']} | {counts} | {entry['hours']:.4f} |")
    lines += [
        "",
        "## Left out",
        "",
        f"{m['rejected_total']} of {m['input_clips']} clips (see `{REJECTED_FILE}`).",
    ]
    if m["rejected_total"]:
        lines += ["", "| reason | clips |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in m["rejected"].items() if n]
    lines += [
        "",
        "## Text",
        "",
        f"Normalisation: {json.dumps(_normalization_settings(cfg), ensure_ascii=False, sort_keys=True)}.",
        "",
    ]
    oov_lines = summary.oov.lines()
    if oov_lines:
        lines.append(
            f"Characters the tokenizer lacks ({'clips dropped' if cfg.oov_policy == 'drop_clip' else 'dropped by it'};"
            f" details in `{TEXT_REPORT_FILE}`):"
        )
        lines += [""] + [f"- {line}" for line in oov_lines]
    else:
        lines.append("Every character of the text is in the tokenizer's vocabulary.")
    if summary.vocab is not None:
        lines += [
            "",
            f"Vocabulary for a model trained from scratch: `{VOCAB_FILE}` ({len(summary.vocab)} symbols).",
        ]
    return "\n".join(lines) + "\n"


def format_summary(summary: DatasetSummary) -> str:
    m = summary.metrics
    parts = [f"{name} {m['clips'][name]} clips / {m['hours'][name]:.3f} h" for name in summary.splits]
    lines = [f"dataset: {'; '.join(parts)}; {m['num_speakers']} speaker(s)"]
    for sid, entry in m["speakers"].items():
        counts = ", ".join(f"{name} {entry[name]['clips']}" for name in summary.splits)
        lines.append(f"  speaker {sid} ({entry['name']}): {counts}; {entry['hours']:.3f} h")
    if m["rejected_total"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in m["rejected"].items() if n)
        lines.append(f"  rejected {m['rejected_total']} (see {REJECTED_FILE}): {reasons}")
    for line in summary.oov.lines():
        lines.append(f"  not in tokenizer vocab: {line}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audio_dir",
        type=Path,
        help="dir the metadata's file_name paths are relative to (default: paths.preprocessed)",
    )
    parser.add_argument("--metadata_csv", type=Path, help="default: <audio_dir>/metadata.csv")
    parser.add_argument("--speaker_ids", type=Path, help="default: <paths.speaker_analysis>/speaker_ids.json")
    parser.add_argument("--output_dir", type=Path, help="default: paths.hf_dataset")
    parser.add_argument("--metrics_file", type=Path, help="default: <paths.metrics>/dataset.json")


def run(cfg: Config, args: argparse.Namespace) -> int:
    audio_dir = cfg.flag_or_path(args, "audio_dir", "preprocessed")
    metadata_csv = args.metadata_csv or default_metadata_csv(audio_dir)
    if args.speaker_ids is not None and not args.speaker_ids.is_file():
        raise PipelineError(f"{args.speaker_ids}: speaker ids file not found (given with --speaker_ids)")
    speaker_ids = args.speaker_ids or cfg.path("speaker_analysis") / SPEAKER_IDS_FILE
    output_dir = cfg.flag_or_path(args, "output_dir", "hf_dataset")
    metrics_file = cfg.flag_or_path(args, "metrics_file", "metrics", under="dataset.json")
    summary = build_dataset(
        metadata_csv,
        audio_dir,
        speaker_ids,
        output_dir,
        cfg.dataset,
        base_model=cfg.training.base_model,
        sample_rate=cfg.audio.sample_rate,
        language=cfg.language.name or cfg.code,
    )
    fsutil.write_json(metrics_file, summary.metrics)
    print(format_summary(summary))
    print(f"dataset written to {output_dir}; metrics in {metrics_file}")
    return 0
