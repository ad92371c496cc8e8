"""Monotonic alignment search (MAS, Glow-TTS/VITS) with a numba kernel: no C build step.

`maximum_path(log_likelihood, mask)` takes the VITS cost matrix [B, frames, text] and returns a
hard 0/1 path of the same shape in which every frame is assigned to exactly one text token, the
tokens in order, each token at least one frame. The dynamic programme is O(frames * text) per
item; numba compiles it once per process (~1 s, cached on disk when possible) and then runs
16 x 800 x 200 in a few ms. `maximum_path_numpy` is the same algorithm vectorised over the batch
in numpy: the reference for tests and the baseline for the benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

_NEG_INF = -1e9
_KERNEL = None


def _build_kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def _maximum_path_batch(paths, values, frame_lengths, text_lengths):  # pragma: no cover - jitted
        batch = values.shape[0]
        for b in range(batch):
            t_y = frame_lengths[b]
            t_x = text_lengths[b]
            value = values[b]
            path = paths[b]
            # forward pass: value[y, x] += max(value[y-1, x], value[y-1, x-1])
            for y in range(t_y):
                lo = max(0, t_x + y - t_y)
                hi = min(t_x, y + 1)
                for x in range(lo, hi):
                    v_cur = _NEG_INF if (x == y or y == 0) else value[y - 1, x]
                    if x == 0:
                        v_prev = 0.0 if y == 0 else _NEG_INF
                    else:
                        v_prev = value[y - 1, x - 1] if y > 0 else _NEG_INF
                    value[y, x] += max(v_prev, v_cur)
            # backtrack from the last frame / last token
            index = t_x - 1
            for y in range(t_y - 1, -1, -1):
                path[y, index] = 1.0
                if index != 0 and (index == y or value[y - 1, index] < value[y - 1, index - 1]):
                    index -= 1

    return _maximum_path_batch


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    return _KERNEL


def _lengths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frame_lengths = mask[:, :, 0].sum(axis=1).astype(np.int64)
    text_lengths = mask[:, 0, :].sum(axis=1).astype(np.int64)
    return frame_lengths, text_lengths


def maximum_path(log_likelihood: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard monotonic alignment. log_likelihood, mask: [B, frames, text] -> 0/1 path, same shape.

    Needs frames >= text tokens for every item (the training data filter guarantees it).
    """
    import torch

    device, dtype = log_likelihood.device, log_likelihood.dtype
    values = log_likelihood.detach().float().cpu().numpy().astype(np.float32, copy=True)
    mask_np = mask.detach().cpu().numpy()
    values = np.where(mask_np > 0, values, np.float32(0.0)).astype(np.float32)
    frame_lengths, text_lengths = _lengths(mask_np)
    paths = np.zeros(values.shape, dtype=np.float32)
    _kernel()(paths, values, frame_lengths, text_lengths)
    return torch.from_numpy(paths).to(device=device, dtype=dtype)


def maximum_path_numpy(log_likelihood: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same search, vectorised over the batch with numpy (no numba): reference/baseline."""
    import torch

    device, dtype = log_likelihood.device, log_likelihood.dtype
    value = log_likelihood.detach().float().cpu().numpy().astype(np.float32)
    mask_np = mask.detach().cpu().numpy().astype(bool)
    value = value * mask_np
    batch, t_y, t_x = value.shape
    direction = np.zeros(value.shape, dtype=np.int64)
    v = np.zeros((batch, t_x), dtype=np.float32)
    x_range = np.arange(t_x, dtype=np.float32).reshape(1, -1)
    for j in range(t_y):
        v0 = np.pad(v, [[0, 0], [1, 0]], mode="constant", constant_values=_NEG_INF)[:, :-1]
        v1 = v
        max_mask = v1 >= v0
        v_max = np.where(max_mask, v1, v0)
        direction[:, j] = max_mask
        index_mask = x_range <= j
        v = np.where(index_mask, v_max + value[:, j], _NEG_INF)
    direction = np.where(mask_np, direction, 1)
    path = np.zeros(value.shape, dtype=np.float32)
    index = mask_np[:, 0, :].sum(1).astype(np.int64) - 1
    index_range = np.arange(batch)
    for j in reversed(range(t_y)):
        path[index_range, j, index] = 1
        index = index + direction[index_range, j, index] - 1
    path = path * mask_np.astype(np.float32)
    return torch.from_numpy(path).to(device=device, dtype=dtype)
