"""Speaker embeddings of the clips, each cached by its content hash + backend + model + version.

Why a cache: adding 10 clips to 5,000 must embed 10, and an interrupted run keeps its work.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..fsutil import atomic_write_bytes, sha256_file, sha256_json
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

    cache = cache_dir(cache_root, backend, model) if cache_root else None
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
            loaded = [load_samples(clips[i]) for i, _ in batch]
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
