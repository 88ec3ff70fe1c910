"""NMS, box/keypoint scaling, masks, top-5 classes and the Ultralytics `Results.summary()` shape, in NumPy.

Each step mirrors Ultralytics' own arithmetic (utils/nms.py, utils/ops.py, engine/results.py), including where it
computes in float32 and where in float64, so that results match `YOLO(...).predict(...)[0].summary()`.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway import obb
from gateway.preprocess import Letterbox

F32 = NDArray[np.float32]
MAX_WH = 7680  # per-class coordinate offset for class-aware NMS (Ultralytics' max_wh)
MAX_NMS = 30000  # candidate cap before NMS
MAX_DET = 300


def xywh2xyxy(b: F32) -> F32:
    """(N, 4) centre-xywh → corner-xyxy, float32 like Ultralytics."""
    half = b[:, 2:] / np.float32(2)
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def nms(boxes: F32, scores: F32, iou: float) -> NDArray[np.int64]:
    """Indices of kept boxes, best first (torchvision.ops.nms). boxes: (N, 4) xyxy; scores: (N,)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    zero = np.float32(0)
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap.astype(np.float64) <= iou]  # torchvision compares the float IoU with a double
    return np.asarray(keep, dtype=np.int64)


def non_max_suppression(
    pred: F32,
    conf: float,
    iou: float,
    nc: int,
    max_det: int = MAX_DET,
    classes: tuple[int, ...] | None = None,
    agnostic: bool = False,
    compact: bool = False,
    rotated: bool = False,
) -> F32:
    """(M, 6 + extra) rows of xyxy, confidence, class, extra, best first.

    pred: (4 + nc + extra, anchors) raw output for one image, boxes in letterboxed-input pixels; with `compact`,
    (6 + extra, anchors) rows of box, best score, best class, extra (the exporter's compact_output).
    classes: keep only these class ids; agnostic: one NMS across classes instead of one per class.
    rotated: oriented boxes (the angle is the last extra row): boxes stay xywh and go through obb.fast_nms.
    """
    threshold = np.float32(conf)
    if compact:
        x = pred[:, pred[4] > threshold].T
        best, j, extra = x[:, 4], x[:, 5], x[:, 6:]
    else:
        x = pred[:, pred[4 : 4 + nc].max(axis=0) > threshold].T
        scores = x[:, 4 : 4 + nc]
        index = scores.argmax(axis=1)
        best, j, extra = scores[np.arange(len(index)), index], index.astype(np.float32), x[:, 4 + nc :]
    rows = np.concatenate([x[:, :4] if rotated else xywh2xyxy(x[:, :4]), best[:, None], j[:, None], extra], axis=1)
    if classes is not None:
        rows = rows[np.isin(rows[:, 5], np.asarray(classes, dtype=np.float32))]
    if rows.shape[0] > MAX_NMS:
        rows = rows[np.argsort(-rows[:, 4], kind="stable")[:MAX_NMS]]
    offset = rows[:, 5:6] * np.float32(0 if agnostic else MAX_WH)
    if rotated:
        boxes = np.concatenate([rows[:, :2] + offset, rows[:, 2:4], rows[:, -1:]], axis=1)
        kept = obb.fast_nms(boxes, rows[:, 4], iou)[:max_det]
    else:
        kept = nms(rows[:, :4] + offset, rows[:, 4], iou)[:max_det]
    return rows[kept]


def _gain_pad(box: Letterbox) -> tuple[float, float, int, int]:
    """(gain_x, gain_y, pad_x, pad_y) from letterboxed input back to the original image (ops.scale_boxes)."""
    (h0, w0), (h1, w1) = box.orig_shape, box.input_shape
    gain = min(h1 / h0, w1 / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    pad_x, pad_y = round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)
    return new_w / w0, new_h / h0, pad_x, pad_y


def scale_xy(xy: F32, box: Letterbox) -> F32:
    """(..., 2+) points from letterboxed-input pixels to original-image pixels, clipped to the image (in place)."""
    gain_x, gain_y, pad_x, pad_y = _gain_pad(box)
    h0, w0 = box.orig_shape
    xy[..., 0] -= np.float32(pad_x)
    xy[..., 1] -= np.float32(pad_y)
    xy[..., 0] /= np.float32(gain_x)
    xy[..., 1] /= np.float32(gain_y)
    xy[..., 0] = xy[..., 0].clip(0, w0)
    xy[..., 1] = xy[..., 1].clip(0, h0)
    return xy


def scale_boxes(boxes: F32, box: Letterbox) -> F32:
    """(N, 4) xyxy from letterboxed-input pixels to original-image pixels, clipped (returns a new array)."""
    out = boxes.reshape(-1, 2, 2).copy()
    return scale_xy(out, box).reshape(-1, 4)


def scale_rboxes(rboxes: F32, box: Letterbox) -> F32:
    """(N, 5) xywhr from letterboxed-input pixels to original-image pixels, not clipped (ops.scale_boxes(xywh=True))."""
    gain_x, gain_y, pad_x, pad_y = _gain_pad(box)
    out = rboxes.copy()
    out[:, 0] -= np.float32(pad_x)
    out[:, 1] -= np.float32(pad_y)
    out[:, [0, 2]] /= np.float32(gain_x)
    out[:, [1, 3]] /= np.float32(gain_y)
    return out


def top5(probs: F32, names: dict[int, str]) -> list[dict[str, Any]]:
    """Results.summary() of a classifier: the five most probable classes, best first. probs: (nc,) softmax output."""
    best = np.argsort(-probs, kind="stable")[:5]
    return [
        {"name": names.get(int(c), str(int(c))), "class": int(c), "confidence": round(float(probs[c]), 5)} for c in best
    ]


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


