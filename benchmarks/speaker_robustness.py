"""Speaker clustering on short, noisy clips: ARI and speaker count per method and for the default.

Clips: the 60 LibriSpeech test clips bundled in tests/data/librispeech-6spk (6 readers, 10 clips
each, 4-35 s, Opus), decoded to 16 kHz. Three variants, all deterministic (seeded):
  clean   the clips as they are
  short   one random 1.5-4 s cut of each clip (what a phone recording of one verse is)
  noisy   the same cuts mixed with noise at 15 dB SNR (speech RMS over noise RMS). No recorded
          noise ships with the repo or /work/shared/data, so the noise is synthetic: pink (1/f
          power, closer to room/street noise than white) or white with --noise white.
Embeddings come from the stage's own path (`embed_many`, resemblyzer); each variant is
clustered by every method on three subsets: "tune" (clips 0000-0004 of each reader, the only
ones constants were chosen on), "held-out" (clips 0005-0009) and "all" 60. ARI = adjusted Rand
index against the reader labels; "k" = speakers found (truth: 6). Each reader's 10 clips alone
(a one-speaker corpus) must come out as one speaker: the count of readers that do is printed. `--seeds 3` draws three
different cuts/noises per variant. Also printed: embedding cost per clip (ms, wall and CPU).

    python benchmarks/speaker_robustness.py [--seeds 1] [--snr 15] [--noise pink|white] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from tts_pipeline.audio import decode_audio
from tts_pipeline.config import SpeakerSection
from tts_pipeline.embeddings import embed_many, get_embedder
from tts_pipeline.speakers.clustering import METHODS, cluster_embeddings

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "librispeech-6spk"
sys.path.insert(0, str(REPO / "tests"))
from noisy_clips import RATE, variants  # noqa: E402  (shared with the tests)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=1, help="draws of cuts + noise per variant")
    parser.add_argument("--snr", type=float, default=15.0, help="speech-to-noise ratio, dB")
    parser.add_argument("--noise", choices=("pink", "white"), default="pink")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    files = sorted(CLIPS.glob("*/*.webm"))
    truth = np.array([f.parent.name for f in files])
    index = np.array([int(f.stem.split("-")[-1]) for f in files])
    subsets = {"tune": index < 5, "held-out": index >= 5, "all": np.ones(len(files), dtype=bool)}
    wavs = [decode_audio(f, RATE) for f in files]
    embedder = get_embedder("resemblyzer")
    embed_many(embedder, wavs[:2], RATE)  # warm-up
    default = SpeakerSection().clustering_method
    readers = sorted(set(truth))
    methods = [*METHODS]
    print(f"{len(files)} clips, {len(set(truth))} readers; default method {default!r}; "
          f"noise {args.noise} at {args.snr:g} dB SNR")  # fmt: skip
    report: dict = {"default": default, "noise": args.noise, "snr_db": args.snr, "runs": []}
    header = f"{'seed':>4} {'variant':8} {'subset':9} " + " ".join(f"{m + ' ARI/k':>16}" for m in methods)
    print(header)
    worst = {v: 1.0 for v in ("clean", "short", "noisy")}
    for seed in range(args.seeds):
        for variant, audio in variants(wavs, seed, args.snr, args.noise).items():
            if variant == "clean" and seed > 0:
                continue  # no randomness in the clean variant
            start, cpu = time.perf_counter(), time.process_time()
            X = embed_many(embedder, audio, RATE)
            per_clip_ms = (time.perf_counter() - start) / len(audio) * 1000
            cpu_ms = (time.process_time() - cpu) / len(audio) * 1000
            seconds = float(np.mean([len(a) for a in audio])) / RATE
            for subset, mask in subsets.items():
                cells, row = [], {"seed": seed, "variant": variant, "subset": subset}
                for method in methods:
                    result = cluster_embeddings(X[mask], method)
                    ari = adjusted_rand_score(truth[mask], result.labels)
                    cells.append(f"{ari:10.3f} /{result.n_clusters:3d}")
                    row[method] = {"ari": round(ari, 4), "speakers": result.n_clusters, "notes": result.notes}
                    if method == default:
                        ok = result.n_clusters == len(set(truth[mask]))
                        worst[variant] = min(worst[variant], ari if ok else 0.0)
                print(f"{seed:4d} {variant:8} {subset:9} " + " ".join(f"{c:>16}" for c in cells))
                report["runs"].append(row)
            alone = {  # one-reader corpora (10 clips each) must stay one speaker
                method: sum(cluster_embeddings(X[truth == r], method).n_clusters == 1 for r in readers)
                for method in methods
            }
            print(
                f"     {variant}: one reader alone -> one speaker for "
                + ", ".join(f"{m} {alone[m]}/{len(readers)}" for m in methods)
            )
            report["runs"].append({"seed": seed, "variant": variant, "one_reader_is_one_speaker": alone})

            print(
                f"     {variant}: embedding {per_clip_ms:.0f} ms/clip wall, {cpu_ms:.0f} ms/clip CPU "
                f"(mean clip {seconds:.1f} s)"
            )
            report["runs"].append(
                {
                    "seed": seed,
                    "variant": variant,
                    "embed_ms_per_clip": round(per_clip_ms, 1),
                    "embed_cpu_ms_per_clip": round(cpu_ms, 1),
                }
            )
    print("default, worst ARI with the right count (0 if the count was wrong): "
          + ", ".join(f"{v} {a:.3f}" for v, a in worst.items()))  # fmt: skip
    report["default_worst"] = worst
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
