"""Training data: the dataset stage's `DatasetDict` -> tokenised, decoded, filtered examples.

`datasets` 5 decodes `Audio` only through torchcodec (not installed, CUDA-linked), so the
column is cast to `Audio(decode=False)` and the embedded bytes are decoded with soundfile.
Audio is kept in memory as int16 (half the size of float32; a 10 h dataset is ~1.2 GB).

Batches come from `epoch_batches(lengths, batch_size, seed, epoch)`: a pure function of the
seed and the epoch number, so a resumed run sees exactly the batches an uninterrupted run would
(the trainer stores the epoch and the position inside it). Items of similar length are grouped
(less padding, the VITS bucket sampler idea) and the batch order is then shuffled.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import AudioError, decode_wav_bytes, resample
from ..errors import PipelineError

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One usable clip: token ids, 16-bit audio cropped to a multiple of the hop, speaker."""

    input_ids: list[int]
    audio: np.ndarray  # int16
    speaker_id: int
    text: str

    @property
    def num_samples(self) -> int:
        return int(self.audio.shape[0])


@dataclass
class SplitReport:
    """Why clips were left out of a split (logged, and written to training_info.json)."""

    kept: int = 0
    dropped: dict[str, int] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "dropped": dict(self.dropped or {}),
            "hours": round(self.seconds / 3600, 4),
        }


def load_dataset_dict(path: str | Path):
    """`datasets.load_from_disk` with errors that name the directory and what to do."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise PipelineError(
            f"{path}: dataset not found; run `tts-pipeline dataset` first (or pass --dataset_path)"
        )
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise PipelineError(f"{path}: not a saved Hugging Face dataset: {exc}") from None
    if not isinstance(data, datasets.DatasetDict):
        raise PipelineError(f"{path}: expected a DatasetDict with train/validation splits, got one Dataset")
    if "train" not in data:
        raise PipelineError(f"{path}: has no 'train' split (splits: {', '.join(data)})")
    for column in ("audio", "text"):
        if column not in data["train"].column_names:
            raise PipelineError(
                f"{path}: train split has no '{column}' column (has: {data['train'].column_names})"
            )
    return data


def dataset_speakers(path: str | Path, data) -> dict[int, dict[str, Any]]:
    """id -> {name, clips, hours} from speakers.json, else from the `speaker`/`speaker_id` columns."""
    import json

    speakers_file = Path(path) / "speakers.json"
    if speakers_file.is_file():
        try:
            raw = json.loads(speakers_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{speakers_file}: broken JSON: {exc}") from None
        speakers = {}
        for key, value in raw.items():
            if not str(key).isdigit():
                raise PipelineError(f"{speakers_file}: speaker ids must be integers, got {key!r}")
            speakers[int(key)] = value if isinstance(value, dict) else {"name": str(value)}
    else:
        speakers = {}
        for split in data.values():
            if "speaker_id" not in split.column_names:
                continue
            names = split["speaker"] if "speaker" in split.column_names else None
            for i, sid in enumerate(split["speaker_id"]):
                speakers.setdefault(int(sid), {"name": str(names[i]) if names else f"speaker_{sid}"})
        speakers = speakers or {0: {"name": "speaker_0"}}
    expected = list(range(len(speakers)))
    if sorted(speakers) != expected:
        raise PipelineError(f"{speakers_file}: speaker ids must be contiguous from 0, got {sorted(speakers)}")
    return speakers


def _decode(audio: dict[str, Any], sampling_rate: int, where: str) -> np.ndarray:
    """A dataset row's audio (embedded bytes, else its path) as mono float32 at `sampling_rate`."""
    payload = audio.get("bytes")
    try:
        if payload:
            samples, rate = decode_wav_bytes(payload, where)
        elif audio.get("path") and Path(audio["path"]).is_file():
            samples, rate = decode_wav_bytes(Path(audio["path"]).read_bytes(), where)
        else:
            raise PipelineError(f"{where}: audio has no embedded bytes (the dataset must be self-contained)")
    except AudioError as exc:
        raise PipelineError(str(exc)) from None
    return resample(samples, rate, sampling_rate)


