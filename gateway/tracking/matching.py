"""Association costs and the assignment of Ultralytics' trackers (trackers/utils/matching.py), in NumPy and SciPy.

Costs are float32 like Ultralytics': 1 - IoU of axis-aligned boxes (utils/metrics.py `bbox_ioa(iou=True)`), or
1 - probabilistic IoU of oriented ones (`batch_probiou`, gateway/vision/obb.py), optionally fused with detection scores.
The assignment is what `lap.lapjv(cost, extend_cost=True, cost_limit=thresh)` returns: the partial matching that
minimises the summed cost where leaving a row or a column unmatched costs thresh / 2. Lap solves the
(rows + cols)-square matrix that encodes this; the same optimum is the rectangular problem with costs
min(cost - thresh, 0), whose pairs at cost >= thresh are then dropped (a pair is worth matching exactly when its
cost is below thresh). SciPy solves that one 5-10x faster than the extended matrix, with equal answers
(tests/test_tracking.py compares it with lap). Plain `linear_sum_assignment` followed by a threshold is not the same
(it maximises the number of pairs first) and differs on real clips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from gateway.vision.obb import probiou

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
EPS = 1e-7


def iou_cost(a: NDArray[np.floating[Any]], b: NDArray[np.floating[Any]]) -> F32:
    """(N, M) float32 1 - IoU. a: (N, 4) xyxy or (N, 5) xywhr boxes; b: (M, 4) or (M, 5) of the same form."""
    if not len(a) or not len(b):
        return np.ones((len(a), len(b)), np.float32)
    a32 = np.ascontiguousarray(a, dtype=np.float32)
    b32 = np.ascontiguousarray(b, dtype=np.float32)
    if a32.shape[1] == 5:
        cost: F32 = np.float32(1) - probiou(a32, b32)
        return cost
    # bbox_ioa's arithmetic, in place where it can be (same operations, same order: the same float32 results)
    ax1, ay1, ax2, ay2 = np.ascontiguousarray(a32.T)[:, :, None]
    bx1, by1, bx2, by2 = np.ascontiguousarray(b32.T)
    zero = np.float32(0)  # np.maximum(., 0) for .clip(0): only a zero's sign may differ, and 1 - IoU is 1 either way
    inter: F32 = np.minimum(ax2, bx2)
    inter -= np.maximum(ax1, bx1)
    np.maximum(inter, zero, out=inter)
    high = np.minimum(ay2, by2)
    high -= np.maximum(ay1, by1)
    np.maximum(high, zero, out=high)
    inter *= high
    union = (bx2 - bx1) * (by2 - by1) + (ax2 - ax1) * (ay2 - ay1)
    union -= inter
    union += np.float32(EPS)
    inter /= union
    np.subtract(np.float32(1), inter, out=inter)
    return inter


def fuse_score(cost: F32, scores: F32) -> F32:
    """(N, M) cost with each detection's score folded in: 1 - (1 - cost) * score. scores: (M,) float32."""
    if not cost.size:
        return cost
    fused: F32 = np.float32(1) - (np.float32(1) - cost) * scores[None, :]
    return fused


def assign(cost: F32, thresh: float) -> tuple[I64, I64, I64]:
    """Pairs (K, 2) [row, col] in row order, then the unmatched rows and columns (ascending), as lap.lapjv does."""
    rows, cols = cost.shape
    if not cost.size:
        return np.empty((0, 2), np.int64), np.arange(rows), np.arange(cols)
    c64 = cost.astype(np.float64)  # lap solves in double, against the double threshold
    r, c = linear_sum_assignment(np.minimum(c64 - thresh, 0.0))
    keep = c64[r, c] < thresh
    pairs = np.empty((int(keep.sum()), 2), np.int64)
    pairs[:, 0], pairs[:, 1] = r[keep], c[keep]
    row_free = np.ones(rows, bool)
    col_free = np.ones(cols, bool)
    row_free[pairs[:, 0]] = False
    col_free[pairs[:, 1]] = False
    return pairs, np.flatnonzero(row_free), np.flatnonzero(col_free)
