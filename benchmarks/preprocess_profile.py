"""Profile of one preprocess worker: where the time of a clip goes (decode, resample, loudness, write).

Corpus: the 60 bundled LibriSpeech clips (tests/data/librispeech-6spk) re-encoded to 48 kHz
WebM/Opus as the Codex recording app writes them (copies, not new recordings). Each clip runs
through the same calls `preprocess._compute_entry` makes, timed step by step, `--repeat` times,
in this one process (one core). Prints seconds per step, its share, and the real-time factor
(seconds of audio per second of work) of each step and of the whole.

    python benchmarks/preprocess_profile.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from tts_pipeline import audio, preprocess
from tts_pipeline import audio_quality as aq
from tts_pipeline.audio import decode_audio_native

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "librispeech-6spk"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    params = preprocess.ProcessParams()
    sr = params.sample_rate
    steps: dict[str, float] = defaultdict(float)
    audio_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for i, path in enumerate(sorted(DATA.glob("*/*.webm"))):
            x = audio.decode_audio(path, 48000)
            target = Path(tmp) / f"{i:03d}.webm"
            target.write_bytes(audio.encode_webm_opus(x, 48000))
            sources.append(target)
        out = Path(tmp) / "out.wav"
        preprocess.process_audio(*decode_audio_native(sources[0]), params)  # warm up imports
        for _ in range(args.repeat):
            for source in sources:
                t0 = time.perf_counter()
                samples, rate = decode_audio_native(source, max_seconds=preprocess.MAX_DECODE_S)
                np.isfinite(samples).all()
                t1 = time.perf_counter()
                aq.peak_db(samples), aq.clipping_ratio(samples)
                t2 = time.perf_counter()
                x = audio.resample(samples, rate, sr)
                t3 = time.perf_counter()
                x = x - np.float32(np.mean(x, dtype=np.float64))
                frame = max(1, round(audio.FRAME_S * sr))
                levels = audio.frame_power_db(x, frame)
                aq.snr_from_levels(levels)
                start, end = audio.trim_bounds_from_levels(
                    levels, x.size, frame, sr, params.trim_threshold_db, params.trim_margin_s
                )
                x = x[start:end]
                t4 = time.perf_counter()
                loudness = aq.integrated_loudness(x, sr)
                t5 = time.perf_counter()
                if math.isfinite(loudness):
                    x, _, _ = aq.normalize_loudness(
                        x, sr, loudness, params.target_lufs, params.peak_ceiling_db
                    )
                t6 = time.perf_counter()
                audio.write_wav(out, x, sr)
                t7 = time.perf_counter()
                audio_s += samples.size / rate
                for name, a, b in (
                    ("decode (Opus, 48 kHz)", t0, t1),
                    ("peak + clipping (48 kHz)", t1, t2),
                    ("resample 48 -> 16 kHz (soxr HQ)", t2, t3),
                    ("DC, frame levels, SNR, trim", t3, t4),
                    ("loudness (K-weighting, BS.1770)", t4, t5),
                    ("gain + limiter", t5, t6),
                    ("write 16-bit WAV", t6, t7),
                ):
                    steps[name] += b - a
    total = sum(steps.values())
    print(
        json.dumps(
            {
                "corpus": f"{len(sources)} bundled clips re-encoded to 48 kHz WebM/Opus, x{args.repeat}",
                "audio_s": round(audio_s, 1),
                "work_s": round(total, 2),
                "rtf_per_core": round(audio_s / total, 1),
                "steps": {
                    name: {"s": round(t, 3), "share": round(t / total, 3), "rtf": round(audio_s / t)}
                    for name, t in sorted(steps.items(), key=lambda kv: -kv[1])
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
