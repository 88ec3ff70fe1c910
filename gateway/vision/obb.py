"""Oriented boxes (task `obb`): probabilistic IoU, Ultralytics' Fast-NMS and box corners, in NumPy.

Ports of ultralytics/utils/metrics.py `batch_probiou`, utils/nms.py `TorchNMS.fast_nms` (what
`non_max_suppression(rotated=True)` calls) and utils/ops.py `xywhr2xyxyxyxy`, in float32 with the same order of
operations, so that the same boxes survive and the corners come out the same as `Results.obb.xyxyxyxy`. One limit:
NumPy's and torch's `exp` may differ in the last float32 place, so a pair of boxes whose overlap lies within about
1e-7 of the IoU threshold can be kept by one and suppressed by the other (tests/test_nms_edges.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
EPS = np.float32(1e-7)
# Rows of the IoU matrix computed at once: Fast-NMS needs every pair, so bound the memory, not the work.
BLOCK_ELEMENTS = 1 << 20


def _covariance(b: F32) -> tuple[F32, F32, F32]:
    """(a, b, c) of each box's Gaussian covariance [[a, c], [c, b]]. b: (N, 5) xywhr; each result (N,)."""
    a = b[:, 2] * b[:, 2] / np.float32(12)
    bb = b[:, 3] * b[:, 3] / np.float32(12)
    cos, sin = np.cos(b[:, 4]), np.sin(b[:, 4])
    cos2, sin2 = cos * cos, sin * sin
    return a * cos2 + bb * sin2, a * sin2 + bb * cos2, (a - bb) * cos * sin


def probiou(obb1: F32, obb2: F32) -> F32:
    """(N, M) probabilistic IoU (1 - Hellinger distance of the boxes' Gaussians). obb1: (N, 5), obb2: (M, 5) xywhr."""
    x1, y1 = obb1[:, 0:1], obb1[:, 1:2]
    x2, y2 = obb2[None, :, 0], obb2[None, :, 1]
    a1, b1, c1 = (v[:, None] for v in _covariance(obb1))
    a2, b2, c2 = (v[None, :] for v in _covariance(obb2))
    sa, sb, sc = a1 + a2, b1 + b2, c1 + c2
    dy, dx = y1 - y2, x1 - x2
    det: F32 = sa * sb - sc * sc
    t1 = ((sa * (dy * dy) + sb * (dx * dx)) / (det + EPS)) * np.float32(0.25)
    t2 = ((sc * (x2 - x1) * dy) / (det + EPS)) * np.float32(0.5)
    own = np.maximum(a1 * b1 - c1 * c1, 0) * np.maximum(a2 * b2 - c2 * c2, 0)
    t3 = np.log(det / (np.float32(4) * np.sqrt(own) + EPS) + EPS) * np.float32(0.5)
    bd = np.clip(t1 + t2 + t3, EPS, np.float32(100))
    hd = np.sqrt(np.float32(1) - np.exp(-bd) + EPS)
    out: F32 = (np.float32(1) - hd).astype(np.float32)
    return out


def fast_nms(boxes: F32, scores: F32, iou: float, block_elements: int = BLOCK_ELEMENTS) -> NDArray[np.int64]:
    """Indices of kept boxes, best first (Fast-NMS). boxes: (N, 5) xywhr, class offset already added; scores: (N,).

    Unlike greedy NMS, a box is dropped when any higher-scoring box overlaps it by more than `iou`, even one that was
    itself dropped. Pairs are computed in blocks of rows, and only against boxes not yet dropped.
    """
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    n = len(b)
    threshold = np.float32(iou)  # torch compares the float32 IoU with the threshold as float32
    dropped = np.zeros(n, bool)
    step = max(1, block_elements // max(n, 1))
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        cols = np.flatnonzero(~dropped[r0 + 1 :]) + r0 + 1  # only boxes after the first row of the block
        if not len(cols):
            break
        overlap = probiou(b[r0:r1], b[cols]) > threshold
        overlap &= np.arange(r0, r1)[:, None] < cols[None, :]  # upper triangle: only higher-scoring boxes drop
        dropped[cols] |= overlap.any(axis=0)
    return order[~dropped].astype(np.int64)


def corners(rboxes: F32) -> F32:
    """(N, 4, 2) corners of (N, 5) xywhr boxes, in Ultralytics' order (from the +w/2, +h/2 corner, as rendered)."""
    ctr = rboxes[:, :2]
    w, h, angle = rboxes[:, 2:3], rboxes[:, 3:4], rboxes[:, 4:5]
    cos, sin = np.cos(angle), np.sin(angle)
    vec1 = np.concatenate([w / np.float32(2) * cos, w / np.float32(2) * sin], axis=1)
    vec2 = np.concatenate([-h / np.float32(2) * sin, h / np.float32(2) * cos], axis=1)
    return np.stack([ctr + vec1 + vec2, ctr + vec1 - vec2, ctr - vec1 - vec2, ctr - vec1 + vec2], axis=1)
