"""Audio I/O shared by the stages: decode anything the recording app makes, write WAV and WebM/Opus.

PyAV (FFmpeg) decodes WebM/Opus, Ogg, MP3, M4A/AAC, WAV and FLAC and resamples in one pass;
soundfile cannot read WebM. Writing 16-bit WAV uses soundfile; WebM/Opus uses PyAV.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"


class AudioError(ValueError):
    """Audio that cannot be used (corrupt, empty, an LFS pointer), naming the file."""


def is_lfs_pointer(path: str | Path) -> bool:
    """True when the file is a Git LFS pointer text instead of the audio itself."""
    with open(path, "rb") as handle:
        return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX


def decode_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode any audio file to mono float32 in [-1, 1] at `sample_rate`.

    Raises AudioError naming the file for corrupt, empty or LFS-pointer input.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    if is_lfs_pointer(path):
        raise AudioError(f"{path}: is a Git LFS pointer, not audio (run `git lfs pull` on the project)")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from None
    if not chunks:
        raise AudioError(f"{path}: contains no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono 16-bit PCM WAV (values clipped to [-1, 1])."""
    import soundfile as sf

    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC file as float32 (mono-mixed) with its sample rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def encode_webm_opus(samples: np.ndarray, sample_rate: int, bitrate: int = 48000) -> bytes:
    """Encode mono float audio as WebM/Opus at 48 kHz, as the Codex recording app does."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = bitrate
        pcm = np.clip(samples, -1.0, 1.0).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=48000)
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


class AudioTooLongError(AudioError):
    """Decoding stopped because the file is longer than the caller's limit."""


def _frame_to_mono(frame) -> np.ndarray:
    """One decoded PyAV frame as mono float32 (channels averaged), whatever its sample format."""
    data = frame.to_ndarray()
    channels = max(1, len(frame.layout.channels))
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype == np.int16:
        data = data.astype(np.float32) * (1.0 / 32768.0)
    elif data.dtype == np.int32:
        data = data.astype(np.float32) * (1.0 / 2147483648.0)
    elif data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) * (1.0 / 128.0)
    elif data.dtype != np.float32:
        data = data.astype(np.float32)
    return data[0] if channels == 1 else data.mean(axis=0, dtype=np.float32)


def decode_audio_native(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any audio file to mono float32 at its own sample rate: (samples, rate).

    Faster than `decode_audio` (no per-frame resampler; resample the whole clip afterwards,
    e.g. with soxr) and lets the caller measure clipping before resampling smears it.
    Stops with AudioError once more than `max_seconds` are decoded, so a stray hour-long file
    cannot exhaust memory. Raises AudioError naming the file for corrupt, empty or LFS input.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    if is_lfs_pointer(path):
        raise AudioError(f"{path}: is a Git LFS pointer, not audio (run `git lfs pull` on the project)")
    chunks: list[np.ndarray] = []
    rate = 0
    total = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                if rate and frame.sample_rate != rate:  # rate changes mid-stream: rare, let swr handle it
                    return decode_audio(path, rate), rate
                rate = frame.sample_rate
                chunk = _frame_to_mono(frame)
                chunks.append(chunk)
                total += chunk.size
                if max_seconds is not None and total > max_seconds * rate:
                    raise AudioTooLongError(f"{path}: longer than {max_seconds:g} s")
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from None
    if not total:
        raise AudioError(f"{path}: contains no audio samples")
    return np.concatenate(chunks), rate


def encode_webm_opus_bitexact(samples: np.ndarray, sample_rate: int, bitrate: int = 48000) -> bytes:
    """`encode_webm_opus`, but byte-reproducible: same samples -> same file.

    FFmpeg's Matroska muxer writes random segment/track UIDs unless told to be bit-exact;
    reproducible files keep DVC outputs and per-file caches stable across runs.
    """
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = bitrate
        pcm = np.clip(samples, -1.0, 1.0).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=48000)
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
