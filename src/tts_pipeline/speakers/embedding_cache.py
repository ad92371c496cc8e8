"""Speaker embeddings of the clips, each cached (`cache.ContentCache`) by its content hash +
backend + model + embedding version.

Why a cache: adding 10 clips to 5,000 must embed 10, and an interrupted run keeps its work.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import ContentCache
from ..embeddings import EmbeddingError, SpeakerEmbedder, embed_many, l2_normalise
from ..errors import PipelineError
from ..fsutil import sha256_file, sha256_json
from .clips import Clip, load_samples

log = logging.getLogger(__name__)

#: Bump when the embedding computation changes, so cached vectors are recomputed.
EMBEDDING_VERSION = 2
EMBED_BATCH = 16
#: At most this many batches at once (one per core up to it).
MAX_EMBED_WORKERS = 8


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


def embed_workers(embedder: SpeakerEmbedder) -> int:
    """Batches embedded at once: one per core for a backend that allows it, else 1."""
    if not getattr(embedder, "parallel_batches", False):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_EMBED_WORKERS))


@contextlib.contextmanager
def _threads(workers: int) -> Iterator[Any]:
    """A pool of `workers` threads, each batch on one torch thread (restored afterwards).

    Why threads of one torch thread each rather than one batch on all torch threads: torch
    releases the GIL in the LSTM, and independent batches never wait for each other, while
    torch's own threads synchronise at every step; on the busy 2-core machine two torch
    threads were 4-7x slower than one (benchmarks/speakers.py).
    """
    if workers <= 1:
        yield _Serial()
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="embed")
    try:
        yield pool
    except BaseException:  # a clip without an embedding, Ctrl-C: do not start the other batches
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        torch.set_num_threads(before)


class _Serial:
    """`Executor.map` in the calling thread (one worker: no pool, torch threads untouched)."""

    @staticmethod
    def map(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        return map(fn, items)


def embed_clips(
    clips: Sequence[Clip],
    embedder: SpeakerEmbedder,
    cache_root: Path | None,
    backend: str,
    model: str | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """(N, D) L2-normalised embeddings; each clip's vector is cached by content hash + backend.

    Vectors are written to the cache as soon as a batch is done, so an interrupted run keeps
    its work and adding 10 clips to 5,000 embeds 10. `workers`: batches at once (default
    `embed_workers`: one per core for a backend that allows it).
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
    workers = (embed_workers(embedder) if workers is None else workers) if len(todo) > EMBED_BATCH else 1
    log.info(
        "embeddings: %d cached, %d to compute (%s, %d worker%s)",
        len(clips) - len(todo), len(todo), backend, workers, "s" if workers > 1 else "",
    )  # fmt: skip
    batches = [todo[start : start + EMBED_BATCH] for start in range(0, len(todo), EMBED_BATCH)]
    with (
        tqdm(total=len(todo), desc="speaker embeddings", unit="clip", disable=not todo) as bar,
        _threads(workers) as pool,
    ):
        results = pool.map(lambda batch: _embed_batch([clips[i] for i, _ in batch], embedder), batches)
        for batch, vectors in zip(batches, results, strict=True):  # in order, as each batch is done
            for (i, digest), vec in zip(batch, vectors, strict=True):
                out[i] = np.asarray(vec, dtype=np.float32)
                if cache is not None:
                    _store_vector(cache, digest, out[i])
            bar.update(len(batch))
    if not clips:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return l2_normalise(np.stack(out))  # type: ignore[arg-type]