def prepare_split(
    split,
    tokenizer,
    *,
    sampling_rate: int,
    hop_length: int,
    max_audio_s: float,
    num_speakers: int,
    where: str,
    limit: int | None = None,
) -> tuple[list[Example], SplitReport]:
    """Decode, tokenise and filter one split. Drops (and counts) clips that cannot train."""
    from datasets import Audio
    from tqdm.auto import tqdm

    split = split.cast_column("audio", Audio(decode=False))
    has_speaker = "speaker_id" in split.column_names
    examples: list[Example] = []
    dropped: Counter[str] = Counter()
    seconds = 0.0
    rows = range(len(split)) if limit is None else range(min(limit, len(split)))
    for i in tqdm(rows, desc=f"loading {where}", unit="clip", leave=False, disable=len(rows) < 50):
        row = split[i]
        text = str(row["text"] or "")
        samples = _decode(row["audio"], sampling_rate, f"{where} row {i}")
        sid = int(row["speaker_id"]) if has_speaker and row["speaker_id"] is not None else 0
        if not 0 <= sid < num_speakers:
            raise PipelineError(
                f"{where} row {i}: speaker_id {sid} outside 0..{num_speakers - 1} (speakers.json)"
            )
        if len(samples) > max_audio_s * sampling_rate:
            dropped["longer than training.max_audio_s"] += 1
            continue
        ids = list(tokenizer(text)["input_ids"])
        if not ids:
            dropped["no characters the tokenizer knows"] += 1
            continue
        frames = len(samples) // hop_length
        if frames < len(ids) or frames < 2:
            dropped["audio too short for its text"] += 1
            continue
        samples = samples[: frames * hop_length]
        audio = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)
        examples.append(Example(input_ids=ids, audio=audio, speaker_id=sid, text=text))
        seconds += len(samples) / sampling_rate
    for reason, count in dropped.items():
        log.warning("%s: dropped %d clip(s): %s", where, count, reason)
    return examples, SplitReport(kept=len(examples), dropped=dict(dropped), seconds=seconds)


def collate(examples: list[Example]):
    """Pad a list of examples into a `generator.Batch` (token pad id 0, audio pad 0)."""
    import torch

    from .generator import Batch

    size = len(examples)
    max_ids = max(len(e.input_ids) for e in examples)
    max_samples = max(e.num_samples for e in examples)
    input_ids = torch.zeros(size, max_ids, dtype=torch.long)
    attention = torch.zeros(size, max_ids, dtype=torch.long)
    waveform = torch.zeros(size, max_samples, dtype=torch.float32)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[i, : len(e.input_ids)] = 1
        waveform[i, : e.num_samples] = torch.from_numpy(e.audio.astype(np.float32) / 32768.0)
    lengths = torch.tensor([e.num_samples for e in examples], dtype=torch.long)
    speakers = torch.tensor([e.speaker_id for e in examples], dtype=torch.long)
    return Batch(input_ids, attention, waveform, lengths, speakers)


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, num_shards: int = 1, shard: int = 0
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch; deterministic in (seed, epoch).

    Shuffle, sort by length inside windows of 32 batches, cut into batches, shuffle the batches.
    The sort key is the length times a random factor in [0.9, 1.1] drawn per epoch, so batches
    stay length-bucketed (members within ~20 % of each other's length) but their members change
    from epoch to epoch even when the whole dataset fits in one window.
    With several processes (`accelerate launch`) each takes every `num_shards`-th batch, and all
    get the same number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    jitter = rng.uniform(0.9, 1.1, size=len(lengths))
    window = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window].tolist(), key=lambda i: lengths[i] * jitter[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    if num_shards > 1:
        per_shard = len(batches) // num_shards
        batches = batches[shard::num_shards][:per_shard]
    return batches
