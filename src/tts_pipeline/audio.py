"""Audio basics shared by the stages: decode, resample, WAV bytes in and out, WebM/Opus out.

PyAV (FFmpeg) decodes WebM/Opus, Ogg, MP3, M4A/AAC, WAV and FLAC and resamples in one pass;
soundfile cannot read WebM. A decoded clip is resampled with soxr (`resample`). 16-bit WAV is
written by the standard library (`wav_bytes`, `write_wav`: no fsync per file, unlike libsndfile)
and read with soundfile (`read_wav`, `decode_wav_bytes`); WebM/Opus is written with PyAV.
The silence trimmer (`trim_bounds`, `trim_silence`) is the one preprocess cuts clips with and
evaluation measures speech duration with.
"""

from __future__ import annotations

import contextlib
import io
import math
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
#: Power floor (-100 dB) so digital silence gives finite frame levels.
POWER_FLOOR = 1e-10
#: The frame level of digital silence (the floor, in dB).
SILENCE_DB = 10.0 * math.log10(POWER_FLOOR)
#: Frame length for trimming and the SNR estimate.
FRAME_S = 0.010


class AudioError(ValueError):
    """Audio that cannot be used (corrupt, empty, an LFS pointer), naming the file."""


def is_lfs_pointer(path: str | Path) -> bool:
    """True when the file is a Git LFS pointer text instead of the audio itself."""
    with open(path, "rb") as handle:
        return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX


def _check_audio_file(path: str | Path) -> Path:
    """The checks every decoder makes first, so a missing, empty or LFS-pointer file is named clearly."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    if is_lfs_pointer(path):
        raise AudioError(f"{path}: is a Git LFS pointer, not audio (run `git lfs pull` on the project)")
    return path


@contextlib.contextmanager
def _audio_stream(path: Path) -> Iterator[tuple[Any, Any]]:
    """(container, first audio stream) of a checked file; FFmpeg errors become AudioError naming it.

    Covers the caller's whole decode loop, so a file that breaks mid-way is reported the same way.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            yield container, container.streams.audio[0]
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from None


