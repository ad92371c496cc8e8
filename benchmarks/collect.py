"""Benchmark: collect N takes from the loopback GitLab server, parallel vs. sequential downloads.

Both runs use the same project, the same server and the same code; only
`collect.download_workers` differs (1 = the sequential baseline), and each starts from an
empty download cache. The server adds a fixed latency per request (`--latency_ms`, a stand-in
for the round trip to gitlab.com), which is what parallel downloads hide.

    python benchmarks/collect.py [--takes 200] [--workers 8] [--latency_ms 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from codex_fixtures import build_project  # noqa: E402
from fake_gitlab import FakeGitLab  # noqa: E402

from tts_pipeline.collect import collect  # noqa: E402
from tts_pipeline.config import load_config  # noqa: E402

TOKEN = "glpat-benchmark"


def run_once(url: str, work: Path, workers: int) -> tuple[float, int]:
    language = work / "bench.yaml"
    language.write_text(
        "language: {code: bench}\n"
        f"source: {{type: gitlab, url: '{url}', project: bench/project, token_env: BENCH_GITLAB_TOKEN}}\n"
        f"paths: {{raw_dataset: '{work / 'raw'}', cache: '{work / 'cache'}'}}\n"
        f"collect: {{download_workers: {workers}}}\n"
    )
    cfg = load_config(language, REPO / "params.yaml")
    start = time.perf_counter()
    result = collect(cfg, work / "raw")
    return time.perf_counter() - start, result.stats.downloaded_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--latency_ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["BENCH_GITLAB_TOKEN"] = TOKEN
    os.environ.setdefault("TQDM_DISABLE", "1")

    built = build_project(n_takes=args.takes, real_clips=60)
    results: dict[str, list[float]] = {"sequential": [], "parallel": []}
    downloaded = {}
    with FakeGitLab(token=TOKEN) as server:
        server.lfs_objects.update(built.lfs_objects)
        server.add_project("bench/project", built.git_files)
        server.latency_s = args.latency_ms / 1000
        for _ in range(args.repeats):
            for name, workers in (("sequential", 1), ("parallel", args.workers)):
                work = Path(tempfile.mkdtemp(prefix=f"bench-collect-{name}-"))
                try:
                    seconds, files = run_once(server.url, work, workers)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                results[name].append(seconds)
                downloaded[name] = files
    best = {name: min(times) for name, times in results.items()}
    report = {
        "takes": built.takes,
        "exported": len(built.rows),
        "files_downloaded": downloaded,
        "latency_ms": args.latency_ms,
        "workers": args.workers,
        "sequential_s": round(best["sequential"], 3),
        "parallel_s": round(best["parallel"], 3),
        "speedup": round(best["sequential"] / best["parallel"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
