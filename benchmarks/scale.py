"""Benchmark: the pipeline's data stages on a synthetic Codex project the size of a Bible book set.

The project holds N verses (default 10,000) in books of up to 1,000 verses, 25 per chapter,
one reader per chapter. Its audio is made of COPIES of the 60 bundled LibriSpeech clips
(tests/data/librispeech-6spk, six readers, 7.8 min in all): each verse is a random 3-10 s
window of its reader's clips (joined end to end), at a random gain of +-3 dB, encoded to
48 kHz WebM/Opus as the Codex recording app writes it. So no two takes have the same bytes
(the stages' content-hash caches cannot short-cut them) and durations vary like verses do,
but the voices are those six readers over and over: windows of the same clip overlap, and the
speakers stage may call some of them near-duplicate takes. The text of each verse is random
words from a small word list, about 14 characters per second of audio (a reading pace the
preprocess filters accept), different for every verse.

Then it runs collect, preprocess, speakers and dataset one after another, each the way DVC
runs it (`tts-pipeline <stage> --config ...` in a child process, cold caches), and samples
the child and its worker processes every 50 ms (/proc/<pid>/status, summed over the process
tree): peak RSS (VmRSS: everything resident, memory-mapped files included) and peak anonymous
memory (RssAnon: the programs' own memory; memory-mapped Arrow files are not counted, the
kernel can drop those pages).

    python benchmarks/scale.py [--verses 10000] [--verses 1000 4000] [--work_dir DIR] [--keep]

Prints a table per corpus size: seconds, seconds per 1,000 clips, peak RSS and anonymous MB
per stage; with two or more sizes also memory growth per 1,000 clips (the slope between the
smallest and largest size); and a line extrapolating the time (linear in clips) and memory
(linear in the measured slope) to 100 hours of audio. JSON with every figure goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "librispeech-6spk"
RATE = 48000
VERSES_PER_BOOK = 1000
VERSES_PER_CHAPTER = 25
CHARS_PER_SECOND = 14.0
_WORD_LIST = ("and the lord said unto them go ye into all the world and preach the gospel to every creature "
         "in the beginning was the word light shineth in darkness grace truth peace mercy bread water "
         "house road river mountain city door morning evening voice heart spirit kingdom father "
         "mother son daughter brother sister people nation land sea fish boat net stone tree seed "
         "harvest field shepherd sheep lamb king servant friend stranger")  # fmt: skip
WORDS = _WORD_LIST.split()
_BOOK_LIST = ("GEN EXO LEV NUM DEU JOS JDG RUT 1SA 2SA 1KI 2KI 1CH 2CH EZR NEH EST JOB PSA PRO ECC SNG ISA "
         "JER LAM EZK DAN HOS JOL AMO OBA JON MIC NAM HAB ZEP HAG ZEC MAL MAT MRK LUK JHN ACT ROM")  # fmt: skip
BOOKS = _BOOK_LIST.split()
STAGES = ("collect", "preprocess", "speakers", "dataset")

# ---------------------------------------------------------------------- the synthetic project

_READERS: dict[str, np.ndarray] = {}


def _load_readers() -> dict[str, np.ndarray]:
    """reader -> all of that reader's bundled clips decoded at 48 kHz and joined."""
    from tts_pipeline.audio import decode_audio

    readers: dict[str, list[np.ndarray]] = {}
    for path in sorted(CLIPS.glob("*/*.webm")):
        readers.setdefault(path.parent.name, []).append(decode_audio(path, RATE))
    return {name: np.concatenate(parts) for name, parts in readers.items()}


def _init_worker() -> None:
    _READERS.update(_load_readers())


def _make_take(job: tuple[int, str, Path]) -> float:
    """Write verse `index`'s take (a window of `reader`'s audio) to `path`; returns its seconds."""
    from tts_pipeline.audio import encode_webm_opus

    index, reader, path = job
    rng = np.random.default_rng([7, index])
    audio = _READERS[reader]
    length = int(rng.uniform(3.0, 10.0) * RATE)
    start = int(rng.integers(0, len(audio) - length))
    gain = 10 ** (rng.uniform(-3.0, 3.0) / 20)
    window = np.clip(audio[start : start + length] * gain, -1.0, 1.0)
    path.write_bytes(encode_webm_opus(window, RATE, compression_level=0))
    return length / RATE


def _verse_text(rng: random.Random, seconds: float) -> str:
    target = CHARS_PER_SECOND * seconds
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < target:
        words.append(rng.choice(WORDS))
    return " ".join(words).capitalize() + "."


def _cell(book: str, chapter: int, verse: int, text: str, take_id: str, seconds: float, ms: int) -> dict:
    return {
        "kind": 2,
        "languageId": "html",
        "value": f"<span>{text}</span>",
        "metadata": {
            "id": f"{book} {chapter}:{verse}",
            "type": "text",
            "cellLabel": str(verse),
            "edits": [],
            "data": {},
            "attachments": {
                take_id: {
                    "url": f".project/attachments/files/{book}/{take_id}.webm",
                    "type": "audio",
                    "createdAt": ms,
                    "updatedAt": ms,
                    "isDeleted": False,
                    "isMissing": False,
                    "metadata": {
                        "mimeType": "audio/webm",
                        "sampleRate": RATE,
                        "channels": 1,
                        "durationSec": round(seconds, 3),
                    },  # fmt: skip
                    "createdBy": "scale-benchmark",
                }
            },
            "selectedAudioId": take_id,
        },
    }