def decode_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode any audio file to mono float32 in [-1, 1] at `sample_rate`.

    Raises AudioError naming the file for corrupt, empty or LFS-pointer input.
    """
    import av

    path = _check_audio_file(path)
    chunks: list[np.ndarray] = []
    with _audio_stream(path) as (container, stream):
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise AudioError(f"{path}: contains no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """High-quality resampling of mono float32 audio (soxr 'HQ', librosa's default)."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate == target or samples.size == 0:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


# --------------------------------------------------------------------------- silence


def frame_power_db(samples: np.ndarray, frame: int) -> np.ndarray:
    """Mean power of consecutive non-overlapping frames in dB (a last partial frame included)."""
    n = samples.size
    full = n // frame
    x = np.asarray(samples, dtype=np.float32)
    power = np.einsum(
        "ij,ij->i", x[: full * frame].reshape(full, frame), x[: full * frame].reshape(full, frame)
    )
    power = power.astype(np.float64) / frame
    if full * frame != n:  # the last frame's mean over its real samples only
        tail = x[full * frame :].astype(np.float64)
        power = np.append(power, float(np.dot(tail, tail)) / tail.size)
    return 10.0 * np.log10(np.maximum(power, POWER_FLOOR))


def trim_bounds(samples: np.ndarray, rate: int, threshold_db: float, margin_s: float) -> tuple[int, int]:
    """(start, end) sample indices of the clip without leading/trailing silence.

    Energy based: 10 ms frames quieter than (reference + `threshold_db`) are silence, where the
    reference is the 95th percentile of frame levels (the loud speech frames; a single click
    or pop cannot move it). A margin of `margin_s` is kept on both sides so word onsets and
    decays are not cut. Relative, so it works for quiet and loud recordings alike.
    A clip with no energy at all is returned whole (it is rejected as silent later).
    """
    frame = max(1, round(FRAME_S * rate))
    return trim_bounds_from_levels(
        frame_power_db(samples, frame), samples.size, frame, rate, threshold_db, margin_s
    )


def trim_bounds_from_levels(
    levels: np.ndarray, n: int, frame: int, rate: int, threshold_db: float, margin_s: float
) -> tuple[int, int]:
    """`trim_bounds` on precomputed frame levels (shared with the SNR estimate)."""
    if levels.size == 0 or levels.max() <= SILENCE_DB:
        return 0, n
    reference = float(np.percentile(levels, 95.0))
    loud = np.flatnonzero(levels >= reference + threshold_db)
    margin = round(margin_s * rate)
    start = max(0, int(loud[0]) * frame - margin)
    end = min(n, (int(loud[-1]) + 1) * frame + margin)
    return start, end


def trim_silence(
    samples: np.ndarray, rate: int, threshold_db: float = -40.0, margin_s: float = 0.0
) -> np.ndarray:
    """The clip cut to `trim_bounds`; empty for a clip with no energy at all (nothing to measure)."""
    samples = np.asarray(samples, dtype=np.float32)
    frame = max(1, round(FRAME_S * rate))
    levels = frame_power_db(samples, frame)
    if levels.size == 0 or levels.max() <= SILENCE_DB:
        return samples[:0]
    start, end = trim_bounds_from_levels(levels, samples.size, frame, rate, threshold_db, margin_s)
    return samples[start:end]


# --------------------------------------------------------------------------- WAV


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV file bytes (values clipped to [-1, 1], scaled by 32767 and rounded)."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono 16-bit PCM WAV (`wav_bytes`).

    Not through soundfile: libsndfile fsyncs every file it closes, which costs more than all the
    signal processing of a clip on a busy disk; callers that need durability rename atomically.
    """
    Path(path).write_bytes(wav_bytes(samples, sample_rate))


def _mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> mono float32 (the channel mean)."""
    return np.ascontiguousarray(data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC file as float32 (mono-mixed) with its sample rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return _mono(data), int(rate)


def decode_wav_bytes(data: bytes | None, where: str) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC bytes (e.g. a dataset row's embedded audio) to mono float32 and its rate.

    Raises AudioError naming `where` for missing or undecodable bytes.
    """
    import soundfile as sf

    if not data:
        raise AudioError(f"{where}: no audio bytes")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{where}: cannot decode the audio: {exc}") from None
    return _mono(samples), int(rate)


def encode_webm_opus(
    samples: np.ndarray,
    sample_rate: int,
    bitrate: int = 48000,
    *,
    opus_rate: int = 48000,
    compression_level: int | None = None,
    bitexact: bool = True,
) -> bytes:
    """Encode mono float audio as WebM/Opus at 48 kHz, as the Codex recording app does.

    Byte-reproducible (same samples -> same file): FFmpeg's Matroska muxer writes random
    segment/track UIDs unless told to be bit-exact, which would churn DVC hashes and caches.
    `opus_rate` and `compression_level` (0 = fastest) trade quality for speed where the
    audio is only listened to, e.g. the clips embedded in the speakers review page.
    """
    import av

    buffer = io.BytesIO()
    options = {"fflags": "+bitexact"} if bitexact else {}
    with av.open(buffer, mode="w", format="webm", options=options) as container:
        stream = container.add_stream("libopus", rate=opus_rate, layout="mono")
        stream.bit_rate = bitrate
        if compression_level is not None:
            stream.codec_context.options = {"compression_level": str(compression_level)}
        pcm = np.clip(samples, -1.0, 1.0).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=opus_rate)
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


class AudioTooLongError(AudioError):
    """Decoding stopped because the file is longer than the caller's limit."""


#: PyAV sample format (without the planar "p") -> NumPy dtype, for reading frame buffers.
_SAMPLE_DTYPES = {"flt": np.float32, "dbl": np.float64, "s16": np.int16, "s32": np.int32, "u8": np.uint8}


def _to_mono_float(data: np.ndarray, channels: int, planar: bool) -> np.ndarray:
    """Raw samples of the whole stream (planar: one row per channel) -> mono float32 in [-1, 1]."""
    if data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) * (1.0 / 128.0)
    elif data.dtype == np.int16:
        data = data.astype(np.float32) * (1.0 / 32768.0)
    elif data.dtype == np.int32:
        data = data.astype(np.float32) * (1.0 / 2147483648.0)
    if channels > 1:
        data = data.reshape(channels, -1) if planar else data.reshape(-1, channels).T
        data = data.mean(axis=0, dtype=np.float64 if data.dtype == np.float64 else np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


def _read_soundfile(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int] | None:
    """WAV/FLAC through libsndfile as mono float32; None when it is not what the name says."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return None
    if max_seconds is not None and info.frames > max_seconds * info.samplerate:
        raise AudioTooLongError(f"{path}: longer than {max_seconds:g} s")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return None
    if not data.size:
        raise AudioError(f"{path}: contains no audio samples")
    return _mono(data), int(rate)


def decode_audio_native(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any audio file to mono float32 at its own sample rate: (samples, rate).

    Faster than `decode_audio` (no per-frame resampler or array work: each frame's buffer is
    copied as bytes and converted once at the end; resample the whole clip afterwards, e.g.
    with soxr), and lets the caller measure clipping before resampling smears it.
    Stops with AudioTooLongError once more than `max_seconds` are decoded, so a stray
    hour-long file cannot exhaust memory. Raises AudioError naming the file for corrupt,
    empty or LFS-pointer input.
    """

    path = _check_audio_file(path)
    if path.suffix.lower() in (".wav", ".flac"):  # libsndfile: no per-frame Python work at all
        read = _read_soundfile(path, max_seconds)
        if read is not None:
            return read
    chunks: list[list[bytes]] = []
    rate = channels = total = itemsize = 0
    planar = False
    dtype = None
    limit = None
    with _audio_stream(path) as (container, stream):
        for frame in container.decode(stream):
            if dtype is None:
                rate = frame.sample_rate
                channels = max(1, len(frame.layout.channels))
                planar = frame.format.is_planar
                name = frame.format.name[:-1] if planar else frame.format.name
                if name not in _SAMPLE_DTYPES:  # s64 and other rarities: let swr convert
                    return decode_audio(path, rate), rate
                dtype = _SAMPLE_DTYPES[name]
                itemsize = np.dtype(dtype).itemsize
                chunks = [[] for _ in range(channels if planar else 1)]
                limit = None if max_seconds is None else max_seconds * rate
            elif frame.sample_rate != rate or len(frame.layout.channels) != channels:
                return decode_audio(path, rate), rate  # stream changes mid-way: rare
            samples = frame.samples
            if planar:
                size = samples * itemsize
                for chunk, plane in zip(chunks, frame.planes, strict=False):
                    chunk.append(bytes(memoryview(plane)[:size]))
            else:  # a memoryview slice copies only the samples (bytes(plane) copies the padded buffer)
                chunks[0].append(bytes(memoryview(frame.planes[0])[: samples * channels * itemsize]))
            total += samples
            if limit is not None and total > limit:
                raise AudioTooLongError(f"{path}: longer than {max_seconds:g} s")
    if not total:
        raise AudioError(f"{path}: contains no audio samples")
    data = np.frombuffer(b"".join(b"".join(chunk) for chunk in chunks), dtype=dtype)
    return _to_mono_float(data, channels, planar), rate
