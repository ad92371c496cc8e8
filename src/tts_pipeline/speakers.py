"""speakers stage: who read which clip. Embeddings, clustering, corrections, a review page.

Each preprocessed clip is one verse read by one person, so "diarization" here means grouping
clips by voice: embed every clip (`embeddings.py`, cached per clip by content hash + backend),
cluster the L2-normalised embeddings (`speaker_clustering.py`: near-duplicate takes grouped,
then HDBSCAN and/or k-means, cosine geometry), apply the human
corrections file, and write `speaker_ids.json`, `embeddings.npy` (+ `embeddings_index.json`),
`cluster_samples/speaker_N_sample.wav` and `review.html` (see docs/ARCHITECTURE.md).

Corrections file: ``languages/<code>.speakers.yaml`` (beside the language config)
--------------------------------------------------------------------------------
Cluster numbers are not stable (new clips, another backend, other settings renumber them), so
corrections never name a cluster by number: they name *clips*, and clusters are found through
them on every run::

    speakers:
      Maria:                        # the reader's name (goes into the dataset and the model)
        anchors:                    # "the cluster containing this clip is Maria":
          - audio/MRK_001_001.wav   #   the whole cluster gets the name; anchors in two
          - audio/MRK_002_004.wav   #   different clusters MERGE those clusters into Maria
        clips:                      # "this clip is Maria", whatever the clustering says:
          - audio/LUK_003_007.wav   #   PIN a clip / move a misplaced clip
      Jonas:
        clips:                      # clips only (no anchors): SPLIT them off into a new speaker
          - audio/LUK_001_001.wav

Rules, applied after clustering, deterministically:
1. Every clip listed (anchors and clips) belongs to that speaker (confidence 1).
2. A cluster holding anchors of one speaker is that speaker. A cluster holding anchors of
   several speakers is divided between them: each clip goes to the speaker whose anchors'
   mean embedding is closest (re-clustering that merged two named people is undone).
3. Clusters with no anchors stay automatic speakers, named ``speaker_<id>``.
4. Final ids are contiguous from 0: named speakers in the order of the file, then automatic
   ones by size (largest first, ties by first clip name).
A clip listed twice, or a malformed file, is an error naming the file and key; a clip that is
no longer in the corpus (dropped by preprocess) is skipped with a warning. The review page
prints the block to paste for each speaker (rename the key, keep the anchors).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import PipelineError
from .localserver import serve_until_interrupted
from .speaker_clustering import (  # re-exported: the stage's public clustering API
    CONFIDENCE_TEMPERATURE,
    DUPLICATE_COSINE,
    UNCERTAIN_BELOW,
    Clustering,
    centroid_confidence,
    cluster_embeddings,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .embeddings import SpeakerEmbedder

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "embeddings_index.json"
SPEAKER_IDS_FILE = "speaker_ids.json"
REVIEW_FILE = "review.html"
SAMPLES_DIR = "cluster_samples"
#: What a speakers folder of an earlier version (before the output marker) always holds.
SPEAKERS_LEGACY = (SPEAKER_IDS_FILE, EMBEDDINGS_FILE)
#: Bump when the embedding computation changes, so cached vectors are recomputed.
EMBEDDING_VERSION = 2
EMBED_BATCH = 16


# --------------------------------------------------------------------------- records


@dataclass
class Clip:
    """One preprocessed clip: its metadata `file_name`, where the audio is, how long it is."""

    file_name: str
    path: Path
    duration_s: float
    text: str = ""  # the transcription (shown on the review page)


@dataclass
class SpeakerCorrection:
    name: str
    anchors: list[str] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)


@dataclass
class Corrections:
    path: Path | None = None
    speakers: list[SpeakerCorrection] = field(default_factory=list)


@dataclass
class Assignment:
    """Final result: clip i (in `file_names` order) -> speaker `labels[i]` named `names[...]`."""

    file_names: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    uncertain: np.ndarray
    names: list[str]
    named: list[bool]  # speaker id -> named in the corrections file
    pinned: np.ndarray  # (N,) bool: listed in the corrections file

    @property
    def n_speakers(self) -> int:
        return len(self.names)


@dataclass
class SpeakersResult:
    clips: list[Clip]
    embeddings: np.ndarray
    clustering: Clustering
    assignment: Assignment
    metrics: dict[str, Any]


# --------------------------------------------------------------------------- inputs


def load_clips(metadata_csv: Path, audio_dir: Path) -> list[Clip]:
    """Clips of a preprocessed metadata.csv, sorted by file_name so results never depend on row order."""
    import soundfile as sf

    from .metadata import MetadataError, iter_metadata, resolve_clip_path

    try:
        rows = list(iter_metadata(metadata_csv))
    except MetadataError as exc:
        raise PipelineError(str(exc)) from None
    clips: dict[str, Clip] = {}
    for row in rows:
        name = row["file_name"]
        if name in clips:
            raise PipelineError(f"{metadata_csv}: file_name {name!r} appears twice")
        path = resolve_clip_path(audio_dir, name)
        if not path.is_file():
            raise PipelineError(
                f"{metadata_csv}: audio for {name!r} not found at {path} (re-run preprocess?)"
            )
        try:
            info = sf.info(str(path))
            duration = info.frames / info.samplerate
        except Exception:  # not a soundfile format: fall back to the metadata column
            duration = float(row.get("duration_s") or 0.0)
        clips[name] = Clip(name, path, float(duration), str(row.get("transcription") or ""))
    if not clips:
        rejected = Path(metadata_csv).with_name("rejected.csv")
        why = f"; preprocess kept no clip, the reasons are in {rejected}" if rejected.is_file() else ""
        raise PipelineError(f"{metadata_csv}: no clips to analyse{why}")
    return [clips[k] for k in sorted(clips)]


# --------------------------------------------------------------------------- embeddings


def _cache_dir(cache_root: Path, backend: str, model: str | None) -> Path:
    from .fsutil import sha256_json

    key = sha256_json({"backend": backend, "model": model, "version": EMBEDDING_VERSION})[:12]
    return cache_root / f"{backend}-{key}"


def _load_samples(clip: Clip, sample_rate: int = 16000) -> tuple[np.ndarray, int]:
    from .audio import AudioError, decode_audio, read_wav

    try:
        if clip.path.suffix.lower() in (".wav", ".flac"):
            return read_wav(clip.path)
        return decode_audio(clip.path, sample_rate), sample_rate
    except (AudioError, RuntimeError, ValueError) as exc:
        raise PipelineError(f"{clip.path}: cannot read audio ({exc}); re-run preprocess") from None


def embed_clips(
    clips: Sequence[Clip],
    embedder: SpeakerEmbedder,
    cache_root: Path | None,
    backend: str,
    model: str | None = None,
) -> np.ndarray:
    """(N, D) L2-normalised embeddings; each clip's vector is cached by content hash + backend.

    Vectors are written to the cache as soon as a batch is done, so an interrupted run keeps
    its work and adding 10 clips to 5,000 embeds 10.
    """
    import io

    from tqdm import tqdm

    from .embeddings import EmbeddingError, embed_many, l2_normalise
    from .fsutil import atomic_write_bytes, sha256_file

    cache = _cache_dir(cache_root, backend, model) if cache_root else None
    out: list[np.ndarray | None] = [None] * len(clips)
    todo: list[tuple[int, str]] = []
    for i, clip in enumerate(clips):
        digest = sha256_file(clip.path)
        cached = cache / digest[:2] / f"{digest}.npy" if cache else None
        if cached is not None and cached.is_file():
            try:
                vec = np.load(cached)
                if vec.shape == (embedder.dim,) and np.isfinite(vec).all():
                    out[i] = vec.astype(np.float32)
                    continue
            except (OSError, ValueError):
                pass  # a broken cache entry is recomputed
        todo.append((i, digest))
    log.info("embeddings: %d cached, %d to compute (%s)", len(clips) - len(todo), len(todo), backend)
    with tqdm(total=len(todo), desc="speaker embeddings", unit="clip", disable=not todo) as bar:
        for start in range(0, len(todo), EMBED_BATCH):
            batch = todo[start : start + EMBED_BATCH]
            loaded = [_load_samples(clips[i]) for i, _ in batch]
            rates = {rate for _, rate in loaded}
            try:
                if len(rates) != 1:
                    raise EmbeddingError("mixed sample rates")
                vectors = embed_many(embedder, [s for s, _ in loaded], rates.pop())
            except EmbeddingError:  # find the culprit clip and name it
                vectors = []
                for (i, _), (samples, rate) in zip(batch, loaded, strict=True):
                    try:
                        vectors.append(embedder.embed(samples, rate))
                    except EmbeddingError as exc:
                        raise PipelineError(
                            f"{clips[i].path}: {exc}; remove the clip (or fix it) and re-run"
                        ) from None
            for (i, digest), vec in zip(batch, vectors, strict=True):
                out[i] = np.asarray(vec, dtype=np.float32)
                if cache is not None:
                    buffer = io.BytesIO()
                    np.save(buffer, out[i])
                    atomic_write_bytes(cache / digest[:2] / f"{digest}.npy", buffer.getvalue())
            bar.update(len(batch))
    if not clips:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return l2_normalise(np.stack(out))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- corrections


def corrections_path(cfg: Config) -> Path:
    """`languages/<code>.speakers.yaml`, beside the language config."""
    return cfg.corrections_path


def _clip_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PipelineError(
            f"{where}: expected a list of clip file names (e.g. audio/MRK_001_001.wav), got {value!r}"
        )
    return [v.strip() for v in value]


def parse_corrections(data: Any, path: Path | None, lines: dict[str, int] | None = None) -> Corrections:
    """Validate the YAML structure documented at the top of this module.

    `lines` (dotted key -> 1-based line, from `_key_lines`) lets each error name its line.
    """
    where = str(path or "corrections")
    lines = lines or {}

    def at(key: str) -> str:
        return f"{where} line {lines[key]}: {key}" if key in lines else f"{where}: {key}"

    if data is None:
        return Corrections(path)
    if not isinstance(data, dict):
        raise PipelineError(f"{where} line 1: expected a mapping with a 'speakers' key at the top level")
    unknown = set(data) - {"speakers"}
    if unknown:
        first = sorted(unknown, key=lambda k: lines.get(str(k), 0))[0]
        raise PipelineError(
            f"{at(str(first))}: unknown key(s) {', '.join(map(str, sorted(unknown, key=str)))}; "
            "only 'speakers' is allowed"
        )
    speakers = data.get("speakers") or {}
    if not isinstance(speakers, dict):
        raise PipelineError(f"{at('speakers')}: expected a mapping of speaker name -> {{anchors, clips}}")
    result = Corrections(path)
    owner: dict[str, str] = {}
    for name, entry in speakers.items():
        key = at(f"speakers.{name}")
        if not isinstance(name, str) or not name.strip():
            raise PipelineError(f"{key}: speaker names must be non-empty strings, got {name!r}")
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise PipelineError(f"{key}: expected a mapping with 'anchors' and/or 'clips', got {entry!r}")
        bad = set(entry) - {"anchors", "clips"}
        if bad:
            raise PipelineError(
                f"{key}: unknown key(s) {', '.join(map(str, sorted(bad, key=str)))}; use 'anchors' and 'clips'"
            )
        item = SpeakerCorrection(
            name.strip(),
            _clip_list(entry.get("anchors"), at(f"speakers.{name}.anchors")),
            _clip_list(entry.get("clips"), at(f"speakers.{name}.clips")),
        )
        for kind, clip_names in (("anchors", item.anchors), ("clips", item.clips)):
            for clip in clip_names:
                if clip in owner:
                    raise PipelineError(
                        f"{at(f'speakers.{name}.{kind}')}: {clip} is already listed under {owner[clip]}; "
                        "a clip has one speaker"
                    )
                owner[clip] = f"speakers.{name}"
        result.speakers.append(item)
    return result


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of the key, for the first two levels under `speakers`."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str, depth: int) -> None:
        if not isinstance(node, yaml.MappingNode) or depth > 2:
            return
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                dotted = f"{prefix}{key_node.value.strip()}"
                lines.setdefault(dotted, key_node.start_mark.line + 1)
                walk(value_node, f"{dotted}.", depth + 1)

    walk(root, "", 0)
    return lines


def load_corrections(path: Path) -> Corrections:
    """Read the corrections file; a missing file means no corrections (the file is optional)."""
    import yaml

    if not path.is_file():
        return Corrections(None)
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        what = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        detail = ": ".join(w for w in what if w) or " ".join(str(exc).split())
        raise PipelineError(f"{path}{line}: not valid YAML: {detail}") from None
    return parse_corrections(data, path, _key_lines(text))


def _unique_key_loader() -> type:
    """A SafeLoader that refuses a key given twice in one mapping.

    Plain YAML keeps only the last of two equal keys, so a speaker pasted twice from the review
    page would silently lose the first block's anchors and pinned clips.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str):
                    key = key.strip()
                if not isinstance(key, str | int | float | bool | None):
                    continue  # unhashable: SafeLoader reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (merge the two entries)", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def apply_corrections(
    file_names: Sequence[str], X: np.ndarray, clustering: Clustering, corrections: Corrections
) -> Assignment:
    """Turn automatic clusters + corrections into final contiguous speaker ids (rules in the module doc)."""
    n = len(file_names)
    index = {name: i for i, name in enumerate(file_names)}
    where = str(corrections.path or "corrections")
    raw = clustering.labels
    owner = np.full(n, -1, dtype=int)  # index into corrections.speakers, -1 = automatic
    confidence = clustering.confidence.astype(float).copy()
    uncertain = clustering.uncertain.copy()
    pinned = np.zeros(n, dtype=bool)

    def present(clip_names: list[str], key: str) -> list[int]:
        found = []
        for clip in clip_names:
            if clip in index:
                found.append(index[clip])
            else:
                log.warning(
                    "%s: %s: clip %s is not in the corpus (dropped by preprocess?); ignored", where, key, clip
                )
        return found

    anchors = [present(s.anchors, f"speakers.{s.name}.anchors") for s in corrections.speakers]
    claims: dict[int, list[int]] = {}
    for s_idx, idxs in enumerate(anchors):
        for cluster in sorted({int(raw[i]) for i in idxs}):
            claims.setdefault(cluster, []).append(s_idx)
    for cluster, claimants in sorted(claims.items()):
        members = np.flatnonzero(raw == cluster)
        if len(claimants) == 1:
            owner[members] = claimants[0]
            continue
        names = ", ".join(corrections.speakers[c].name for c in claimants)
        log.warning(
            "%s: automatic cluster %d holds anchors of %s; dividing it by nearest anchors",
            where,
            cluster,
            names,
        )
        from .embeddings import l2_normalise

        A = l2_normalise(np.stack([X[anchors[c]].mean(axis=0) for c in claimants]))
        sims = X[members] @ A.T
        owner[members] = np.asarray(claimants)[np.argmax(sims, axis=1)]
        top2 = np.sort(sims, axis=1)[:, -2:]
        margin_conf = 1.0 / (1.0 + np.exp(-(top2[:, 1] - top2[:, 0]) / CONFIDENCE_TEMPERATURE))
        confidence[members] = margin_conf
        uncertain[members] = margin_conf < UNCERTAIN_BELOW
    for s_idx, s in enumerate(corrections.speakers):
        for i in anchors[s_idx] + present(s.clips, f"speakers.{s.name}.clips"):
            owner[i] = s_idx
            pinned[i] = True
    confidence[pinned] = 1.0
    uncertain[pinned] = False

    # Final ids: named speakers in file order, then automatic clusters by size.
    final = np.full(n, -1, dtype=int)
    names: list[str] = []
    named: list[bool] = []
    for s_idx, s in enumerate(corrections.speakers):
        members = owner == s_idx
        if not members.any():
            log.warning(
                "%s: speakers.%s: none of its clips is in the corpus; no such speaker this run", where, s.name
            )
            continue
        final[members] = len(names)
        names.append(s.name)
        named.append(True)
    auto = owner < 0
    groups = sorted(
        {int(c) for c in raw[auto]},
        key=lambda c: (
            -int((auto & (raw == c)).sum()),
            min(file_names[i] for i in np.flatnonzero(auto & (raw == c))),
        ),
    )
    taken = set(names)
    for c in groups:
        sid = len(names)
        name = f"speaker_{sid}"
        while name in taken:  # a corrections name that looks automatic
            name += "_auto"
        final[auto & (raw == c)] = sid
        names.append(name)
        named.append(False)
        taken.add(name)
    # Confidence of automatic clips against the final speakers (merges/splits change centroids).
    if len(names) > 1:
        conf_final, _ = centroid_confidence(X, final, len(names))
        keep = ~pinned & (owner < 0)
        confidence[keep] = np.minimum(confidence[keep], conf_final[keep])
        uncertain[keep] = uncertain[keep] | (conf_final[keep] < UNCERTAIN_BELOW)
    return Assignment(list(file_names), final, confidence, uncertain, names, named, pinned)


