"""Short, noisy versions of real clips (what phone recordings of single verses look like).

Shared by tests/test_speaker_clustering.py and benchmarks/speaker_robustness.py. Deterministic:
the same seed gives the same cuts and noise. No recorded noise ships with the repository, so
the noise is synthetic: pink (1/f power, closer to room and street noise) or white.
"""

from __future__ import annotations

import numpy as np

RATE = 16000


def noise(n: int, rng: np.random.Generator, colour: str = "pink") -> np.ndarray:
    """Unit-RMS white or pink (1/f power spectrum) noise of n samples."""
    white = rng.standard_normal(n)
    if colour == "white":
        return white / np.std(white)
    spectrum = np.fft.rfft(white)
    freqs = np.arange(len(spectrum), dtype=float)
    freqs[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return pink / np.std(pink)


def short_cut(wav: np.ndarray, rng: np.random.Generator, lo_s: float = 1.5, hi_s: float = 4.0) -> np.ndarray:
    """One random lo_s-hi_s second cut of a 16 kHz clip."""
    length = int(rng.uniform(lo_s, hi_s) * RATE)
    start = int(rng.integers(0, max(1, len(wav) - length)))
    return wav[start : start + length]


def add_noise(wav: np.ndarray, rng: np.random.Generator, snr_db: float, colour: str = "pink") -> np.ndarray:
    """wav plus noise at snr_db (speech RMS over noise RMS)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    return (wav + noise(len(wav), rng, colour) * rms / 10 ** (snr_db / 20)).astype(np.float32)


def variants(
    wavs: list[np.ndarray], seed: int = 0, snr_db: float = 15.0, colour: str = "pink"
) -> dict[str, list[np.ndarray]]:
    """clean (as given), short (one 1.5-4 s cut each), noisy (those cuts + noise at snr_db)."""
    rng = np.random.default_rng(seed)
    short = [short_cut(w, rng) for w in wavs]
    noisy = [add_noise(cut, rng, snr_db, colour) for cut in short]
    return {"clean": wavs, "short": short, "noisy": noisy}
