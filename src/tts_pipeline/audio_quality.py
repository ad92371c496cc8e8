"""Pure signal functions for the preprocess stage: loudness, limiting, quality measures.

Everything here takes a mono float32 NumPy array and its sample rate and returns numbers or a
new array: no files, no config, so tests can check each step on synthetic signals.

Why our own BS.1770 loop: pyloudnorm's `integrated_loudness` walks the 400 ms gating blocks in
Python and refuses clips shorter than one block. `integrated_loudness` below uses pyloudnorm's
own K-weighting filter coefficients and the same block arithmetic, vectorised (the tests check
it agrees with pyloudnorm to 0.01 LU), and measures a clip shorter than one block as a single
block instead of failing.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .audio import FRAME_S, frame_power_db

#: BS.1770 gating: 400 ms blocks, 75 % overlap, -70 LUFS absolute and -10 LU relative gates.
BLOCK_S = 0.400
OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
#: Samples at or above this magnitude (about -0.09 dBFS) count as clipped. Not exactly 1.0:
#: lossy codecs (Opus, MP3) ring around a clipped waveform, so the flat top decodes to ~±1 %.
CLIP_LEVEL = 0.99
#: Look-ahead / release of the peak limiter.
LIMITER_WINDOW_S = 0.010


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def peak_db(samples: np.ndarray) -> float:
    """Sample peak in dBFS (-inf for digital silence or an empty array)."""
    if samples.size == 0:
        return -math.inf
    peak = float(max(np.max(samples), -np.min(samples)))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def clipping_ratio(samples: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Fraction of samples at (or ringing around) full scale."""
    if samples.size == 0:
        return 0.0
    clipped = np.count_nonzero(samples >= level) + np.count_nonzero(samples <= -level)  # no |x| copy
    return float(clipped) / samples.size


def estimate_snr_db(samples: np.ndarray, rate: int) -> float:
    """Estimated SNR in dB from 10 ms frame powers, without a VAD.

    Noise = mean power of the quietest 10 % of frames (pauses, lead-in); speech = mean power of
    the loudest half minus that noise. On LibriSpeech clips with white noise mixed in at a known
    SNR between 0 and 30 dB it reads 3-4 dB high (speech frames are louder than the clip
    average), which is close enough to filter noisy takes. Capped at 100 dB (digital silence
    between words would otherwise give infinity); 0 for a clip of fewer than two frames.
    """
    return snr_from_levels(frame_power_db(samples, max(1, round(FRAME_S * rate))))