def build_project(root: Path, verses: int, workers: int) -> dict[str, float]:
    """root/ = a Codex project of `verses` verses (see the module docstring); returns its size."""
    readers = sorted(p.name for p in CLIPS.iterdir() if p.is_dir())
    shutil.copyfile(REPO / "examples" / "demo-codex-project" / "metadata.json", root / "metadata.json")
    jobs, layout = [], []
    for index in range(verses):
        book = BOOKS[index // VERSES_PER_BOOK % len(BOOKS)]
        in_book = index % VERSES_PER_BOOK
        chapter, verse = in_book // VERSES_PER_CHAPTER + 1, in_book % VERSES_PER_CHAPTER + 1
        reader = readers[(index // VERSES_PER_CHAPTER) % len(readers)]  # one reader per chapter
        ms = 1_730_000_000_000 + index * 1000
        take_id = f"audio-{ms}-{book.lower()}{index:06d}"
        folder = root / ".project" / "attachments" / "files" / book
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((index, reader, folder / f"{take_id}.webm"))
        layout.append((book, chapter, verse, take_id, ms))
    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
        seconds = list(pool.map(_make_take, jobs, chunksize=16))
    rng = random.Random(11)
    books: dict[str, list[dict]] = {}
    for (book, chapter, verse, take_id, ms), secs in zip(layout, seconds, strict=True):
        books.setdefault(book, []).append(
            _cell(book, chapter, verse, _verse_text(rng, secs), take_id, secs, ms)
        )
    target = root / "files" / "target"
    target.mkdir(parents=True)
    for book, cells in books.items():
        (target / f"{book}.codex").write_text(json.dumps({"cells": cells, "metadata": {}}), encoding="utf-8")
    return {"verses": verses, "hours": sum(seconds) / 3600, "mean_seconds": sum(seconds) / len(seconds)}


def write_config(work: Path, project: Path) -> Path:
    """A language YAML for the synthetic project: local source, caches and outputs under `work`."""
    import yaml

    config = {
        "language": {"code": "scale", "name": "Scale benchmark (copies of LibriSpeech clips)"},
        "source": {"type": "local", "path": str(project)},
        "paths": {"cache": str(work / "cache")},
        "training": {"base_model": None},  # vocabulary from the text: no model hub
    }
    path = work / "scale.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- running and measuring


def stage_commands(config: Path, data: Path) -> dict[str, list[str]]:
    """The stages as dvc.yaml runs them (same flags), outputs under `data`."""
    common = ["--config", str(config), "--params", str(REPO / "params.yaml"), "--log-level", "WARNING"]
    metrics = data / "metrics"
    return {
        "collect": ["collect", *common, "--output_dir", str(data / "raw")],
        "preprocess": ["preprocess", *common, "--input_dir", str(data / "raw"),
                       "--output_dir", str(data / "preprocessed"), "--metrics_file", str(metrics / "preprocess.json")],
        "speakers": ["speakers", *common, "--audio_dir", str(data / "preprocessed"),
                     "--output_dir", str(data / "speakers"), "--metrics_file", str(metrics / "speakers.json")],
        "dataset": ["dataset", *common, "--audio_dir", str(data / "preprocessed"),
                    "--speaker_ids", str(data / "speakers" / "speaker_ids.json"),
                    "--output_dir", str(data / "dataset"), "--metrics_file", str(metrics / "dataset.json")],
    }  # fmt: skip


def _tree_memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in kB summed over `pid` and all its descendants."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    rss = anon = 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as handle:
                for line in handle:
                    key, _, value = line.partition(":")
                    if key == "VmRSS":
                        rss += int(value.split()[0])
                    elif key == "RssAnon":
                        anon += int(value.split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return rss, anon


def run_stage(args: list[str], cwd: Path, log: Path) -> dict[str, float]:
    """Run `tts-pipeline <args>` in a child process; wall seconds and peak memory (MB)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}  # fmt: skip
    peak_rss = peak_anon = 0
    with open(log, "w", encoding="utf-8") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "tts_pipeline", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        while proc.poll() is None:
            rss, anon = _tree_memory_kb(proc.pid)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{args[0]} failed (exit {proc.returncode}), see {log}:\n" + "\n".join(tail))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss / 1024, 1),
            "peak_anon_mb": round(peak_anon / 1024, 1)}  # fmt: skip


def _clips(data: Path) -> dict[str, int]:
    """How many clips each stage's output holds (rows of its metadata)."""
    import csv

    def rows(path: Path) -> int:
        with open(path, encoding="utf-8", newline="") as handle:
            return sum(1 for _ in csv.DictReader(handle))

    counts = {"collect": rows(data / "raw" / "metadata.csv"),
              "preprocess": rows(data / "preprocessed" / "metadata.csv")}  # fmt: skip
    ids = json.loads((data / "speakers" / "speaker_ids.json").read_text(encoding="utf-8"))
    counts["speakers"] = len(ids.get("clips", {}))
    dataset = json.loads((data / "metrics" / "dataset.json").read_text(encoding="utf-8"))
    counts["dataset"] = int(dataset["clips"]["total"])
    return counts


def measure_size(work: Path, verses: int, workers: int) -> dict:
    root = work / f"n{verses}"
    project, data = root / "project", root / "data"
    project.mkdir(parents=True)
    data.mkdir()
    start = time.perf_counter()
    size = build_project(project, verses, workers)
    size["build_seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"{verses} verses: {size['hours']:.2f} h of audio built in {size['build_seconds']} s", file=sys.stderr
    )
    config = write_config(root, project)
    stages = {}
    for name, args in stage_commands(config, data).items():
        stages[name] = run_stage(args, root, root / f"{name}.log")
        print(f"  {name}: {stages[name]}", file=sys.stderr)
    clips = _clips(data)
    for name in STAGES:
        stages[name]["clips"] = clips[name]
        stages[name]["s_per_1000_clips"] = round(1000 * stages[name]["seconds"] / max(1, clips[name]), 1)
    return {"corpus": size, "stages": stages}


def report(results: dict[int, dict]) -> dict:
    """The printed table and the 100 h extrapolation (also returned as JSON)."""
    sizes = sorted(results)
    lines = ["| verses | stage | clips | s | s per 1,000 clips | peak RSS MB | peak anon MB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in sizes:
        for name in STAGES:
            s = results[n]["stages"][name]
            lines.append(f"| {n} | {name} | {s['clips']} | {s['seconds']} | {s['s_per_1000_clips']} | "
                         f"{s['peak_rss_mb']:.0f} | {s['peak_anon_mb']:.0f} |")  # fmt: skip
    big = results[sizes[-1]]
    hours = big["corpus"]["hours"]
    scale = 100.0 / hours
    growth = {}
    if len(sizes) > 1:
        small = results[sizes[0]]
        for name in STAGES:
            d_clips = big["stages"][name]["clips"] - small["stages"][name]["clips"]
            growth[name] = {
                key: round(
                    1000 * (big["stages"][name][key] - small["stages"][name][key]) / max(1, d_clips), 1
                )
                for key in ("peak_rss_mb", "peak_anon_mb")
            }
        lines.append("")
        lines.append("memory growth per 1,000 clips (MB, slope between the smallest and largest size): " + "; ".join(
            f"{name} RSS {g['peak_rss_mb']:+.0f}, anon {g['peak_anon_mb']:+.0f}" for name, g in growth.items()))  # fmt: skip
    total_s = sum(big["stages"][name]["seconds"] for name in STAGES)
    clips_100h = big["stages"]["collect"]["clips"] * scale
    extrapolated = {
        "clips": round(clips_100h),
        "hours_of_work": round(total_s * scale / 3600, 2),
        "per_stage_hours": {name: round(big["stages"][name]["seconds"] * scale / 3600, 2) for name in STAGES},
    }
    memory = ""
    if growth:
        extrapolated["peak_anon_mb"] = {
            name: round(big["stages"][name]["peak_anon_mb"]
                        + growth[name]["peak_anon_mb"] * (clips_100h - big["stages"][name]["clips"]) / 1000)
            for name in STAGES
        }  # fmt: skip
        memory = ", peak anonymous memory " + ", ".join(
            f"{k} {v} MB" for k, v in extrapolated["peak_anon_mb"].items()
        )
    lines.append("")
    lines.append(
        f"100 h of audio (~{extrapolated['clips']} clips of {big['corpus']['mean_seconds']:.1f} s): about "
        f"{extrapolated['hours_of_work']} h on this machine (" + ", ".join(
            f"{k} {v} h" for k, v in extrapolated["per_stage_hours"].items()) + f"; time linear in clips){memory}"
    )  # fmt: skip
    print("\n".join(lines), file=sys.stderr)
    return {"sizes": {str(n): results[n] for n in sizes}, "growth_per_1000_clips": growth,
            "extrapolated_100h": extrapolated}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verses", type=int, nargs="+", default=[10_000],
                        help="corpus size(s) in verses (default 10000; two or more give memory growth)")  # fmt: skip
    parser.add_argument(
        "--work_dir", type=Path, default=None, help="where the projects go (default: a temp dir)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes that encode the synthetic takes (the stages use their own settings)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the projects and stage outputs")
    args = parser.parse_args()
    if min(args.verses) < 50:
        parser.error("--verses: at least 50 (the speakers stage needs clips to cluster)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.work_dir))
    try:
        results = {n: measure_size(work, n, args.workers) for n in sorted(set(args.verses))}
        print(json.dumps({"note": "audio: copies of the 60 bundled LibriSpeech clips (random 3-10 s windows, "
                          "gain +-3 dB, re-encoded WebM/Opus); text: random words", **report(results)}, indent=2))  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
