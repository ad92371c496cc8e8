"""Benchmark: start-up of `tts-pipeline --help` and of a configuration error (issue 18: < 0.3 s).

Runs each command N times in fresh interpreters (`python -m tts_pipeline`, this checkout's
src) and prints the median wall time, with bare `python -c pass` as the floor, and which
heavy modules each command imported (none is the goal: no stage module, numpy or HTTP library).

    python benchmarks/startup.py [--runs 7]

Compare against another checkout with `--src OTHER/src` run alternately on the same machine;
on a loaded machine report ratios of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PROBE = (
    "import runpy, sys\n"
    "try:\n    runpy.run_module('tts_pipeline', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    "stages = ('collect', 'preprocess', 'speakers', 'dataset', 'train', 'evaluate', 'synthesize', 'webdemo', 'run')\n"
    "heavy = {'numpy', 'requests', 'urllib3', 'gitlab', 'dvc', 'mlflow', 'torch', 'datasets', *(f'tts_pipeline.{s}' for s in stages)}\n"
    "print(sorted(heavy & set(sys.modules)), file=sys.stderr)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--src", type=Path, default=SRC, help="the tts_pipeline sources to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text("source: {type: local, path: p}\ntraining: {learnig_rate: 1}\n", encoding="utf-8")
        params = SRC.parent / "params.yaml"
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [sys.executable, "-m", "tts_pipeline", "--help"],
            "config error": [
                sys.executable,
                "-m",
                "tts_pipeline",
                "dataset",
                "--config",
                str(bad),
                "--params",
                str(params),
            ],
        }
        env = dict(os.environ, PYTHONPATH=str(args.src))
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                start = time.perf_counter()
                subprocess.run(cmd, env=env, capture_output=True, check=False)
                times[name].append(time.perf_counter() - start)
        imported = {}
        for name, cmd in list(commands.items())[1:]:
            probe = [sys.executable, "-c", PROBE, *cmd[3:]]
            result = subprocess.run(probe, env=env, capture_output=True, text=True, check=False)
            imported[name] = result.stderr.strip().splitlines()[-1]
    print(
        json.dumps(
            {
                "runs": args.runs,
                "median_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
                "heavy_modules_imported": imported,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
