"""Benchmark: peak memory of the dataset stage at growing corpus sizes (is it flat?).

The corpus is N COPIES of the 60 bundled LibriSpeech clips (tests/data/librispeech-6spk, about
8 s each), decoded once to 16 kHz WAV and copied N/60 times under new names, six speakers,
with a speaker_ids.json, as the preprocess and speakers stages would leave them. Each size is
built by `dataset.build_dataset` in a fresh child process; the parent samples the child's
/proc/<pid>/status every 20 ms:

- RssAnon: the program's own memory (heap, Python objects, Arrow buffers it allocated).
  Memory-mapped Arrow files are RssFile and are not counted: the kernel drops those pages
  under pressure, so they do not limit the corpus size.
- VmHWM: the whole resident peak (anonymous + file pages), for comparison with earlier reports.

    python benchmarks/dataset_memory.py [--clips 600 3000] [--workdir DIR]

Prints JSON: per size the peak RssAnon/VmHWM in MB, the wall time, and the ratio of the largest
size's peak RssAnon to the smallest (done-when of issue 18: within 10 %).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "librispeech-6spk"


def make_corpus(root: Path, n: int) -> tuple[Path, Path, Path]:
    """root/pre/audio/*.wav + metadata.csv, root/speakers/speaker_ids.json: n copies of the bundled clips."""
    from tts_pipeline import audio, fsutil

    pre = root / "pre"
    (pre / "audio").mkdir(parents=True)
    sources = sorted(DATA.glob("*/*.webm"))
    speakers = sorted({p.parent.name for p in sources})
    decoded = root / "decoded"
    decoded.mkdir()
    for src in sources:
        audio.write_wav(decoded / f"{src.parent.name}_{src.stem}.wav", audio.decode_audio(src, 16000), 16000)
    rows, clips = [], {}
    for i in range(n):
        src = sources[i % len(sources)]
        name = f"audio/c{i:05d}.wav"
        shutil.copyfile(decoded / f"{src.parent.name}_{src.stem}.wav", pre / name)
        rows.append({"file_name": name, "transcription": f"Verse {i} read aloud, copy of {src.stem}."})
        clips[name] = {"speaker_id": speakers.index(src.parent.name)}
    with open(pre / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription"])
        writer.writeheader()
        writer.writerows(rows)
    ids = root / "speakers" / "speaker_ids.json"
    fsutil.write_json(
        ids,
        {"clips": clips, "speakers": {str(s): {"name": f"reader_{spk}"} for s, spk in enumerate(speakers)}},
    )
    return pre, pre / "metadata.csv", ids


def child(root: Path) -> None:
    """Build the dataset of `root` (run in its own process)."""
    import logging

    from tts_pipeline.config import DatasetSection
    from tts_pipeline.dataset import build_dataset

    logging.basicConfig(level=logging.WARNING)
    pre = root / "pre"
    build_dataset(
        pre / "metadata.csv",
        pre,
        root / "speakers" / "speaker_ids.json",
        root / "dataset",
        DatasetSection(train_split=0.9, validation_split=0.1),
        base_model=None,
        language="bench",
    )


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])  # kB
    return out


def measure(root: Path) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(root)])
    peak_anon = peak_hwm = 0
    start = time.perf_counter()
    while proc.poll() is None:
        try:
            s = _status(proc.pid)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            break
        peak_anon = max(peak_anon, s.get("RssAnon", 0))
        peak_hwm = max(peak_hwm, s.get("VmHWM", 0))
        time.sleep(0.02)
    if proc.wait() != 0:
        raise SystemExit(f"dataset build failed for {root}")
    return {
        "peak_rss_anon_mb": round(peak_anon / 1024, 1),
        "peak_rss_total_mb": round(peak_hwm / 1024, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[600, 3000])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the corpora go (default: a temp dir)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-dataset-") as tmp:
        for n in args.clips:
            root = Path(tmp) / str(n)
            make_corpus(root, n)
            results[n] = measure(root)
            shutil.rmtree(root)
            print(f"{n} clips: {results[n]}", file=sys.stderr)
    sizes = sorted(results)
    print(
        json.dumps(
            {
                "corpus": "copies of the 60 bundled LibriSpeech clips (about 8 s each), 6 speakers",
                "sizes": {str(n): results[n] for n in sizes},
                "anon_ratio_largest_to_smallest": round(
                    results[sizes[-1]]["peak_rss_anon_mb"] / results[sizes[0]]["peak_rss_anon_mb"], 3
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
