"""Reference implementations that only the tests use: the one-mask-at-a-time forms of what gateway/vision/masks.py does
for many masks at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway.vision.masks import closest_pairs, mask_contours, outlines, placed


def json_shape(value: Any) -> Any:
    """A JSON value's shape, to compare answers with documented examples: dicts by key, lists by their first item,
    numbers as 'number', booleans as 'boolean', other scalars by their type's name."""
    if isinstance(value, dict):
        return {k: json_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def image_wh(path: Path) -> tuple[int, int]:
    """(width, height) of the image file as OpenCV reads it (EXIF orientation applied): what the summaries scale to."""
    h, w = cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2]
    return w, h


def merge_multi_segment(
    segments: list[NDArray[Any]], pairs: tuple[list[int], list[int]] | None = None
) -> list[NDArray[Any]]:
    """Join several contours into one outline through their closest points: Ultralytics' converter function, step by
    step (gateway/vision/masks.py `outlines` does the same for many masks at once).

    pairs: `closest_pairs(segments)` when already computed."""
    s: list[NDArray[Any]] = []
    segments = [np.asarray(x).reshape(-1, 2) for x in segments]
    idx_list: list[list[int]] = [[] for _ in segments]
    for i, (idx1, idx2) in enumerate(zip(*(pairs or closest_pairs(segments))), start=1):
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


def mask_polygon(mask: NDArray[np.uint8], x0: int, y0: int) -> NDArray[np.float32]:
    """(K, 2) float32 outline of a binary mask placed at (x0, y0), as ops.masks2segments(strategy="all")."""
    (merged,) = outlines([mask_contours(mask)])  # (closest points: distances don't depend on the placement)
    return placed(merged, x0, y0)