def _closest_pairs(segments: list[NDArray[Any]]) -> tuple[list[int], list[int]]:
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
        out = points[np.where(valid, starts[ids][:, None] + t, 0)]
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


def merge_multi_segment(
    segments: list[NDArray[Any]], pairs: tuple[list[int], list[int]] | None = None
) -> list[NDArray[Any]]:
    """Join several contours into one outline through their closest points (Ultralytics' converter function).

    pairs: `_closest_pairs(segments)` when already computed (for many masks at once)."""
    s: list[NDArray[Any]] = []
    segments = [np.asarray(x).reshape(-1, 2) for x in segments]
    idx_list: list[list[int]] = [[] for _ in segments]
    for i, (idx1, idx2) in enumerate(zip(*(pairs or _closest_pairs(segments))), start=1):
        idx_list[i - 1].append(idx1)
        idx_list[i].append(idx2)
    last = len(idx_list) - 1
    for i, idx in enumerate(idx_list):
        if len(idx) == 2 and idx[0] > idx[1]:
            idx = [len(segments[i]) - 1 - x for x in idx]
            segments[i] = segments[i][::-1, :]
        k, seg = idx[0], segments[i]
        segments[i] = np.concatenate([seg[k:], seg[:k], seg[k : k + 1]])  # np.roll(seg, -k), then closed
        if i in {0, last}:
            s.append(segments[i])
        else:
            s.append(segments[i][: idx[1] - idx[0] + 1])
    for i in range(last, -1, -1):
        if i not in {0, last}:
            idx = idx_list[i]  # the indices before any reversal, as Ultralytics does; only |difference| matters
            s.append(segments[i][abs(idx[1] - idx[0]) :])
    return s


def mask_contours(mask: NDArray[np.uint8]) -> list[NDArray[Any]]:
    """(K, 2) int32 outer contours of a binary mask, in the mask's own pixels (ops.masks2segments' findContours)."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return [c.reshape(-1, 2) for c in cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]]


def outlines(contour_sets: list[list[NDArray[Any]]]) -> list[NDArray[Any]]:
    """One (K, 2) outline per mask, as masks2segments(strategy="all") builds it: a mask's contours joined through
    their closest points (merge_multi_segment), for all masks at once.

    merge_multi_segment's output is made of runs of each contour, rolled to a start point, maybe reversed, and closed
    with its first point; here every run is described by numbers (contour, start, direction, first and count of
    positions) and all runs are gathered from the concatenated points in one indexing step. Equal point for point to
    Ultralytics' function (tests/test_merge_segments.py).
    """
    flat = [c.reshape(-1, 2) for contours in contour_sets for c in contours]
    if not flat:
        return [np.zeros((0, 2), np.int32) for _ in contour_sets]
    first, second = _closest_pairs(flat) if len(flat) > 1 else ([], [])
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


def _placed(outline: NDArray[Any], x0: int, y0: int) -> F32:
    """An outline in mask pixels (found with a 1-pixel border) moved to the mask's place (x0, y0), as float32."""
    return (outline + np.array([x0 - 1, y0 - 1])).astype(np.float32)


def mask_polygon(mask: NDArray[np.uint8], x0: int, y0: int) -> F32:
    """(K, 2) float32 outline of a binary mask placed at (x0, y0), as ops.masks2segments(strategy="all")."""
    (merged,) = outlines([mask_contours(mask)])  # (closest points: distances don't depend on the placement)
    return _placed(merged, x0, y0)


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
    polygons = [scale_xy(_placed(merged, x0, y0), box) for merged, (x0, y0) in zip(outlines(contour_sets), origins)]
    return dets[keep], polygons


def _coords(values: F32, divisor: int) -> list[float]:
    """Per-point values as Ultralytics' summary writes them: float32 division, then rounded to 5 decimals."""
    scaled = values / divisor if divisor != 1 else values
    return list(scaled.astype(float).round(5).tolist())


def summary(
    dets: F32,
    box: Letterbox,
    names: dict[int, str],
    normalize: bool,
    polygons: list[F32] | None = None,
    keypoints: F32 | None = None,
    corners: F32 | None = None,
) -> list[dict[str, Any]]:
    """Ultralytics' Results.summary(normalize) for detections with boxes already in original-image pixels.

    dets: (N, 6+) xyxy, confidence, class; polygons: N × (K, 2); keypoints: (N, kpts, 2 or 3), original pixels.
    corners: (N, 4, 2) oriented-box corners, original pixels; they replace the xyxy box ("x1".."x4", "y1".."y4").
    """
    h, w = box.orig_shape if normalize else (1, 1)
    points = corners.tolist() if corners is not None else dets[:, :4].reshape(-1, 2, 2).tolist()
    out: list[dict[str, Any]] = []
    for i, (conf, cls) in enumerate(dets[:, 4:6].tolist()):
        class_id = int(cls)
        xy = {}
        for j, (x, y) in enumerate(points[i], start=1):
            xy[f"x{j}"] = round(x / w, 5)
            xy[f"y{j}"] = round(y / h, 5)
        item: dict[str, Any] = {
            "name": names.get(class_id, str(class_id)),
            "class": class_id,
            "confidence": round(conf, 5),
            "box": xy,
        }
        if polygons is not None:
            item["segments"] = {"x": _coords(polygons[i][:, 0], w), "y": _coords(polygons[i][:, 1], h)}
        if keypoints is not None:
            k = keypoints[i]
            item["keypoints"] = {"x": _coords(k[:, 0], w), "y": _coords(k[:, 1], h)}
            if k.shape[1] == 3:
                item["keypoints"]["visible"] = _coords(k[:, 2], 1)
        out.append(item)
    return out
