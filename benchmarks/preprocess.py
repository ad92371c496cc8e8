"""Benchmark the preprocess stage against a plain baseline, in the same process.

Corpus: the repo's test clips (tests/data/librispeech-6spk, 60 LibriSpeech utterances) decoded
and re-encoded to 48 kHz WebM/Opus as the Codex recording app writes them, repeated until the
corpus holds >= `--minutes` of audio. Every repetition gets a slightly different gain, so no
two files have the same bytes and the stage's content-hash cache cannot short-cut any of them.

Measured (real-time factor = seconds of audio / seconds of processing, per core):
  stage     `preprocess_corpus` on the Opus files, cold cache: decode, measure peak/clipping,
            resample, SNR, trim, loudness, normalise + limiter, filters, write WAV + metadata
  warm      the same again with the cache filled (what a re-run costs)
  baseline  librosa.load(sr=16000) + pyloudnorm measure/normalise + soundfile.write PCM_16, on
            the same audio already decoded to 48 kHz WAV (so the baseline skips Opus decoding)
  stage/wav the stage on the baseline's WAV files: the same work minus Opus decoding
  pool      the stage with all cores, RTF divided by the number of workers
Imports and first calls are warmed up before timing (pool workers fork from the warm process).
Peak RSS is sampled (psutil, every 50 ms) over the process (and its pool workers) for each phase;
the stage also runs on a quarter of the corpus to show memory does not grow with corpus size.

    python benchmarks/preprocess.py [--minutes 30] [--work_dir /tmp/tts-bench-preprocess]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tts_pipeline.audio import decode_audio_native, encode_webm_opus
from tts_pipeline.preprocess import Filters, ProcessParams, default_workers, preprocess_corpus

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "librispeech-6spk"


@dataclass
class Measure:
    name: str
    audio_s: float
    wall_s: float
    cpu_s: float
    cores: int
    peak_rss_mb: float

    @property
    def rtf_per_core(self) -> float:
        return self.audio_s / (self.wall_s * self.cores)

    @property
    def rtf_per_cpu_s(self) -> float:
        return self.audio_s / self.cpu_s

    def line(self) -> str:
        return (
            f"{self.name:<24} {self.wall_s:7.2f} s wall  {self.cpu_s:7.2f} s cpu  x{self.cores}  "
            f"RTF/core {self.rtf_per_core:7.0f}x  (per cpu-s {self.rtf_per_cpu_s:6.0f}x)  "
            f"peak RSS {self.peak_rss_mb:6.0f} MB"
        )


class RssSampler:
    """Peak resident memory of this process + its children while the block runs."""

    def __init__(self, interval: float = 0.05, children: bool = False) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.children = children
        self.peak = 0
        self._stop = threading.Event()

    def _total(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True) if self.children else ():
            with contextlib.suppress(Exception):  # a worker that just exited
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self._total()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(name: str, audio_s: float, cores: int, fn: Callable[[], object]) -> Measure:
    times0 = os.times()
    wall0 = time.perf_counter()
    with RssSampler(children=cores > 1) as rss:
        fn()
    wall = time.perf_counter() - wall0
    times1 = os.times()
    cpu = sum(
        getattr(times1, k) - getattr(times0, k)
        for k in ("user", "system", "children_user", "children_system")
    )
    return Measure(name, audio_s, wall, cpu, cores, rss.peak / 2**20)


def build_corpus(work: Path, minutes: float) -> tuple[Path, Path, float, int]:
    """Opus corpus (raw/metadata.csv + audio/*.webm) and the same audio as 48 kHz WAV."""
    raw, wav = work / "raw", work / "wav"
    marker = work / "corpus.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("minutes") == minutes:
            return raw, wav, info["audio_s"], info["files"]
    shutil.rmtree(work, ignore_errors=True)
    (raw / "audio").mkdir(parents=True)
    wav.mkdir()
    sources = sorted(CLIPS.glob("*/*.webm"))
    decoded = [decode_audio_native(p) for p in sources]
    set_seconds = sum(len(x) / r for x, r in decoded)
    repeats = int(np.ceil(minutes * 60 / set_seconds))
    rows, audio_s = [], 0.0
    print(f"building corpus: {len(sources)} clips x {repeats} = {repeats * set_seconds / 60:.1f} min ...")
    for k in range(repeats):
        gain = 1.0 - 0.02 * k  # distinct bytes per repetition
        for src, (x, rate) in zip(sources, decoded, strict=True):
            stem = f"{src.stem}-r{k}"
            data = encode_webm_opus(x * gain, rate)
            (raw / "audio" / f"{stem}.webm").write_bytes(data)
            # the baseline's input: the same Opus audio decoded to 48 kHz WAV
            opus, opus_rate = decode_audio_native(raw / "audio" / f"{stem}.webm")
            sf.write(wav / f"{stem}.wav", opus, opus_rate, subtype="PCM_16")
            seconds = len(opus) / opus_rate
            audio_s += seconds
            rows.append({"file_name": f"audio/{stem}.webm", "transcription": "a" * int(seconds * 14)})
    with open(raw / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription"])
        writer.writeheader()
        writer.writerows(rows)
    marker.write_text(json.dumps({"minutes": minutes, "audio_s": audio_s, "files": len(rows)}))
    return raw, wav, audio_s, len(rows)


def baseline(wav_dir: Path, out_dir: Path, target: float = -20.0, limit: int | None = None) -> None:
    """The plain way: librosa.load at 16 kHz, pyloudnorm measure + normalise, soundfile.write."""
    import librosa
    import pyloudnorm

    out_dir.mkdir(parents=True, exist_ok=True)
    meter = pyloudnorm.Meter(16000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyloudnorm warns when normalising would clip
        for path in sorted(wav_dir.glob("*.wav"))[:limit]:
            y, sr = librosa.load(path, sr=16000, mono=True)
            loudness = meter.integrated_loudness(y)
            y = pyloudnorm.normalize.loudness(y, loudness, target)
            sf.write(out_dir / path.name, y, sr, subtype="PCM_16")


def subset_metadata(raw: Path, fraction: float, wav_dir: Path | None = None) -> Path:
    """A metadata.csv with the first `fraction` of the rows (pointing at the WAV copies if given)."""
    with open(raw / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows = rows[: max(1, int(len(rows) * fraction))]
    if wav_dir is not None:
        rows = [
            {**r, "file_name": str(wav_dir / Path(r["file_name"]).with_suffix(".wav").name)} for r in rows
        ]
    path = raw.parent / f"metadata-{fraction:g}{'-wav' if wav_dir else ''}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="corpus length (default 30)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/tts-bench-preprocess"))
    parser.add_argument(
        "--workers", type=int, default=None, help="pool size for the pool phase (default: all cores)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    raw, wav, audio_s, files = build_corpus(args.work_dir, args.minutes)
    print(f"corpus: {files} Opus files, {audio_s / 60:.1f} min of audio, in {args.work_dir}")
    runs = args.work_dir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    filters = Filters(max_duration_s=60.0)  # keep every LibriSpeech clip (some are > 20 s)
    workers = args.workers or default_workers()

    def stage(
        name: str, cache: str, metadata: Path | None = None, n: int = 1, base: Path = raw
    ) -> Callable[[], object]:
        def go() -> object:
            summary = preprocess_corpus(
                metadata or raw / "metadata.csv",
                runs / name,
                runs / cache,
                ProcessParams(),
                filters,
                input_dir=base,
                workers=n,
                progress=False,
            )
            assert summary.kept == summary.total, summary.format()
            return summary

        return go

    quarter = subset_metadata(raw, 0.25)
    all_wav = subset_metadata(raw, 1.0, wav)
    warm_up = subset_metadata(raw, 0.04)
    stage("warm-up", "cache-warm-up", warm_up)()  # imports, filter design, first calls
    baseline(wav, runs / "baseline-warm-up", limit=2)
    results = [
        measure("stage (1 core, cold)", audio_s, 1, stage("stage", "cache-1")),
        measure("stage on WAV (1 core)", audio_s, 1, stage("stage-wav", "cache-wav", all_wav, base=wav)),
        measure("baseline on WAV (1 core)", audio_s, 1, lambda: baseline(wav, runs / "baseline")),
        measure("stage (1 core, warm)", audio_s, 1, stage("warm", "cache-1")),
        measure("stage 1/4 corpus (cold)", audio_s / 4, 1, stage("quarter", "cache-q", quarter)),
        measure(f"stage ({workers} workers)", audio_s, workers, stage("pool", "cache-pool", n=workers)),
    ]
    for r in results:
        print(r.line())
    cold, on_wav, base = results[0], results[1], results[2]
    ratio_wall = cold.rtf_per_core / base.rtf_per_core
    ratio_cpu = cold.rtf_per_cpu_s / base.rtf_per_cpu_s
    ratio_wav = on_wav.rtf_per_cpu_s / base.rtf_per_cpu_s
    print(
        f"stage (Opus in) / baseline (WAV in) speed: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x cpu time; "
        f"same WAV input: {ratio_wav:.2f}x cpu time"
    )
    print(
        f"peak RSS: full corpus {cold.peak_rss_mb:.0f} MB vs quarter corpus {results[4].peak_rss_mb:.0f} MB "
        "(flat = streaming)"
    )
    if args.json:
        figures = {
            r.name: {
                "wall_s": round(r.wall_s, 3),
                "cpu_s": round(r.cpu_s, 3),
                "rtf_per_core": round(r.rtf_per_core, 1),
                "peak_rss_mb": round(r.peak_rss_mb, 1),
            }
            for r in results
        }
        figures["ratio_stage_over_baseline"] = round(ratio_wall, 3)
        figures["ratio_stage_over_baseline_cpu"] = round(ratio_cpu, 3)
        figures["ratio_stage_on_wav_over_baseline_cpu"] = round(ratio_wav, 3)
        figures["audio_minutes"] = round(audio_s / 60, 2)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
