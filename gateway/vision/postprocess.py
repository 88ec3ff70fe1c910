"""NMS, box/keypoint scaling, top-5 classes and the Ultralytics `Results.summary()` shape, in NumPy (masks: masks.py).

Each step mirrors Ultralytics' own arithmetic (utils/nms.py, utils/ops.py, engine/results.py), including where it
computes in float32 and where in float64, so that results match `YOLO(...).predict(...)[0].summary()`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.arguments import MAX_DET
from gateway.vision import obb
from gateway.vision.preprocess import Letterbox

F32 = NDArray[np.float32]
MAX_WH = 7680  # per-class coordinate offset for class-aware NMS (Ultralytics' max_wh)
MAX_NMS = 30000  # candidate cap before NMS


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
    out: NDArray[np.float32] = rows[kept]
    return out


def scale_xy(xy: F32, box: Letterbox) -> F32:
    """(..., 2+) points from letterboxed-input pixels to original-image pixels, clipped to the image (in place)."""
    (gain_x, gain_y), (pad_x, pad_y) = box.gain, box.pad
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
    (gain_x, gain_y), (pad_x, pad_y) = box.gain, box.pad
    out = rboxes.copy()
    out[:, 0] -= np.float32(pad_x)
    out[:, 1] -= np.float32(pad_y)
    out[:, [0, 2]] /= np.float32(gain_x)
    out[:, [1, 3]] /= np.float32(gain_y)
    return out


def top5(probs: F32, names: dict[int, str], decimals: int = 5) -> list[dict[str, Any]]:
    """Results.summary() of a classifier: the five most probable classes, best first. probs: (nc,) softmax output."""
    best = np.argsort(-probs, kind="stable")[:5]
    return [
        {"name": names.get(int(c), str(int(c))), "class": int(c), "confidence": round(float(probs[c]), decimals)}
        for c in best
    ]


def _coords(values: F32, divisor: int, decimals: int) -> list[float]:
    """Per-point values as Ultralytics' summary writes them: float32 division, then rounded to `decimals`."""
    scaled = values / divisor if divisor != 1 else values
    return list(scaled.astype(float).round(decimals).tolist())


def summary(
    dets: F32,
    box: Letterbox,
    names: dict[int, str],
    normalize: bool,
    polygons: list[F32] | None = None,
    keypoints: F32 | None = None,
    corners: F32 | None = None,
    decimals: int = 5,
    ids: NDArray[np.int64] | None = None,
) -> list[dict[str, Any]]:
    """Ultralytics' Results.summary(normalize, decimals) for detections with boxes already in original-image pixels.

    dets: (N, 6+) xyxy, confidence, class; polygons: N × (K, 2); keypoints: (N, kpts, 2 or 3), original pixels.
    corners: (N, 4, 2) oriented-box corners, original pixels; they replace the xyxy box ("x1".."x4", "y1".."y4").
    ids: (N,) track ids, each written as `track_id` right after the box (where Ultralytics puts it when tracking).
    """
    h, w = box.orig_shape if normalize else (1, 1)
    points = corners.tolist() if corners is not None else dets[:, :4].reshape(-1, 2, 2).tolist()
    out: list[dict[str, Any]] = []
    for i, (conf, cls) in enumerate(dets[:, 4:6].tolist()):
        class_id = int(cls)
        xy = {}
        for j, (x, y) in enumerate(points[i], start=1):
            xy[f"x{j}"] = round(x / w, decimals)
            xy[f"y{j}"] = round(y / h, decimals)
        item: dict[str, Any] = {
            "name": names.get(class_id, str(class_id)),
            "class": class_id,
            "confidence": round(conf, decimals),
            "box": xy,
        }
        if ids is not None:
            item["track_id"] = int(ids[i])
        if polygons is not None:
            item["segments"] = {
                "x": _coords(polygons[i][:, 0], w, decimals),
                "y": _coords(polygons[i][:, 1], h, decimals),
            }
        if keypoints is not None:
            k = keypoints[i]
            item["keypoints"] = {"x": _coords(k[:, 0], w, decimals), "y": _coords(k[:, 1], h, decimals)}
            if k.shape[1] == 3:
                item["keypoints"]["visible"] = _coords(k[:, 2], 1, decimals)
        out.append(item)
    return out