# --------------------------------------------------------------------------- outputs


def speaker_ids_document(
    assignment: Assignment, clips: Sequence[Clip], duplicates: Sequence[Sequence[int]] = ()
) -> dict[str, Any]:
    """The `speaker_ids.json` contract (docs/ARCHITECTURE.md); `near_duplicates` lists the
    groups of clips that are one take (see `speaker_clustering.near_duplicate_groups`)."""
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


def ranked_members(X: np.ndarray, assignment: Assignment, sid: int) -> tuple[np.ndarray, np.ndarray]:
    """(most representative first, least certain first) clip indices of speaker `sid`."""
    members = np.flatnonzero(assignment.labels == sid)
    centroid = X[members].mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    sims = X[members] @ centroid
    names = np.array([assignment.file_names[i] for i in members])
    representative = members[np.lexsort((names, -sims))]
    least = members[np.lexsort((names, sims, assignment.confidence[members]))]
    return representative, least


def write_cluster_sample(path: Path, clips: Sequence[Clip], max_s: float = 12.0, gap_s: float = 0.3) -> None:
    """A few representative clips of one speaker joined by short silences (one file to listen to)."""
    from .audio import write_wav

    rate = 16000
    parts: list[np.ndarray] = []
    total = 0.0
    for clip in clips:
        samples, clip_rate = _load_samples(clip, rate)
        if clip_rate != rate:
            import librosa

            samples = librosa.resample(samples, orig_sr=clip_rate, target_sr=rate)
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
    from .fsutil import atomic_directory, write_json
    from .speaker_review import render_review_page

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
            load_samples=_load_samples,
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
    from .embeddings import get_embedder
    from .fsutil import claim_output_dir, overlapping_input, write_json

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


