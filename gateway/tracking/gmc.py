"""Camera-motion compensation of BoT-SORT: Ultralytics' GMC `sparseOptFlow` (trackers/utils/gmc.py) and multi_gmc.

Between two frames: corners of the previous grayscale frame (downscaled by 2) followed by pyramidal Lucas-Kanade
optical flow into the current one, and a RANSAC partial-affine fit (rotation, uniform scale, translation) of the
moved points. Same OpenCV calls with the same arguments as Ultralytics, so the same warp. What carries over to the
next frame is `Motion`: the downscaled grayscale frame and its corners, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
DOWNSCALE = 2  # Ultralytics' GMC default: flow on half-size frames, translation scaled back
# goodFeaturesToTrack's settings in Ultralytics' GMC: at most 400 corners, quality 1 % of the best, any distance apart,
# 3 x 3 blocks, Shi-Tomasi (k only matters to Harris)
MAX_CORNERS, QUALITY, MIN_DISTANCE, BLOCK_SIZE, HARRIS, HARRIS_K = 400, 0.01, 0, 3, False, 0.04


@dataclass(frozen=True)
class Motion:
    """The previous frame for the flow. frame: (H // 2, W // 2) uint8 grayscale; points: (K, 1, 2) float32 corners
    in that frame's pixels (K >= 1)."""

    frame: NDArray[np.uint8]
    points: NDArray[np.float32]


def estimate(previous: Motion | None, image: NDArray[np.uint8]) -> tuple[F64, Motion | None]:
    """The (2, 3) affine warp from the previous frame to `image` (BGR, (H, W, 3)) and the motion state after it.

    Identity on the first frame and wherever Ultralytics' GMC falls back to it. When OpenCV refuses the frame (a size
    other than the previous frame's), Ultralytics' tracker catches the error and uses the identity without storing
    the new frame; so does this: the previous state is kept.
    """
    warp = np.eye(2, 3)
    try:
        height, width, channels = image.shape
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if channels == 3 else image
        gray = cast("NDArray[np.uint8]", cv2.resize(gray, (width // DOWNSCALE, height // DOWNSCALE)))
        corners = cv2.goodFeaturesToTrack(
            gray,
            MAX_CORNERS,
            QUALITY,
            MIN_DISTANCE,
            mask=None,
            blockSize=BLOCK_SIZE,
            useHarrisDetector=HARRIS,
            k=HARRIS_K,
        )
        current = None if corners is None else Motion(gray, cast("NDArray[np.float32]", corners))
        if previous is None:  # first frame, or the previous frame had no corners
            return warp, current
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous.frame, gray, previous.points, None)  # type: ignore[call-overload]
    except (cv2.error, ValueError):
        return warp, previous
    good = np.asarray(status).ravel().astype(bool)
    before, after = previous.points[good], np.asarray(moved)[good]
    if before.shape[0] > 4:
        fitted = cv2.estimateAffinePartial2D(before, after, method=cv2.RANSAC)[0]
        if fitted is not None:
            warp = cast("F64", fitted)
            warp[0, 2] *= DOWNSCALE
            warp[1, 2] *= DOWNSCALE
    return warp, current


def apply(mean: F64, covariance: F64, angle: F64, warp: F64, obb: bool) -> tuple[F64, F64, F64]:
    """Warp xywh Kalman states (mean (N, 8), covariance (N, 8, 8)) and angles (N,) by a (2, 3) affine (multi_gmc).

    Centres and their velocities rotate; axis-aligned sizes follow |R| (the enclosing box), oriented sizes only scale
    and the rotation is added to the angle."""
    if not len(mean):
        return mean, covariance, angle
    rotation = warp[:2, :2]
    r8 = np.kron(np.eye(4, dtype=np.float32), rotation)
    r8[2:4, 2:4] = r8[6:8, 6:8] = np.linalg.norm(rotation[:, 0]) * np.eye(2) if obb else np.abs(rotation)
    mean = np.matmul(r8, mean[..., None])[..., 0]
    mean[:, :2] += warp[:2, 2]
    covariance = np.matmul(np.matmul(r8, covariance), np.ascontiguousarray(r8.T))
    if obb:
        angle = angle + np.arctan2(rotation[1, 0], rotation[0, 0])
    return mean, covariance, angle
