"""Instance masks (task `segment`): each detection's mask inside its box, and its outline as a polygon, in NumPy
and OpenCV.

Ports of ultralytics/utils/ops.py `process_mask(upsample=True)` and `masks2segments(strategy="all")` (with
data/converter.py `merge_multi_segment`), computed only where a box needs them and for all masks at once, equal point
for point to Ultralytics' (tests/test_merge_segments.py, tests/test_parity.py).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway.vision.postprocess import scale_xy
from gateway.vision.preprocess import Letterbox

F32 = NDArray[np.float32]


def _interp_weights(out_idx: NDArray[np.int64], in_size: int, out_size: int) -> tuple[Any, Any, F32, F32]:
    """Source indices and weights of torch's bilinear resize (align_corners=False) along one axis, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    real = np.maximum(scale * (out_idx.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    lam1 = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (np.float32(1) - lam1).astype(np.float32), lam1


def mask_in_box(coef: F32, protos: F32, xyxy: F32, input_shape: tuple[int, int]) -> tuple[NDArray[np.uint8], int, int]:
    """(mask, x0, y0): the binary mask of one detection inside its box, at letterboxed-input resolution.

    ops.process_mask(upsample=True) computes coef @ protos, upsamples the whole map bilinearly to the input size,
    thresholds at 0 and zeroes everything outside the box. Each upsampled pixel depends only on its own source
    neighbours, so we compute just the pixels inside the box: same values, a fraction of the work.
    coef: (C,); protos: (C, mh, mw); xyxy: box in letterboxed-input pixels.
    """
    c, mh, mw = protos.shape
    height, width = input_shape
    # crop_mask keeps column r when x1 <= r < x2
    cx0, cx1 = max(int(np.ceil(xyxy[0])), 0), min(int(np.ceil(xyxy[2])), width)
    cy0, cy1 = max(int(np.ceil(xyxy[1])), 0), min(int(np.ceil(xyxy[3])), height)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros((0, 0), np.uint8), cx0, cy0
    xi0, xi1, xw0, xw1 = _interp_weights(np.arange(cx0, cx1), mw, width)
    yi0, yi1, yw0, yw1 = _interp_weights(np.arange(cy0, cy1), mh, height)
    r0, r1, c0, c1 = int(yi0.min()), int(yi1.max()) + 1, int(xi0.min()), int(xi1.max()) + 1
    sub = (coef @ protos[:, r0:r1, c0:c1].reshape(c, -1)).reshape(r1 - r0, c1 - c0)
    across = sub[:, xi0 - c0] * xw0 + sub[:, xi1 - c0] * xw1
    full = across[yi0 - r0] * yw0[:, None] + across[yi1 - r0] * yw1[:, None]
    return (full > 0).astype(np.uint8), cx0, cy0


# Batched distance matrices pad short contours with +_PAD (first of a pair) and -_PAD (second): farther from any point
# of a mask (coordinates < 2048) than real points are from each other, and no int32 overflow.
_PAD = 4096
_BATCH_SIZES = (4, 8, 16, 32, 64)
_BATCH_ELEMENTS = 1 << 20  # distances computed at once in a batch (4 MiB of int32 per temporary)


