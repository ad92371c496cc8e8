"""Speech measures of the evaluate stage on real recordings (tests/data/librispeech-6spk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tts_pipeline.audio import decode_audio, resample
from tts_pipeline.speech_metrics import (
    MetricThresholds,
    clipping_ratio,
    is_silent,
    mcd_dtw,
    measure_sample,
    mel_cepstrum,
    speaker_similarity,
    speech_duration_s,
    summarize,
    summarize_by_speaker,
    trim_silence,
)

DATA = Path(__file__).parent / "data" / "librispeech-6spk"
SR = 16000


def _clip(speaker: str, n: int, seconds: float = 4.0) -> np.ndarray:
    files = sorted((DATA / speaker).glob("*.webm"))
    return decode_audio(files[n], SR)[: int(seconds * SR)]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return _clip("1688", 0)


def _with_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2)))
    noise = np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    return x + noise * rms * 10 ** (-snr_db / 20)


def test_mcd_is_zero_for_identical_audio(speech: np.ndarray) -> None:
    assert mcd_dtw(speech, speech.copy(), SR) == pytest.approx(0.0, abs=1e-9)


def test_mcd_ignores_overall_gain(speech: np.ndarray) -> None:
    # c0 is left out and the log floor is relative: a louder copy has the same envelope.
    assert mcd_dtw(speech, 0.3 * speech, SR) < 0.01


def test_mcd_grows_monotonically_with_noise(speech: np.ndarray) -> None:
    values = [mcd_dtw(speech, _with_noise(speech, snr), SR) for snr in (40, 30, 20, 10, 0)]
    assert values[0] > 0.5
    assert all(b > a for a, b in zip(values[:-1], values[1:], strict=True)), values
    # Another speaker saying something else is farther from the reference than light noise.
    assert values[1] < mcd_dtw(speech, _clip("3080", 0), SR)


def test_mcd_is_symmetric_enough_and_time_warp_tolerant(speech: np.ndarray) -> None:
    # The same audio with 0.3 s of silence inserted in the middle stays close: DTW absorbs it.
    half = speech.size // 2
    stretched = np.concatenate([speech[:half], np.zeros(int(0.3 * SR), np.float32), speech[half:]])
    shifted = mcd_dtw(speech, stretched, SR)
    assert shifted < mcd_dtw(speech, _with_noise(speech, 30), SR)
    assert mcd_dtw(stretched, speech, SR) == pytest.approx(shifted, rel=0.5)


def test_mel_cepstrum_shape_and_short_input() -> None:
    cep = mel_cepstrum(np.zeros(100, np.float32), SR)
    assert cep.shape[1] == 24 and cep.shape[0] >= 1
    assert np.isfinite(cep).all()
    assert mel_cepstrum(np.ones(SR, np.float32) * 0.1, SR).shape[0] == 101  # 10 ms hop, centred


def test_resample_keeps_duration(speech: np.ndarray) -> None:
    up = resample(speech, SR, 22050)
    assert abs(up.size - speech.size * 22050 / SR) <= 1
    assert resample(speech, SR, SR) is not None and resample(speech, SR, SR).size == speech.size


def test_silence_clipping_and_duration(speech: np.ndarray) -> None:
    assert is_silent(np.zeros(SR, np.float32))
    assert is_silent(np.zeros(0, np.float32))
    assert is_silent(np.full(10, np.nan, np.float32))
    assert is_silent(speech * 1e-4)  # peak around -80 dBFS
    assert not is_silent(speech)
    assert clipping_ratio(speech) == 0.0
    loud = np.clip(speech * 50, -1.5, 1.5)
    assert clipping_ratio(loud) > 0.01
    padded = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(2 * SR, np.float32)])
    assert speech_duration_s(padded, SR) == pytest.approx(speech_duration_s(speech, SR), abs=0.05)
    assert trim_silence(np.zeros(SR, np.float32), SR).size == 0


def test_measure_sample_flags_broken_output(speech: np.ndarray) -> None:
    silent = measure_sample(speech, np.zeros(SR, np.float32), SR)
    assert silent.silent and silent.mcd_dtw is None and silent.duration_ratio is None
    clipped = measure_sample(speech, np.clip(speech * 50, -1.2, 1.2), SR, thresholds=MetricThresholds())
    assert clipped.clipped and not clipped.silent and clipped.mcd_dtw is not None
    slow = measure_sample(speech, np.repeat(speech, 2), SR)
    assert slow.duration_ratio == pytest.approx(2.0, rel=0.05)
    summary = summarize([silent, clipped, slow])
    assert summary["silent_fraction"] == pytest.approx(1 / 3, abs=1e-5)
    assert summary["clipped_fraction"] == pytest.approx(1 / 3, abs=1e-5)
    assert summary["num_samples"] == 3
    # The mean skips undefined values (silent output has no MCD).
    assert summary["mcd_dtw"] == pytest.approx(np.mean([clipped.mcd_dtw, slow.mcd_dtw]), rel=1e-4)
    by = summarize_by_speaker([("a", silent), ("b", clipped), ("b", slow)]).to_dict()
    assert by["per_speaker"]["a"]["silent_fraction"] == 1.0
    assert by["per_speaker"]["b"]["num_samples"] == 2
    assert by["mcd_dtw"] == summary["mcd_dtw"]


def test_speaker_similarity_same_speaker_higher_than_different(embedder) -> None:
    speakers = sorted(p.name for p in DATA.iterdir() if p.is_dir())
    assert len(speakers) == 6
    emb = {(s, n): embedder.embed(_clip(s, n), SR) for s in speakers for n in range(3)}
    for s in speakers:
        same = [speaker_similarity(emb[(s, a)], emb[(s, b)]) for a in range(3) for b in range(a + 1, 3)]
        other = [
            speaker_similarity(emb[(s, a)], emb[(t, b)])
            for a in range(3)
            for t in speakers
            if t != s
            for b in range(3)
        ]
        assert np.mean(same) > np.mean(other) + 0.1, (s, np.mean(same), np.mean(other))
    # The measure used per sentence is this same cosine.
    m = measure_sample(_clip("1688", 0), _clip("1688", 1), SR, emb[("1688", 0)], emb[("1688", 1)])
    assert m.speaker_similarity == pytest.approx(speaker_similarity(emb[("1688", 0)], emb[("1688", 1)]))
    assert speaker_similarity(emb[("1688", 0)], emb[("1688", 0)]) == pytest.approx(1.0, abs=1e-5)


def test_evaluation_trims_speech_the_way_preprocess_does(speech: np.ndarray) -> None:
    """duration_ratio measures the speech preprocess would keep: same trimmer, same settings."""
    from tts_pipeline.audio import trim_bounds
    from tts_pipeline.config import AudioSection, EvaluationSection

    padded = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(2 * SR, np.float32)])
    start, end = trim_bounds(padded, SR, -40.0, 0.1)
    assert np.array_equal(trim_silence(padded, SR, -40.0, 0.1), padded[start:end])
    defaults = MetricThresholds()
    assert (defaults.trim_threshold_db, defaults.trim_margin_s) == (
        AudioSection.trim_threshold_db,
        AudioSection.trim_margin_s,
    )
    assert defaults.silence_threshold_db == EvaluationSection.silence_threshold_db
    measured = measure_sample(speech, padded, SR, thresholds=defaults)
    assert measured.synth_duration_s == pytest.approx((end - start) / SR)