def snr_from_levels(levels: np.ndarray) -> float:
    """`estimate_snr_db` on precomputed 10 ms frame levels (shared with trimming)."""
    if levels.size < 2:
        return 0.0
    power = np.sort(10.0 ** (levels / 10.0))
    noise = float(power[: max(1, power.size // 10)].mean())
    speech = float(power[power.size // 2 :].mean()) - noise
    if speech <= 0:
        return 0.0
    return float(min(100.0, 10.0 * math.log10(speech / noise)))


@functools.lru_cache(maxsize=8)
def _k_weighting_sos(rate: int) -> np.ndarray:
    """pyloudnorm's K-weighting (high shelf + high pass) at `rate`, as second-order sections."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate)  # K-weighting, BS.1770-4
    stages = [meter._filters["high_shelf"], meter._filters["high_pass"]]
    sos = []
    for stage in stages:
        b = np.asarray(stage.b, dtype=np.float64)
        a = np.asarray(stage.a, dtype=np.float64)
        sos.append(np.concatenate([b / a[0], a / a[0]]))
    return np.array(sos)


def block_energies(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mean-square energy of the K-weighted signal in each BS.1770 gating block.

    The number of blocks and their positions follow pyloudnorm (a last block may run past the
    end and is then divided by the full block length), so results agree with it. Blocks are
    sums of four 100 ms segment energies (one pass over the signal, no cumulative sum of every
    sample). A signal shorter than one block is measured as one block over all its samples.
    """
    from scipy.signal import sosfilt

    n = samples.size
    if n == 0:
        return np.zeros(0)
    weighted = sosfilt(_k_weighting_sos(rate).astype(np.float32), samples.astype(np.float32, copy=False))
    block_len = BLOCK_S * rate
    if n < block_len:
        return np.array([float(np.dot(weighted, weighted)) / n])
    step = 1.0 - OVERLAP
    num_blocks = int(np.round((n / rate - BLOCK_S) / (BLOCK_S * step))) + 1
    hop = BLOCK_S * step * rate
    per_block = round(1.0 / step)
    if hop.is_integer():  # e.g. 1600 samples at 16 kHz: segment sums
        hop = int(hop)
        segments = -(-n // hop)
        padded = np.zeros(segments * hop, dtype=np.float32)
        padded[:n] = weighted
        padded = padded.reshape(segments, hop)
        energy = np.einsum("ij,ij->i", padded, padded, dtype=np.float64)
        cumulative = np.concatenate([[0.0], np.cumsum(energy)])
        j = np.arange(num_blocks)
        totals = cumulative[np.minimum(j + per_block, segments)] - cumulative[np.minimum(j, segments)]
    else:  # rates where 100 ms is not a whole number of samples: pyloudnorm's exact bounds
        j = np.arange(num_blocks, dtype=np.float64)
        lower = (BLOCK_S * (j * step) * rate).astype(np.int64)
        upper = np.minimum((BLOCK_S * (j * step + 1) * rate).astype(np.int64), n)
        cumulative = np.concatenate([[0.0], np.cumsum(np.square(weighted, dtype=np.float64))])
        totals = cumulative[upper] - cumulative[np.minimum(lower, n)]
    return np.maximum(totals, 0.0) / block_len


def integrated_loudness(samples: np.ndarray, rate: int) -> float:
    """Gated integrated loudness (ITU-R BS.1770-4) in LUFS; -inf when everything is gated out."""
    z = block_energies(samples, rate)
    if z.size == 0:
        return -math.inf
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
    above_absolute = block_lufs >= ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return -math.inf
    relative_gate = -0.691 + 10.0 * math.log10(float(z[above_absolute].mean())) + RELATIVE_GATE_LU
    gated = (block_lufs > relative_gate) & (block_lufs > ABSOLUTE_GATE_LUFS)
    if not gated.any():
        return -math.inf
    return -0.691 + 10.0 * math.log10(float(z[gated].mean()))


def limit_peaks(samples: np.ndarray, rate: int, ceiling: float) -> np.ndarray:
    """Look-ahead peak limiter: no sample exceeds `ceiling` (linear), with a smooth gain curve.

    The gain each sample needs is min(1, ceiling/|x|); a running minimum over +-W then a moving
    average over W makes a curve that is never above the needed gain (every averaged value
    comes from a window containing the sample), ramping over ~10 ms instead of hard clipping.
    Only the few peaks above the ceiling are touched, so loudness barely moves.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    magnitude = np.abs(samples)
    if samples.size == 0 or float(magnitude.max()) <= ceiling:
        return samples
    needed = np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-12)).astype(np.float32)
    window = max(1, round(LIMITER_WINDOW_S * rate))
    gain = minimum_filter1d(needed, size=2 * window + 1, mode="nearest")
    gain = uniform_filter1d(gain, size=window + 1, mode="nearest")
    gain = np.minimum(gain, needed)  # guards against float rounding in the average
    return (samples * gain).astype(np.float32, copy=False)


def normalize_loudness(
    samples: np.ndarray, rate: int, loudness: float, target_lufs: float, ceiling_db: float
) -> tuple[np.ndarray, float, bool]:
    """Scale to `target_lufs`, keeping peaks under `ceiling_db` dBFS with the limiter.

    Returns (audio, gain_db, limited). When the limiter engages it lowers loudness slightly;
    one correction step re-measures and makes up the difference (then limits again).
    """
    ceiling = db_to_gain(ceiling_db)
    gain_db = target_lufs - loudness
    out = (samples * db_to_gain(gain_db)).astype(np.float32, copy=False)
    limited = bool(out.size) and float(np.max(np.abs(out))) > ceiling
    if limited:
        base = out
        out = limit_peaks(base, rate, ceiling)
        # The limiter touches a few milliseconds of peaks: when the plain energy drops by less
        # than 0.05 dB, so does the loudness, and re-measuring (a filter pass) is skipped.
        before, after = float(np.dot(base, base)), float(np.dot(out, out))
        if after > 0 and 10.0 * math.log10(before / after) < 0.05:
            return out, gain_db, limited
        for _ in range(2):
            shortfall = target_lufs - integrated_loudness(out, rate)
            if not math.isfinite(shortfall) or abs(shortfall) < 0.05:
                break
            gain_db += shortfall
            base = (base * db_to_gain(shortfall)).astype(np.float32, copy=False)
            out = limit_peaks(base, rate, ceiling)
    return out, gain_db, limited


def count_speech_chars(text: str) -> int:
    """Characters that are spoken: letters and digits of any script (no spaces, no punctuation)."""
    import unicodedata

    return sum(1 for ch in text if unicodedata.category(ch)[0] in "LN")
