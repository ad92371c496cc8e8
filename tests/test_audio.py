"""audio.py basics: the one resampler, the one WAV-bytes encoder and decoder."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from tts_pipeline.audio import AudioError, decode_wav_bytes, resample, wav_bytes, write_wav

SR = 16000


def _tone(seconds: float = 0.5, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_wav_bytes_round_trip_and_clip(tmp_path: Path) -> None:
    x = _tone()
    x[:2] = [1.7, -1.7]  # out of range: clipped, not wrapped
    data = wav_bytes(x, SR)
    with wave.open(io.BytesIO(data)) as handle:
        assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (1, 2, SR)
        assert handle.getnframes() == x.size
    back, rate = decode_wav_bytes(data, "clip.wav")
    assert rate == SR and back.dtype == np.float32
    assert np.abs(back[2:] - x[2:]).max() < 1.5 / 32767
    assert back[0] == pytest.approx(32767 / 32768) and back[1] == pytest.approx(-32767 / 32768)
    write_wav(tmp_path / "a.wav", x, SR)
    assert (tmp_path / "a.wav").read_bytes() == data  # one encoder: file and bytes are the same


def test_decode_wav_bytes_names_what_is_wrong() -> None:
    with pytest.raises(AudioError, match="row 3: no audio bytes"):
        decode_wav_bytes(None, "row 3")
    with pytest.raises(AudioError, match="row 4: cannot decode"):
        decode_wav_bytes(b"not a wav file at all", "row 4")


def test_resample_keeps_duration_and_passes_through() -> None:
    x = _tone(1.0, 48000)
    down = resample(x, 48000, SR)
    assert down.dtype == np.float32 and down.size == SR
    assert resample(x, 48000, 48000) is x
    assert resample(np.zeros(0, np.float32), 48000, SR).size == 0
