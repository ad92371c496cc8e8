"""Speaker embeddings of the clips, each cached (`cache.ContentCache`) by its content hash +
backend + model + embedding version.

Why a cache: adding 10 clips to 5,000 must embed 10, and an interrupted run keeps its work.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..cache import ContentCache
from ..errors import PipelineError
from ..fsutil import sha256_file, sha256_json
from .clips import Clip, load_samples
from .embeddings import EmbeddingError, SpeakerEmbedder, embed_many, l2_normalise

log = logging.getLogger(__name__)

#: Bump when the embedding computation changes, so cached vectors are recomputed.
EMBEDDING_VERSION = 2
EMBED_BATCH = 16


def cache_dir(cache_root: Path, backend: str, model: str | None) -> Path:
    """One folder per backend + model + embedding version: another model never reads these vectors."""
    key = sha256_json({"backend": backend, "model": model, "version": EMBEDDING_VERSION})[:12]
    return cache_root / f"{backend}-{key}"


def _cached_vector(cache: ContentCache, digest: str, dim: int) -> np.ndarray | None:
    """The clip's vector from the cache; None on a miss or a damaged entry (then recomputed)."""
    hit = cache.get(digest)
    if hit is None or hit.data is None:
        return None
    try:
        vec = np.load(hit.data)
    except (OSError, ValueError):
        return None
    if vec.shape != (dim,) or not np.isfinite(vec).all():
        return None
    return vec.astype(np.float32)


def _store_vector(cache: ContentCache, digest: str, vec: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, vec)
    cache.put(digest, {"dim": int(vec.shape[0])}, buffer.getvalue())


def _embed_batch(clips: Sequence[Clip], embedder: SpeakerEmbedder) -> list[np.ndarray]:
    """One vector per clip, batched; a clip without a usable embedding is named in the error."""
    loaded = [load_samples(clip) for clip in clips]
    rates = {rate for _, rate in loaded}
    try:
        if len(rates) != 1:
            raise EmbeddingError("mixed sample rates")
        return list(embed_many(embedder, [s for s, _ in loaded], rates.pop()))
    except EmbeddingError:  # find the culprit clip and name it
        vectors = []
        for clip, (samples, rate) in zip(clips, loaded, strict=True):
            try:
                vectors.append(embedder.embed(samples, rate))
            except EmbeddingError as exc:
                raise PipelineError(f"{clip.path}: {exc}; remove the clip (or fix it) and re-run") from None
        return vectors


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
    from tqdm import tqdm

    cache = ContentCache(cache_dir(cache_root, backend, model), ".npy") if cache_root else None
    out: list[np.ndarray | None] = [None] * len(clips)
    todo: list[tuple[int, str]] = []
    for i, clip in enumerate(clips):
        digest = sha256_file(clip.path)
        out[i] = _cached_vector(cache, digest, embedder.dim) if cache is not None else None
        if out[i] is None:
            todo.append((i, digest))
    log.info("embeddings: %d cached, %d to compute (%s)", len(clips) - len(todo), len(todo), backend)
    with tqdm(total=len(todo), desc="speaker embeddings", unit="clip", disable=not todo) as bar:
        for start in range(0, len(todo), EMBED_BATCH):
            batch = todo[start : start + EMBED_BATCH]
            vectors = _embed_batch([clips[i] for i, _ in batch], embedder)
            for (i, digest), vec in zip(batch, vectors, strict=True):
                out[i] = np.asarray(vec, dtype=np.float32)
                if cache is not None:
                    _store_vector(cache, digest, out[i])
            bar.update(len(batch))
    if not clips:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return l2_normalise(np.stack(out))  # type: ignore[arg-type]
