"""One clip's signal processing and quality checks for the preprocess stage (no files, no cache).

`process_audio` turns decoded samples into the clip the dataset will hold (resample, remove a DC
offset, trim silence, normalise loudness) and measures it; `check_filters` and
`check_declared_length` decide whether it is kept. `preprocess.py` runs these over the corpus
in a process pool, with the per-file cache. The settings records take their values from the
frozen config (`audio`, `preprocess` sections); their defaults are the config's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import audio_quality as aq
from .audio import FRAME_S, frame_power_db, resample, trim_bounds_from_levels
from .config import AudioSection, Config, PreprocessSection

#: A mean above this (-60 dBFS) is a DC offset and is removed; below it the output stays as
#: it was (speech itself averages ~1e-5), so fixing offsets did not change every clean clip.
DC_OFFSET_MIN = 1e-3


@dataclass(frozen=True)
class ProcessParams:
    """Every setting that changes a clip's WAV or measures (all of it goes into the cache key).

    A record of its own (not `AudioSection`) because its field names are part of every cache key.
    """

    sample_rate: int = AudioSection.sample_rate
    target_lufs: float = AudioSection.target_db
    peak_ceiling_db: float = AudioSection.peak_ceiling_db
    trim_silence: bool = AudioSection.trim_silence
    trim_threshold_db: float = AudioSection.trim_threshold_db
    trim_margin_s: float = AudioSection.trim_margin_s

    @classmethod
    def from_config(cls, cfg: Config) -> ProcessParams:
        a = cfg.audio
        return cls(
            sample_rate=a.sample_rate,
            target_lufs=a.target_db,
            peak_ceiling_db=a.peak_ceiling_db,
            trim_silence=a.trim_silence,
            trim_threshold_db=a.trim_threshold_db,
            trim_margin_s=a.trim_margin_s,
        )


@dataclass(frozen=True)
class Filters:
    """Accept/reject thresholds, applied to (cached) measures on every run; None = off."""

    min_duration_s: float = PreprocessSection.min_duration_s
    max_duration_s: float = PreprocessSection.max_duration_s
    max_clipping_ratio: float = PreprocessSection.max_clipping_ratio
    min_snr_db: float | None = PreprocessSection.min_snr_db
    min_chars_per_second: float | None = PreprocessSection.min_chars_per_second
    max_chars_per_second: float | None = PreprocessSection.max_chars_per_second
    min_loudness_lufs: float = PreprocessSection.min_loudness_db
    speech_rate_outlier_sigmas: float | None = PreprocessSection.speech_rate_outlier_sigmas

    @classmethod
    def from_config(cls, cfg: Config) -> Filters:
        p = cfg.preprocess
        return cls(
            min_duration_s=p.min_duration_s,
            max_duration_s=p.max_duration_s,
            max_clipping_ratio=p.max_clipping_ratio,
            min_snr_db=p.min_snr_db,
            min_chars_per_second=p.min_chars_per_second,
            max_chars_per_second=p.max_chars_per_second,
            min_loudness_lufs=p.min_loudness_db,
            speech_rate_outlier_sigmas=p.speech_rate_outlier_sigmas,
        )


@dataclass
class ClipMeasures:
    """What one clip measured; `duration_s` is the output (trimmed) length."""

    duration_s: float
    trimmed_s: float
    peak_db: float
    loudness_before_lufs: float
    clipping_ratio: float
    snr_db: float
    input_duration_s: float
    input_sample_rate: int
    gain_db: float
    limited: bool


@dataclass
class Rejection:
    reason: str
    detail: str


def process_audio(
    samples: np.ndarray, rate: int, params: ProcessParams
) -> tuple[np.ndarray | None, ClipMeasures]:
    """Measure, resample, trim and loudness-normalise one decoded clip.

    Peak and clipping are measured at the input rate (resampling would smear them); SNR and
    loudness on the 16 kHz signal the dataset will contain. Returns (None, measures) for a clip
    with no measurable loudness (silent): there is nothing to normalise.
    """
    sr = params.sample_rate
    peak = aq.peak_db(samples)
    clipping = aq.clipping_ratio(samples)
    x = resample(samples, rate, sr)
    # A DC offset (cheap microphones, some sound cards) is inaudible to K-weighted loudness but
    # not to the peak limiter or the frame levels: left in, the gain pushes it into the ceiling
    # and the limiter squashes the speech, and trimming/SNR read the offset as constant noise.
    dc = float(np.mean(x, dtype=np.float64)) if x.size else 0.0
    if abs(dc) > DC_OFFSET_MIN:
        x = (x - np.float32(dc)).astype(np.float32, copy=False)
    frame = max(1, round(FRAME_S * sr))
    levels = frame_power_db(x, frame)  # 10 ms frame levels, for both SNR and trimming
    snr = aq.snr_from_levels(levels)
    full_length = x.size
    start, end = (0, full_length)
    if params.trim_silence:
        start, end = trim_bounds_from_levels(
            levels, full_length, frame, sr, params.trim_threshold_db, params.trim_margin_s
        )
    x = x[start:end]
    loudness = aq.integrated_loudness(x, sr)
    measures = ClipMeasures(
        duration_s=x.size / sr,
        trimmed_s=(full_length - x.size) / sr,
        peak_db=peak,
        loudness_before_lufs=loudness,
        clipping_ratio=clipping,
        snr_db=snr,
        input_duration_s=samples.size / rate,
        input_sample_rate=rate,
        gain_db=0.0,
        limited=False,
    )
    if not math.isfinite(loudness):
        return None, measures
    out, gain_db, limited = aq.normalize_loudness(x, sr, loudness, params.target_lufs, params.peak_ceiling_db)
    measures.gain_db = gain_db
    measures.limited = limited
    return out, measures


def check_filters(measures: ClipMeasures, transcription: str, filters: Filters) -> Rejection | None:
    """The first filter a clip fails, with the numbers in the detail; None when it passes."""
    m = measures
    if not math.isfinite(m.loudness_before_lufs) or m.loudness_before_lufs < filters.min_loudness_lufs:
        return Rejection(
            "silent", f"loudness {m.loudness_before_lufs:.1f} LUFS < {filters.min_loudness_lufs:g}"
        )
    if m.duration_s < filters.min_duration_s:
        return Rejection("too_short", f"{m.duration_s:.2f} s after trimming < {filters.min_duration_s:g} s")
    if m.duration_s > filters.max_duration_s:
        return Rejection("too_long", f"{m.duration_s:.2f} s after trimming > {filters.max_duration_s:g} s")
    if m.clipping_ratio > filters.max_clipping_ratio:
        return Rejection(
            "clipped", f"{m.clipping_ratio:.4%} of samples at full scale > {filters.max_clipping_ratio:.4%}"
        )
    if filters.min_snr_db is not None and m.snr_db < filters.min_snr_db:
        return Rejection("low_snr", f"estimated SNR {m.snr_db:.1f} dB < {filters.min_snr_db:g} dB")
    chars = aq.count_speech_chars(transcription)
    if chars == 0:
        return Rejection("empty_transcription", "no letters or digits in the transcription")
    rate = chars / m.duration_s
    if filters.min_chars_per_second is not None and rate < filters.min_chars_per_second:
        return Rejection(
            "speech_rate_low",
            f"{rate:.1f} chars/s < {filters.min_chars_per_second:g} (transcript shorter than the audio?)",
        )
    if filters.max_chars_per_second is not None and rate > filters.max_chars_per_second:
        return Rejection(
            "speech_rate_high",
            f"{rate:.1f} chars/s > {filters.max_chars_per_second:g} (transcript longer than the audio?)",
        )
    return None


#: A clip that decodes to less than this fraction of the length collect recorded for it (the
#: recording app's `duration_s`), and TRUNCATED_MIN_S shorter, was cut short by an interrupted
#: upload or download: FFmpeg decodes what is there without an error. The app's timer is not
#: sample-exact, hence the margins.
TRUNCATED_RATIO = 0.8
TRUNCATED_MIN_S = 0.5


def check_declared_length(measures: ClipMeasures, declared: str | None) -> Rejection | None:
    """A `truncated` rejection when the decoded input is far shorter than the metadata's
    `duration_s` (raw metadata only: an empty or absent column checks nothing)."""
    try:
        expected = float(declared or "")
    except ValueError:
        return None
    got = measures.input_duration_s
    if not math.isfinite(expected) or got >= expected * TRUNCATED_RATIO or expected - got <= TRUNCATED_MIN_S:
        return None
    return Rejection(
        "truncated", f"decodes to {got:.1f} s of the {expected:.1f} s recorded: cut short? fetch it again"
    )
