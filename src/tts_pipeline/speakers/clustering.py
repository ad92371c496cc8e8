"""Grouping speaker embeddings into speakers (used by the speakers stage).

Split from speakers.py so the stage module keeps to inputs, corrections and outputs. Input:
(N, D) L2-normalised embeddings, one per clip; output: a `Clustering` (labels, confidences,
and the notes saying why, which the metrics and the review page show).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..embeddings import l2_normalise
from ..errors import PipelineError
from .duplicates import DUPLICATE_COSINE, collapse_duplicates

log = logging.getLogger(__name__)

#: k-means with no max_speakers tries at most this many speakers (set max_speakers for more).
AUTO_MAX_SPEAKERS = 20
#: Two groups of clips whose mean embeddings have a cosine of at least this are one voice.
#: Chosen on the tuning half of the LibriSpeech test set (clips 0000-0004 of each reader): one
#: reader's clips split in two gave centroid cosines 0.88-0.95, two readers 0.49-0.72.
#: Decides "one speaker" (when min_speakers allows it) and whether a cluster is a voice mix.
SAME_VOICE_COSINE = 0.8
#: Softmax temperature turning cosine similarities to the speaker centroids into a confidence.
CONFIDENCE_TEMPERATURE = 0.05
#: A clip whose confidence is below this (another speaker is nearly as close: a similarity
#: margin under ~0.07) is flagged uncertain. Clean tuning-half clips had margins >= 0.21.
UNCERTAIN_BELOW = 0.8
#: Above this many clips HDBSCAN runs on the first HDBSCAN_PCA_DIMS principal components.
HDBSCAN_PCA_ABOVE = 2000
HDBSCAN_PCA_DIMS = 32
#: Clusters larger than this are checked for a voice mix on a random sample of this size.
SPLIT_SAMPLE = 300
#: k-means picks k on a random sample of this many clips when the corpus is larger.
KMEANS_SELECT_SAMPLE = 2000
#: k-means++ restarts per candidate k when k is chosen on that sample.
SAMPLED_N_INIT = 3
#: `clustering_method` values. auto runs both and keeps the better-separated result.
METHODS = ("auto", "hdbscan", "kmeans")


@dataclass
class Clustering:
    """Automatic clustering of N embeddings (before corrections)."""

    labels: np.ndarray  # (N,) int, 0..k-1, every clip assigned (noise resolved)
    confidence: np.ndarray  # (N,) float in [0, 1]
    uncertain: np.ndarray  # (N,) bool
    method: str
    silhouette: float | None = None
    noise: int = 0  # clips HDBSCAN called noise (assigned to the nearest cluster)
    notes: list[str] = field(default_factory=list)
    requested: str = ""  # the clustering_method asked for ("auto" keeps the better of two)
    reason: str = ""  # one line: why this method / speaker count
    duplicates: list[list[int]] = field(default_factory=list)  # near-duplicate groups (clip indices)

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def centroids_of(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """L2-normalised mean embedding of each cluster 0..k-1."""
    return l2_normalise(np.stack([X[labels == c].mean(axis=0) for c in range(k)]))


def centroid_confidence(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, similarity to own centroid) per clip.

    Confidence is the softmax (temperature CONFIDENCE_TEMPERATURE) of the cosine similarities to
    all centroids, read at the clip's own: 0.5 means another speaker is just as close.
    """
    C = centroids_of(X, labels, k)
    sims = X @ C.T
    own = sims[np.arange(len(X)), labels]
    if k == 1:
        return np.ones(len(X)), own
    logits = (sims - sims.max(axis=1, keepdims=True)) / CONFIDENCE_TEMPERATURE
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[np.arange(len(X)), labels], own


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters largest first (ties: the cluster whose first clip comes first)."""
    ids = [c for c in np.unique(labels) if c >= 0]
    order = sorted(ids, key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping.get(int(c), -1) for c in labels], dtype=int)


def _silhouette(X: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    from sklearn.metrics import silhouette_score

    k = len(np.unique(labels))
    if k < 2 or k >= len(X):
        return None
    sample = min(len(X), 2000)
    return float(silhouette_score(X, labels, metric="cosine", sample_size=sample, random_state=seed))


@functools.cache
def _threadpools() -> Any:
    """One threadpoolctl controller: making one scans the loaded libraries (~20 ms, per k-means call before)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _cosine_distances(X: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of L2-normalised rows, clipped at 0 as sklearn's cosine distance."""
    D = 1.0 - (X @ X.T).astype(np.float64)
    np.fill_diagonal(D, 0.0)
    return np.clip(D, 0.0, 2.0)


def _kmeans(
    X: np.ndarray, k: int, seed: int, init: np.ndarray | None = None, n_init: int | None = None
) -> np.ndarray:
    from sklearn.cluster import KMeans

    if n_init is None:
        n_init = 1 if init is not None else (10 if len(X) <= 2000 else 3)
    # One thread for small inputs: thread start-up costs 10x the work on a busy 2-core machine.
    with warnings.catch_warnings(), _threadpools().limit(limits=1 if len(X) < 5000 else None):
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate points
        model = KMeans(
            n_clusters=k, init="k-means++" if init is None else init, n_init=n_init, random_state=seed
        )
        return model.fit_predict(X)


def _farthest_and_closest(X: np.ndarray, labels: np.ndarray, min_size: int = 1) -> tuple[float, float]:
    """Lowest and highest cosine between two centroids of clusters with at least `min_size`
    clips (1.0, 1.0 when fewer than two such clusters: an outlier clip is not a speaker)."""
    k = int(labels.max()) + 1
    big = [c for c in range(k) if (labels == c).sum() >= min_size]
    if len(big) < 2:
        return 1.0, 1.0
    C = centroids_of(X, labels, k)[big]
    sims = (C @ C.T)[np.triu_indices(len(big), 1)]
    return float(sims.min()), float(sims.max())


class _KSearch:
    """k-means candidates for k = 2, 3, ...: k-means++ (10 restarts) and k-means seeded by
    average-linkage (cosine) clusters, the better by silhouette. The linkage seed keeps small
    readers as clusters of their own when one reader has most of the clips."""

    def __init__(self, X: np.ndarray, seed: int, n_init: int | None = None) -> None:
        from scipy.cluster.hierarchy import linkage

        self.X, self.seed, self.n_init = X, seed, n_init
        self.tree = linkage(X.astype(np.float64), method="average", metric="cosine")
        # On a sample (n_init given) every candidate is scored on the same clips: their cosine
        # distances once, not once per silhouette (two per k).
        self.distances = None if n_init is None else _cosine_distances(X)

    def score(self, labels: np.ndarray) -> float | None:
        if self.distances is None:
            return _silhouette(self.X, labels, self.seed)
        from sklearn.metrics import silhouette_score

        if not 2 <= len(np.unique(labels)) < len(self.X):
            return None
        return float(silhouette_score(self.distances, labels, metric="precomputed"))

    def labels(self, k: int) -> tuple[np.ndarray, float | None]:
        from scipy.cluster.hierarchy import fcluster

        candidates = [_kmeans(self.X, k, self.seed, n_init=self.n_init)]
        tree_labels = fcluster(self.tree, k, criterion="maxclust") - 1
        found = int(tree_labels.max()) + 1
        if found == k:
            candidates.append(_kmeans(self.X, k, self.seed, init=centroids_of(self.X, tree_labels, k)))
        scored = [(self.score(c), i) for i, c in enumerate(candidates)]
        score, best = max(scored, key=lambda t: (-np.inf if t[0] is None else t[0], -t[1]))
        return candidates[best], score


def _kmeans_auto(
    X: np.ndarray, lo: int, hi: int, seed: int, notes: list[str], min_size: int = 2
) -> tuple[np.ndarray, float | None]:
    """k-means with k chosen by cosine silhouette within [lo, hi].

    k = 1 (one speaker) when lo allows it and even the two most different clusters of the best
    split sound alike (centroid cosine >= SAME_VOICE_COSINE; clusters under `min_size` clips
    are outliers, not speakers). On a large corpus k is chosen on
    a fixed random sample, then k-means runs once on all clips from the sample's centroids.
    """
    if hi <= 1:
        return np.zeros(len(X), dtype=int), None
    probe = (
        np.sort(np.random.default_rng(seed).choice(len(X), KMEANS_SELECT_SAMPLE, replace=False))
        if len(X) > KMEANS_SELECT_SAMPLE
        else None
    )
    Xs = X if probe is None else X[probe]
    # On a sample of a large corpus 3 k-means++ restarts (not 10): the linkage-seeded candidate
    # and the final run on all clips make up for it; k-means was most of the 10,000-clip time.
    search = _KSearch(Xs, seed, n_init=None if probe is None else SAMPLED_N_INIT)
    best: tuple[float, int, np.ndarray] | None = None
    ks = [hi] if lo == hi else range(max(lo, 2), min(hi, len(Xs) - 1) + 1)
    for k in ks:
        labels, score = search.labels(k)
        log.debug("kmeans k=%d silhouette=%s", k, score)
        value = -np.inf if score is None else score
        if best is None or value > best[0] + 1e-9:
            best = (value, k, labels)
    if best is None:  # too few clips to compare k values
        k = max(lo, 1)
        labels = _kmeans(X, k, seed) if k > 1 else np.zeros(len(X), dtype=int)
        return labels, _silhouette(X, labels, seed)
    score, k, labels = best
    if probe is not None:
        labels = _kmeans(X, k, seed, init=centroids_of(Xs, labels, k))
    farthest, _ = _farthest_and_closest(X, labels, min_size)
    if lo <= 1 and farthest >= SAME_VOICE_COSINE:
        notes.append(f"best split (k={k}) has centroids alike (cosine >= {farthest:.2f}): one speaker")
        return np.zeros(len(X), dtype=int), None
    notes.append(f"k-means: k={k} chosen by silhouette {score:.3f} in [{max(lo, 2)}, {hi}]")
    return labels, (None if not np.isfinite(score) else float(score))


def _split_mixed(X: np.ndarray, labels: np.ndarray, min_size: int, seed: int, notes: list[str]) -> np.ndarray:
    """Split clusters that hold several voices.

    HDBSCAN chains two readers together through a few in-between clips (single linkage), so
    each cluster is checked: among k-means splits (k = 2..10, parts of at least `min_size`)
    whose parts all sound different (every centroid pair below SAME_VOICE_COSINE), the best
    by silhouette is taken, and the parts are checked again. A cluster judged on a sample
    whose 2-way split already sounds alike is one voice (finer splits are not tried: they
    were most of the time at 10,000 clips and never split such a cluster in the benchmarks).
    """
    labels = np.asarray(labels, dtype=int).copy()
    queue = sorted(set(labels.tolist()))
    rng = np.random.default_rng(seed)
    while queue:
        cluster = queue.pop(0)
        members = np.flatnonzero(labels == cluster)
        # Large clusters are judged on a fixed random sample (a voice mix shows in 300 clips too).
        probe = (
            np.sort(rng.choice(members, SPLIT_SAMPLE, replace=False))
            if len(members) > SPLIT_SAMPLE
            else members
        )
        best: tuple[float, np.ndarray] | None = None
        for k in range(2, min(len(probe) // min_size, 10) + 1):
            sub = _kmeans(X[probe], k, seed)
            if np.bincount(sub, minlength=k).min() < min_size:
                continue
            if _farthest_and_closest(X[probe], sub)[1] >= SAME_VOICE_COSINE:
                if k == 2 and len(probe) < len(members):
                    break  # a large cluster whose two halves sound alike is one voice
                continue
            score = _silhouette(X[probe], sub, seed)
            if score is not None and (best is None or score > best[0] + 1e-9):
                best = (score, sub)
        if best is None:
            continue
        score, sub = best
        if len(probe) < len(members):  # everyone to the nearest part of the sample
            sub = np.argmax(X[members] @ centroids_of(X[probe], sub, int(sub.max()) + 1).T, axis=1)
        first_new = int(labels.max()) + 1
        new_ids = [cluster] + list(range(first_new, first_new + int(sub.max())))
        labels[members] = np.asarray(new_ids)[sub]
        notes.append(f"split a cluster of {len(members)} clips into {len(new_ids)} (silhouette {score:.2f})")
        queue.extend(new_ids)
    return labels


def _merge_to(X: np.ndarray, labels: np.ndarray, target: int) -> np.ndarray:
    """Merge the two clusters with the most similar centroids until `target` remain."""
    labels = labels.copy()
    while len(np.unique(labels)) > target:
        ids = np.unique(labels)
        C = centroids_of(X, np.searchsorted(ids, labels), len(ids))
        sims = C @ C.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        labels[labels == ids[max(a, b)]] = ids[min(a, b)]
    return np.searchsorted(np.unique(labels), labels)


@dataclass
class _Result:
    labels: np.ndarray
    silhouette: float | None
    noise_mask: np.ndarray
    notes: list[str]

    @property
    def k(self) -> int:
        return int(self.labels.max()) + 1


def _run_method(X: np.ndarray, method: str, lo: int, hi: int, size: int, seed: int) -> _Result:
    """One method on distinct embeddings, honouring [lo, hi]."""
    n = len(X)
    notes: list[str] = []
    noise_mask = np.zeros(n, dtype=bool)
    silhouette: float | None = None
    if method == "kmeans":
        labels, silhouette = _kmeans_auto(X, lo, hi, seed, notes, size)
        return _Result(labels, silhouette, noise_mask, notes)
    from sklearn.cluster import HDBSCAN

    space = X
    if n > HDBSCAN_PCA_ABOVE:  # HDBSCAN's neighbour search is slow in 256-d: 10,000 clips 80 s -> 3 s
        from sklearn.decomposition import PCA

        space = PCA(HDBSCAN_PCA_DIMS, svd_solver="randomized", random_state=seed).fit_transform(X)
        notes.append(f"hdbscan on {HDBSCAN_PCA_DIMS} principal components ({n} clips)")
    raw = HDBSCAN(min_cluster_size=size, metric="euclidean", copy=True).fit_predict(space)
    found = len(set(raw.tolist()) - {-1})
    notes.append(f"hdbscan (min_cluster_size={size}): {found} cluster(s), {(raw < 0).sum()} noise clip(s)")
    if found == 0:
        labels, silhouette = _kmeans_auto(X, lo, hi, seed, notes, size)
        notes.append("hdbscan found no cluster: k-means fallback")
        return _Result(labels, silhouette, noise_mask, notes)
    noise_mask = raw < 0
    core = ~noise_mask
    labels = np.searchsorted(np.unique(raw[core]), raw)
    farthest, _ = _farthest_and_closest(X[core], labels[core], size)
    if found > 1 and farthest >= SAME_VOICE_COSINE:
        notes.append(f"hdbscan clusters all sound alike (centroid cosine >= {farthest:.2f}): merged")
        labels[core] = 0
    labels[core] = _split_mixed(X[core], labels[core], size, seed, notes)
    found = int(labels[core].max()) + 1
    if noise_mask.any():  # nearest centroid of the real clusters
        C = centroids_of(X[core], labels[core], found)
        labels = np.where(noise_mask, np.argmax(X @ C.T, axis=1), labels)
    if found > hi:
        labels = _merge_to(X, labels, hi)
        notes.append(f"merged the closest clusters down to max_speakers={hi}")
    elif found < lo:
        labels, silhouette = _kmeans_auto(X, lo, hi, seed, notes, size)
        notes.append(f"fewer clusters than min_speakers={lo}: k-means within the bounds")
    silhouette = silhouette if silhouette is not None else _silhouette(X, labels, seed)
    return _Result(labels, silhouette, noise_mask, notes)


def _choose(X: np.ndarray, h: _Result, k: _Result, size: int) -> tuple[str, str]:
    """(method kept, why) between the HDBSCAN and the k-means result on the same clips.

    Same partition: HDBSCAN (its noise flags are kept). One speaker against several: the several
    only if every pair of their voices differs (centroid cosine < SAME_VOICE_COSINE), as each
    method itself decides "one speaker". Otherwise the higher cosine silhouette (the better
    separated voices); a tie keeps HDBSCAN.
    """
    from sklearn.metrics import adjusted_rand_score

    def show(r: _Result) -> str:
        return f"{r.k} speaker(s), silhouette " + ("n/a" if r.silhouette is None else f"{r.silhouette:.3f}")

    both = f"hdbscan {show(h)}; k-means {show(k)}"
    if adjusted_rand_score(h.labels, k.labels) == 1.0:
        return "hdbscan", f"auto: hdbscan and k-means agree ({show(h)})"
    if (h.k == 1) != (k.k == 1):
        several, name = (k, "kmeans") if h.k == 1 else (h, "hdbscan")
        _, closest = _farthest_and_closest(X, several.labels, size)
        if closest < SAME_VOICE_COSINE:
            return name, f"auto: {both}; kept {name}: all its voices differ (closest centroids {closest:.2f})"
        return ("hdbscan" if h.k == 1 else "kmeans"), (
            f"auto: {both}; kept one speaker: two of the other's voices sound alike "
            f"(centroid cosine {closest:.2f} >= {SAME_VOICE_COSINE})"
        )
    hs = -np.inf if h.silhouette is None else h.silhouette
    ks = -np.inf if k.silhouette is None else k.silhouette
    name = "kmeans" if ks > hs + 1e-9 else "hdbscan"
    return name, f"auto: {both}; kept {name} (better separated)"


def _run_auto(
    R: np.ndarray,
    lo: int,
    hi: int,
    hdb_hi: int,
    size: int,
    seed: int,
    max_speakers: int | None,
    notes: list[str],
) -> tuple[str, _Result, str]:
    """auto: HDBSCAN and k-means on the same points, the better separated kept (`_choose`)."""
    hdb = _run_method(R, "hdbscan", lo, hdb_hi, size, seed)
    km = _run_method(R, "kmeans", lo, hi, size, seed)
    if max_speakers is None and hdb.k > AUTO_MAX_SPEAKERS:  # beyond what k-means searched
        chosen = "hdbscan"
        reason = f"auto: hdbscan found {hdb.k} speakers, more than k-means tries ({AUTO_MAX_SPEAKERS}): kept hdbscan"
    else:
        chosen, reason = _choose(R, hdb, km, size)
    notes += [f"{name}: {note}" for name, r in (("hdbscan", hdb), ("k-means", km)) for note in r.notes]
    notes.append(reason)
    return chosen, hdb if chosen == "hdbscan" else km, reason


def cluster_embeddings(
    X: np.ndarray,
    method: str = "auto",
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    min_cluster_size: int = 3,
    seed: int = 0,
    duplicate_cosine: float | None = DUPLICATE_COSINE,
) -> Clustering:
    """Group L2-normalised embeddings by speaker, honouring min/max_speakers (None = automatic).

    Near-duplicate clips (cosine >= duplicate_cosine; None = off) are one point while
    clustering (a take exported three times is not a speaker of its own) and share its label.
    hdbscan: density clusters on the unit sphere (Euclidean there is monotone in cosine),
    clusters that hold several voices split (`_split_mixed`), noise clips assigned to the
    nearest centroid and flagged uncertain. If the count falls outside the bounds, the closest
    clusters are merged (too many) or k-means picks k within the bounds (too few).
    kmeans: k by silhouette within the bounds (`_kmeans_auto`).
    auto: both, the better-separated kept (`_choose`); the reason is in `reason` and `notes`.
    Tiny or degenerate input (fewer than 3 distinct clips) is one speaker, with a warning.
    """
    if method not in METHODS:
        raise PipelineError(
            f"speaker_diarization.clustering_method: unknown method {method!r} ({' | '.join(METHODS)})"
        )
    X = l2_normalise(X)
    n = len(X)
    groups, inverse, R = collapse_duplicates(X, duplicate_cosine)
    notes: list[str] = []
    if groups:
        notes.append(
            f"{len(groups)} group(s) of near-duplicate clips (cosine >= {duplicate_cosine}): "
            f"{sum(len(g) - 1 for g in groups)} clip(s) clustered with their first copy"
        )
    m = len(R)
    distinct = len(np.unique(np.round(R, 5), axis=0)) if m else 0
    if m < 3 or distinct < 2:
        why = f"only {m} distinct clip(s)" if m < 3 else "all clips have the same embedding"
        log.warning("speakers: %s: treating the corpus as one speaker", why)
        return Clustering(
            np.zeros(n, dtype=int),
            np.ones(n),
            np.zeros(n, dtype=bool),
            method if method != "auto" else "hdbscan",
            notes=[*notes, why + ": one speaker"],
            requested=method,
            reason=why + ": one speaker",
            duplicates=groups,
        )
    lo = max(1, min_speakers or 1)
    hi = max_speakers or (m if method == "hdbscan" else min(AUTO_MAX_SPEAKERS, m - 1))
    hi = max(1, min(hi, m, distinct))
    lo = min(lo, hi)
    size = max(2, min(min_cluster_size, m // 2))
    if method == "auto":
        hdb_hi = max(1, min(max_speakers or m, m, distinct))
        chosen, result, reason = _run_auto(R, lo, hi, hdb_hi, size, seed, max_speakers, notes)
    else:
        chosen = method
        result = _run_method(R, method, lo, hi, size, seed)
        notes += result.notes
        reason = f"clustering_method {method}: " + (
            result.notes[-1] if result.notes else f"{result.k} speaker(s)"
        )
    for note in notes:
        log.info("speakers: %s", note)
    return _per_clip(X, result, inverse, chosen, notes, requested=method, reason=reason, duplicates=groups)


def _per_clip(
    X: np.ndarray, result: _Result, inverse: np.ndarray, chosen: str, notes: list[str], **facts: Any
) -> Clustering:
    """The result on the points spread back to every clip (copies share their take's label),
    clusters numbered by size, each clip's confidence against the clusters' centroids."""
    labels = _relabel_by_size(np.asarray(result.labels, dtype=int))[inverse]
    noise_mask = result.noise_mask[inverse]
    confidence, _ = centroid_confidence(X, labels, int(labels.max()) + 1)
    uncertain = noise_mask | (confidence < UNCERTAIN_BELOW)
    return Clustering(
        labels, confidence, uncertain, chosen, result.silhouette, int(noise_mask.sum()), notes, **facts
    )