def closest_pairs(segments: list[NDArray[Any]]) -> tuple[list[int], list[int]]:
    """For each consecutive pair of (K, 2) point arrays, (i, j) of their closest points; ties: first in row-major
    order (np.argmin), as Ultralytics' min_index. Pairs of short contours (most of them) are batched by size, with
    the padded point arrays gathered in one step per batch."""
    n = len(segments)
    lens = np.fromiter((len(x) for x in segments), np.int64, n)
    points = np.concatenate(segments).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    first = np.zeros(n - 1, np.int64)
    second = np.zeros(n - 1, np.int64)
    sizes = np.asarray(_BATCH_SIZES)
    size_a, size_b = np.searchsorted(sizes, lens[:-1]), np.searchsorted(sizes, lens[1:])
    bucket = size_a * len(sizes) + size_b  # batched by both sizes: little padding when a tiny contour meets a long one
    too_long = (size_a == len(sizes)) | (size_b == len(sizes))
    bucket[too_long] = -1

    def padded(ids: NDArray[np.int64], size: int, pad: int) -> NDArray[np.int32]:
        t = np.arange(size)
        valid = t < lens[ids][:, None]
        out: NDArray[np.int32] = points[np.where(valid, starts[ids][:, None] + t, 0)]
        out[~valid] = pad
        return out

    for key in np.unique(bucket[bucket >= 0]).tolist():
        na, nb = _BATCH_SIZES[key // len(sizes)], _BATCH_SIZES[key % len(sizes)]
        pairs = np.flatnonzero(bucket == key)
        step = max(1, _BATCH_ELEMENTS // (na * nb))
        for c in range(0, len(pairs), step):
            ks = pairs[c : c + step]
            a, b = padded(ks, na, _PAD), padded(ks + 1, nb, -_PAD)  # a's and b's padding are never close to anything
            dx = a[:, :, None, 0] - b[:, None, :, 0]
            dy = a[:, :, None, 1] - b[:, None, :, 1]
            flat = (dx * dx + dy * dy).reshape(len(ks), -1).argmin(axis=1)
            first[ks], second[ks] = flat // nb, flat % nb
    for k in np.flatnonzero(too_long).tolist():
        x, y = segments[k], segments[k + 1]
        d = ((x[:, None, :].astype(np.int64) - y[None, :, :]) ** 2).sum(-1)
        first[k], second[k] = np.unravel_index(np.argmin(d, axis=None), d.shape)
    return first.tolist(), second.tolist()


def mask_contours(mask: NDArray[np.uint8]) -> list[NDArray[Any]]:
    """(K, 2) int32 outer contours of a binary mask, in the mask's own pixels (ops.masks2segments' findContours)."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=(0,))
    return [c.reshape(-1, 2) for c in cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]]


def outlines(contour_sets: list[list[NDArray[Any]]]) -> list[NDArray[Any]]:
    """One (K, 2) outline per mask, as masks2segments(strategy="all") builds it: a mask's contours joined through
    their closest points (Ultralytics' merge_multi_segment; tests/reference.py has its one-mask port), for all masks
    at once.

    merge_multi_segment's output is made of runs of each contour, rolled to a start point, maybe reversed, and closed
    with its first point; here every run is described by numbers (contour, start, direction, first and count of
    positions) and all runs are gathered from the concatenated points in one indexing step. Equal point for point to
    Ultralytics' function (tests/test_merge_segments.py).
    """
    flat = [c.reshape(-1, 2) for contours in contour_sets for c in contours]
    if not flat:
        return [np.zeros((0, 2), np.int32) for _ in contour_sets]
    first, second = closest_pairs(flat) if len(flat) > 1 else ([], [])
    lens = [len(c) for c in flat]
    # one row per run: contour g, start k, reversed, first position t0, count
    runs: list[tuple[int, int, bool, int, int]] = []
    run_counts = []
    g0 = 0
    for contours in contour_sets:
        n = len(contours)
        before = len(runs)
        if n == 1:
            runs.append((g0, 0, False, 0, lens[g0]))  # a single contour is used as found (not closed)
        elif n > 1:
            last = g0 + n - 1
            middle = []
            for g in range(g0, last + 1):
                size = lens[g]
                if g == g0:
                    runs.append((g, first[g], False, 0, size + 1))
                elif g == last:
                    runs.append((g, second[g - 1], False, 0, size + 1))
                else:
                    a, b = second[g - 1], first[g]
                    rev = a > b
                    d = abs(a - b)
                    runs.append((g, size - 1 - a if rev else a, rev, 0, d + 1))
                    middle.append((g, size - 1 - a if rev else a, rev, d, size + 1 - d))
            runs.extend(reversed(middle))
        run_counts.append(len(runs) - before)
        g0 += n
    table = np.asarray(runs, dtype=np.int64).reshape(-1, 5)
    g, k, rev, t0, count = table.T
    size = np.asarray(lens, dtype=np.int64)[g]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])[g]
    point_bounds = np.concatenate([[0], np.cumsum(count)])  # where each run starts and ends in the output
    run_of = np.repeat(np.arange(len(table)), count)
    t = t0[run_of] + np.arange(point_bounds[-1]) - np.repeat(point_bounds[:-1], count)
    u = (k[run_of] + t) % size[run_of]  # position in the rolled, closed contour → position in the (reversed) contour
    u = np.where(rev[run_of] == 1, size[run_of] - 1 - u, u)
    points = np.concatenate(flat)[starts[run_of] + u]
    bounds = point_bounds[np.concatenate([[0], np.cumsum(run_counts)])]  # where each mask's runs start and end
    return [points[bounds[m] : bounds[m + 1]] for m in range(len(contour_sets))]


def placed(outline: NDArray[Any], x0: int, y0: int) -> F32:
    """An outline in mask pixels (found with a 1-pixel border) moved to the mask's place (x0, y0), as float32."""
    out: F32 = (outline + np.array([x0 - 1, y0 - 1])).astype(np.float32)
    return out


def segments(dets: F32, protos: F32, box: Letterbox, nc: int) -> tuple[F32, list[F32]]:
    """(kept detections, their polygons in original-image pixels); detections whose mask is empty are dropped.

    dets: (N, 6 + C) with boxes still in letterboxed-input pixels; protos: (C, mh, mw).
    """
    keep, contour_sets, origins = [], [], []
    for i, row in enumerate(dets):
        mask, x0, y0 = mask_in_box(row[6:], protos, row[:4], box.input_shape)
        if not mask.any():
            continue
        keep.append(i)
        contour_sets.append(mask_contours(mask))
        origins.append((x0, y0))
    polygons = [scale_xy(placed(merged, x0, y0), box) for merged, (x0, y0) in zip(outlines(contour_sets), origins)]
    return dets[keep], polygons
