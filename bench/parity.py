"""Comparing a gateway `data` list with Ultralytics' `Results.summary()` under the issue's tolerances."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

CONF_TOL = 1e-3
PIXEL_TOL = 1.0
NORM_TOL = 1e-3
MIN_POLYGON_IOU = 0.95


def polygon_iou(a: dict[str, list[float]], b: dict[str, list[float]], scale: tuple[float, float]) -> float:
    """Area IoU of two polygons given as {"x": [...], "y": [...]}, rasterised finely. scale: (sx, sy) to pixels."""
    pa = np.stack([np.asarray(a["x"]) * scale[0], np.asarray(a["y"]) * scale[1]], 1)
    pb = np.stack([np.asarray(b["x"]) * scale[0], np.asarray(b["y"]) * scale[1]], 1)
    both = np.concatenate([pa, pb]) if len(pa) and len(pb) else (pa if len(pa) else pb)
    if not len(both):
        return 1.0
    lo = both.min(0) - 2
    span = both.max(0) - lo + 4
    f = max(1.0, 1024 / max(span.max(), 1.0))  # fine raster for small polygons
    shape = (int(span[1] * f) + 2, int(span[0] * f) + 2)

    def raster(p: NDArray[np.float64]) -> NDArray[np.uint8]:
        m = np.zeros(shape, np.uint8)
        if len(p):
            pts = np.round((p - lo) * f * 16).astype(np.int32)
            cv2.fillPoly(m, [pts], (1,), lineType=cv2.LINE_8, shift=4)
            cv2.polylines(m, [pts], True, (1,), thickness=1, lineType=cv2.LINE_8, shift=4)
        return m

    ma, mb = raster(pa), raster(pb)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 1.0


def assert_matches(
    ours: list[dict[str, Any]], ref: list[dict[str, Any]], image_wh: tuple[int, int], normalize: bool
) -> None:
    assert ref, "the reference has no detections: this case would compare nothing"
    assert len(ours) == len(ref), f"{len(ours)} detections, Ultralytics has {len(ref)}"
    tol = NORM_TOL if normalize else PIXEL_TOL
    scale = (float(image_wh[0]), float(image_wh[1])) if normalize else (1.0, 1.0)
    for i, (a, b) in enumerate(zip(ours, ref)):
        where = f"detection {i}"
        assert (a["class"], a["name"]) == (b["class"], b["name"]), f"{where}: class {a['class']} vs {b['class']}"
        assert abs(a["confidence"] - b["confidence"]) <= CONF_TOL, (
            f"{where}: confidence {a['confidence']} vs {b['confidence']}"
        )
        if "box" in b:  # x1..y2, or x1..y4 for oriented boxes; classifiers have none
            assert set(a["box"]) == set(b["box"]), f"{where}: box keys {sorted(a['box'])} vs {sorted(b['box'])}"
            for k in b["box"]:
                assert abs(a["box"][k] - b["box"][k]) <= tol, f"{where}: box {k} {a['box'][k]} vs {b['box'][k]}"
        else:
            assert "box" not in a
        if "keypoints" in b:
            ka, kb = a["keypoints"], b["keypoints"]
            assert np.allclose(ka["x"], kb["x"], atol=tol, rtol=0), f"{where}: keypoint x"
            assert np.allclose(ka["y"], kb["y"], atol=tol, rtol=0), f"{where}: keypoint y"
            assert np.allclose(ka["visible"], kb["visible"], atol=CONF_TOL, rtol=0), f"{where}: keypoint visible"
        else:
            assert "keypoints" not in a
        if "segments" in b:
            iou = polygon_iou(a["segments"], b["segments"], scale)
            assert iou >= MIN_POLYGON_IOU, f"{where}: polygon IoU {iou:.3f}"
        else:
            assert "segments" not in a
