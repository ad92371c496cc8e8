"""Near-duplicate takes: clips whose embeddings are almost the same are one take.

Why: a take exported twice (or re-encoded) would otherwise weigh twice in clustering, and
three copies of one clip can look like a speaker of their own. Each group is clustered as
one point (`collapse_duplicates`) and its clips share that point's label.
"""

from __future__ import annotations

import numpy as np

from ..embeddings import l2_normalise

#: Two clips whose embeddings have at least this cosine are one take (exported twice,
#: re-encoded): grouped before clustering. Distinct clips of one reader reach 0.97 on the
#: tuning half of the LibriSpeech test set (long clean clips of one chapter; held-out half
#: 0.961, 1.5-4 s cuts <= 0.89), so the default sits above that. The same 3 s take with noise
#: at 40 dB SNR or 50 ms trimmed stays >= 0.994; resampled through 8 kHz or made 10 dB
#: quieter it can fall to 0.82-0.88 (resemblyzer only raises quiet audio): not caught.
DUPLICATE_COSINE = 0.99
#: Rows of the similarity matrix computed at once when looking for near-duplicates.
DUPLICATE_BLOCK = 2048


def near_duplicate_groups(X: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups (of 2 or more clip indices, ascending) joined by cosine >= threshold, transitively.

    Blockwise, so 10,000 clips never hold a 10,000 x 10,000 matrix.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(X)
    rows, cols = [], []
    for start in range(0, n, DUPLICATE_BLOCK):
        sims = X[start : start + DUPLICATE_BLOCK] @ X[start:].T  # later clips only: half the products
        r, c = np.nonzero(sims >= threshold)
        keep = r < c  # each pair once, no self pairs
        rows.append(start + r[keep])
        cols.append(start + c[keep])
    r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, int), np.zeros(0, int))
    if not len(r):
        return []
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    groups = [np.flatnonzero(component == g).tolist() for g in np.flatnonzero(sizes > 1)]
    return sorted(groups)


def collapse_duplicates(
    X: np.ndarray, duplicate_cosine: float | None
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """(near-duplicate groups, clip -> point index, points): one point per take, the mean of its copies."""
    n = len(X)
    groups = near_duplicate_groups(X, duplicate_cosine) if duplicate_cosine is not None and n > 1 else []
    # representative of each clip: itself, or the first clip of its duplicate group
    rep = np.arange(n)
    for group in groups:
        rep[group] = group[0]
    unique, inverse = np.unique(rep, return_inverse=True)
    if not groups:
        return groups, inverse, X
    sums = np.zeros((len(unique), X.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, X)
    return groups, inverse, l2_normalise(sums)
