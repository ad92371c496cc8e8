"""speakers stage: who read which clip. Embeddings, clustering, corrections, a review page.

Each preprocessed clip is one verse read by one person, so "diarization" here means grouping
clips by voice: embed every clip (`embedding_cache.py`, cached per clip by content hash +
backend), cluster the L2-normalised embeddings (`clustering.py`: near-duplicate takes grouped,
then HDBSCAN and/or k-means, cosine geometry), apply the human corrections file
(`corrections.py`, format at its top), and write `speaker_ids.json`, `embeddings.npy`
(+ `embeddings_index.json`), `cluster_samples/speaker_N_sample.wav` and `review.html`
(`review_page.py`; see docs/ARCHITECTURE.md). `speakers review` serves it (`review_server.py`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import resample, write_wav
from ..embeddings import SpeakerEmbedder, get_embedder
from ..errors import PipelineError
from ..fsutil import atomic_directory, claim_output_dir, overlapping_input, write_json
from ..metadata import default_metadata_csv
from .clips import Clip, load_clips, load_samples
from .clustering import Clustering, cluster_embeddings
from .corrections import (
    Assignment,
    Corrections,
    apply_corrections,
    corrections_path,
    load_corrections,
    ranked_members,
)
from .duplicates import DUPLICATE_COSINE
from .embedding_cache import embed_clips
from .layout import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    REVIEW_FILE,
    SAMPLES_DIR,
    SPEAKER_IDS_FILE,
    SPEAKERS_LEGACY,
)
from .review_page import render_review_page
from .review_server import serve_review

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config


@dataclass
class SpeakersResult:
    clips: list[Clip]
    embeddings: np.ndarray
    clustering: Clustering
    assignment: Assignment
    metrics: dict[str, Any]


def speaker_ids_document(
    assignment: Assignment, clips: Sequence[Clip], duplicates: Sequence[Sequence[int]] = ()
) -> dict[str, Any]:
    """The `speaker_ids.json` contract (docs/ARCHITECTURE.md); `near_duplicates` lists the
    groups of clips that are one take (see `duplicates.near_duplicate_groups`)."""
    durations = np.array([c.duration_s for c in clips], dtype=float)
    doc_clips = {
        name: {
            "speaker_id": int(assignment.labels[i]),
            "confidence": round(float(assignment.confidence[i]), 4),
            "uncertain": bool(assignment.uncertain[i]),
        }
        for i, name in enumerate(assignment.file_names)
    }
    speakers = {
        str(sid): {
            "name": name,
            "clips": int((assignment.labels == sid).sum()),
            "hours": round(float(durations[assignment.labels == sid].sum()) / 3600, 4),
        }
        for sid, name in enumerate(assignment.names)
    }
    groups = [[assignment.file_names[i] for i in group] for group in duplicates]
    return {"clips": doc_clips, "speakers": speakers, "near_duplicates": groups}


def write_cluster_sample(path: Path, clips: Sequence[Clip], max_s: float = 12.0, gap_s: float = 0.3) -> None:
    """A few representative clips of one speaker joined by short silences (one file to listen to)."""
    rate = 16000
    parts: list[np.ndarray] = []
    total = 0.0
    for clip in clips:
        samples, clip_rate = load_samples(clip, rate)
        samples = resample(samples, clip_rate, rate)
        if parts and total + len(samples) / rate > max_s:
            break
        if parts:
            parts.append(np.zeros(int(gap_s * rate), dtype=np.float32))
        parts.append(samples[: int(max_s * rate)])
        total += len(samples) / rate + gap_s
    write_wav(path, np.concatenate(parts) if parts else np.zeros(rate // 10, dtype=np.float32), rate)


def cluster_speakers(
    clips: Sequence[Clip],
    embeddings: np.ndarray,
    *,
    method: str = "auto",
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    min_cluster_size: int = 3,
    corrections: Corrections | None = None,
    seed: int = 0,
    duplicate_cosine: float | None = DUPLICATE_COSINE,
) -> tuple[Clustering, Assignment]:
    """Cluster, then apply the corrections: the whole decision, without any file output."""
    clustering = cluster_embeddings(
        embeddings, method, min_speakers, max_speakers, min_cluster_size, seed, duplicate_cosine
    )
    assignment = apply_corrections(
        [c.file_name for c in clips], embeddings, clustering, corrections or Corrections()
    )
    return clustering, assignment


def summarise(
    clustering: Clustering, assignment: Assignment, clips: Sequence[Clip], backend: str
) -> dict[str, Any]:
    """Metrics for `metrics/<code>/speakers.json` (dvc metrics show)."""
    counts = {str(s): int((assignment.labels == s).sum()) for s in range(assignment.n_speakers)}
    return {
        "speakers": assignment.n_speakers,
        "clusters_automatic": clustering.n_clusters,
        "clips": len(clips),
        "clips_per_speaker": counts,
        "named_speakers": int(sum(assignment.named)),
        "pinned_clips": int(assignment.pinned.sum()),
        "mean_confidence": round(float(np.mean(assignment.confidence)), 4) if len(clips) else 0.0,
        "uncertain_clips": int(assignment.uncertain.sum()),
        "noise_clips": clustering.noise,
        "silhouette": None if clustering.silhouette is None else round(clustering.silhouette, 4),
        "hours": round(sum(c.duration_s for c in clips) / 3600, 4),
        "method": clustering.method,
        "method_requested": clustering.requested or clustering.method,
        "method_reason": clustering.reason,
        "near_duplicate_groups": len(clustering.duplicates),
        "near_duplicate_clips": sum(len(g) for g in clustering.duplicates),
        "backend": backend,
    }


def write_outputs(
    output_dir: Path,
    clips: Sequence[Clip],
    embeddings: np.ndarray,
    clustering: Clustering,
    assignment: Assignment,
    metrics: dict[str, Any],
    *,
    corrections: Corrections | None = None,
    review_clips: int = 5,
    corrections_file: Path | None = None,
) -> None:
    """Write the whole output directory atomically (a crash leaves the previous one intact)."""
    with atomic_directory(output_dir, "speakers", SPEAKERS_LEGACY) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, embeddings.astype(np.float32))
        write_json(tmp / INDEX_FILE, [c.file_name for c in clips])
        write_json(tmp / SPEAKER_IDS_FILE, speaker_ids_document(assignment, clips, clustering.duplicates))
        (tmp / SAMPLES_DIR).mkdir()
        for sid in range(assignment.n_speakers):
            representative, _ = ranked_members(embeddings, assignment, sid)
            write_cluster_sample(
                tmp / SAMPLES_DIR / f"speaker_{sid}_sample.wav", [clips[i] for i in representative[:3]]
            )
        html = render_review_page(
            clips,
            embeddings,
            clustering,
            assignment,
            metrics,
            corrections=corrections or Corrections(),
            per_speaker=review_clips,
            corrections_file=corrections_file,
            load_samples=load_samples,
        )
        (tmp / REVIEW_FILE).write_text(html, encoding="utf-8")


def run_speakers(
    metadata_csv: Path,
    audio_dir: Path,
    output_dir: Path,
    *,
    backend: str = "resemblyzer",
    model: str | None = None,
    method: str = "auto",
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    min_cluster_size: int = 3,
    duplicate_cosine: float | None = DUPLICATE_COSINE,
    review_clips: int = 5,
    corrections_file: Path | None = None,
    cache_root: Path | None = None,
    metrics_file: Path | None = None,
    embedder: SpeakerEmbedder | None = None,
    device: str = "cpu",
) -> SpeakersResult:
    """The stage, as one function: read clips, embed (cached), cluster, correct, write."""
    clash = overlapping_input(output_dir, audio_dir, metadata_csv)
    if clash is not None:  # the output dir is replaced as a whole: it must not hold the input
        raise PipelineError(f"{output_dir}: output must be a folder of its own, apart from the input {clash}")
    claim_output_dir(output_dir, "speakers", SPEAKERS_LEGACY)
    corrections = load_corrections(corrections_file) if corrections_file else Corrections()  # fail early
    clips = load_clips(metadata_csv, audio_dir)
    embedder = embedder or get_embedder(backend, model, device)
    X = embed_clips(clips, embedder, cache_root, backend, model)
    clustering, assignment = cluster_speakers(
        clips,
        X,
        method=method,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
        min_cluster_size=min_cluster_size,
        corrections=corrections,
        duplicate_cosine=duplicate_cosine,
    )
    metrics = summarise(clustering, assignment, clips, backend)
    write_outputs(
        output_dir,
        clips,
        X,
        clustering,
        assignment,
        metrics,
        corrections=corrections,
        review_clips=review_clips,
        corrections_file=corrections_file,
    )
    if metrics_file:
        write_json(metrics_file, metrics)
    return SpeakersResult(clips, X, clustering, assignment, metrics)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=["run", "review"],
        default="run",
        help="run: embed, cluster, write outputs (default); review: serve the review page",
    )
    parser.add_argument("--audio_dir", metavar="DIR", help="preprocessed dir (file_name is relative to it)")
    parser.add_argument("--metadata_csv", metavar="FILE", help="default: <audio_dir>/metadata.csv")
    parser.add_argument("--output_dir", metavar="DIR", help="default: paths.speaker_analysis")
    parser.add_argument("--metrics_file", metavar="FILE", help="default: <paths.metrics>/speakers.json")
    parser.add_argument("--corrections", metavar="FILE", help="default: languages/<code>.speakers.yaml")
    parser.add_argument(
        "--port", type=int, default=0, help="review: port on 127.0.0.1 (default: any free port)"
    )
    parser.add_argument("--no-browser", action="store_true", help="review: only print the URL")


def run(cfg: Config, args: argparse.Namespace) -> int | None:
    output_dir = cfg.flag_or_path(args, "output_dir", "speaker_analysis")
    if getattr(args, "action", "run") == "review":
        serve_review(
            output_dir,
            getattr(args, "port", 0) or 0,
            not getattr(args, "no_browser", False),
            corrections_file=Path(getattr(args, "corrections", None) or corrections_path(cfg)),
            audio_dir=cfg.flag_or_path(args, "audio_dir", "preprocessed"),
            rerun=f"tts-pipeline speakers --config {cfg.config_path}",
        )
        return 0
    audio_dir = cfg.flag_or_path(args, "audio_dir", "preprocessed")
    metadata_csv = Path(getattr(args, "metadata_csv", None) or default_metadata_csv(audio_dir))
    if not metadata_csv.is_file() and not getattr(args, "metadata_csv", None):
        metadata_csv = Path(cfg.paths.preprocessed) / "metadata.csv"
    metrics_file = cfg.flag_or_path(args, "metrics_file", "metrics", under="speakers.json")
    corrections_file = Path(getattr(args, "corrections", None) or corrections_path(cfg))
    sd = cfg.speaker_diarization
    result = run_speakers(
        metadata_csv,
        audio_dir,
        output_dir,
        backend=sd.backend,
        model=sd.model,
        method=sd.clustering_method,
        min_speakers=sd.min_speakers,
        max_speakers=sd.max_speakers,
        min_cluster_size=sd.min_cluster_size,
        duplicate_cosine=sd.duplicate_cosine,
        review_clips=sd.review_clips_per_speaker,
        corrections_file=corrections_file,
        cache_root=Path(cfg.paths.cache) / "speakers",
        metrics_file=metrics_file,
    )
    m = result.metrics
    print(
        f"speakers: {m['speakers']} speaker(s) in {m['clips']} clips "
        f"({m['named_speakers']} named, {m['uncertain_clips']} uncertain, mean confidence {m['mean_confidence']:.2f}) "
        f"-> {output_dir}; review: tts-pipeline speakers review --config {cfg.config_path}"
    )
    return 0