# --------------------------------------------------------------------------- review server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the output directory; request lines go to the debug log, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("review server: " + format, *args)


def make_review_server(directory: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the output directory on 127.0.0.1 (port 0 = any free port)."""
    from .localserver import bind_server

    handler = functools.partial(_QuietHandler, directory=str(directory))
    return bind_server("127.0.0.1", port, handler)


def serve_review(
    directory: Path,
    port: int = 0,
    open_browser: bool = True,
    *,
    corrections_file: Path | None = None,
    audio_dir: Path | None = None,
    rerun: str = "tts-pipeline speakers --config <language file>",
) -> None:
    """Serve review.html until Ctrl-C and print its URL.

    With a `corrections_file` the page is interactive: rename, merge, move, pin and split are
    written to that file (see `speaker_review.ReviewServerApp`); without one it is read-only.
    """
    page = directory / REVIEW_FILE
    if not page.is_file():
        raise PipelineError(f"{page}: no review page yet; run `tts-pipeline speakers --config ...` first")
    if corrections_file is None:
        server = make_review_server(directory, port)
    else:
        from .speaker_review import ReviewServerApp, make_review_app_server

        app = ReviewServerApp(directory, corrections_file, audio_dir, rerun)
        app.state()  # fail now (no speaker_ids.json) rather than on the first click
        server = make_review_app_server(app, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/{REVIEW_FILE}"
    serve_until_interrupted(
        server, f"speaker review page: {url}  (Ctrl-C to stop)", url if open_browser else None
    )


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
    output_dir = Path(getattr(args, "output_dir", None) or cfg.paths.speaker_analysis)
    if getattr(args, "action", "run") == "review":
        serve_review(
            output_dir,
            getattr(args, "port", 0) or 0,
            not getattr(args, "no_browser", False),
            corrections_file=Path(getattr(args, "corrections", None) or corrections_path(cfg)),
            audio_dir=Path(getattr(args, "audio_dir", None) or cfg.paths.preprocessed),
            rerun=f"tts-pipeline speakers --config {cfg.config_path}",
        )
        return 0
    audio_dir = Path(getattr(args, "audio_dir", None) or cfg.paths.preprocessed)
    from .metadata import default_metadata_csv

    metadata_csv = Path(getattr(args, "metadata_csv", None) or default_metadata_csv(audio_dir))
    if not metadata_csv.is_file() and not getattr(args, "metadata_csv", None):
        metadata_csv = Path(cfg.paths.preprocessed) / "metadata.csv"
    metrics_file = Path(getattr(args, "metrics_file", None) or Path(cfg.paths.metrics) / "speakers.json")
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
