"""Ultralytics' track Kalman filters (trackers/utils/kalman_filter.py), for many tracks at once, in float64.

One constant-velocity model, two box forms: `xyah` (centre x, centre y, aspect w/h, height; ByteTrack's
KalmanFilterXYAH) and `xywh` (centre x, centre y, width, height; BoT-SORT's KalmanFilterXYWH). A state is the box
and its velocity: mean (N, 8), covariance (N, 8, 8), in original-image pixels. The expressions are Ultralytics' own,
in the same order and batching (its multi_predict is already batched; its per-track update is the same LAPACK solve
and BLAS products here, one call per batch), so the means agree bit for bit (tests/test_tracking.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
Form = Literal["xyah", "xywh"]

STD_POSITION = 1.0 / 20  # noise relative to the box size: Ultralytics' _std_weight_position
STD_VELOCITY = 1.0 / 160  # _std_weight_velocity


def _diag(values: F64) -> F64:
    """(N, K, K) diagonal matrices from (N, K) diagonals."""
    n, k = values.shape
    out = np.zeros((n, k, k))
    out.reshape(n, k * k)[:, :: k + 1] = values
    return out


def _variance(x: F64, form: Form, weights: tuple[float, ...], aspect: tuple[float, ...]) -> F64:
    """(N, 4 * len(weights)) squared standard deviations: each weight times the box size that scales it (xyah: the
    height, for all but the aspect ratio, whose deviation is the fixed `aspect`; xywh: the width or the height)."""
    size = x[:, [3, 3, 3, 3] if form == "xyah" else [2, 3, 2, 3]]
    std = np.concatenate([w * size for w in weights], axis=1)
    if form == "xyah":
        std[:, 2::4] = aspect
    variance: F64 = np.square(std)
    return variance


def initiate(measurement: F32, form: Form) -> tuple[F64, F64]:
    """New tracks: mean (N, 8) with zero velocity, covariance (N, 8, 8). measurement: (N, 4) in `form`."""
    z = np.asarray(measurement, dtype=np.float64)
    mean = np.concatenate([z, np.zeros_like(z)], axis=1)
    return mean, _diag(_variance(z, form, (2 * STD_POSITION, 10 * STD_VELOCITY), (1e-2, 1e-5)))


def predict(mean: F64, covariance: F64, form: Form) -> tuple[F64, F64]:
    """One frame ahead (Ultralytics' multi_predict). mean: (N, 8); covariance: (N, 8, 8)."""
    motion_cov = _diag(_variance(mean, form, (STD_POSITION, STD_VELOCITY), (1e-2, 1e-5)))
    # Ultralytics multiplies by the motion matrix (np.dot); each entry of those products is a sum of exactly two
    # nonzero terms, x + v, which any order of summation rounds alike: adding them directly is the same bits.
    mean = mean.copy()
    mean[:, :4] += mean[:, 4:]
    left = covariance.copy()
    left[:, :4, :] += covariance[:, 4:, :]
    moved = left.copy()
    moved[:, :, :4] += left[:, :, 4:]
    return mean, moved + motion_cov


def update(mean: F64, covariance: F64, measurement: F32, form: Form) -> tuple[F64, F64]:
    """Correct (N, 8) means and (N, 8, 8) covariances with (N, 4) measurements in `form` (Ultralytics' update)."""
    projected_cov = covariance[:, :4, :4] + _diag(_variance(mean, form, (STD_POSITION,), (1e-1,)))
    gain_t = np.linalg.solve(projected_cov, np.swapaxes(covariance[:, :, :4], 1, 2))  # (N, 4, 8): gain transposed
    innovation = measurement - mean[:, :4]
    new_mean = mean + np.matmul(innovation[:, None, :], gain_t)[:, 0]
    # multi_dot((K, S, K.T)) multiplies K @ (S @ K.T) for these shapes (equal costs either way: it takes the second)
    new_cov = covariance - np.matmul(np.swapaxes(gain_t, 1, 2), np.matmul(projected_cov, gain_t))
    return new_mean, new_cov


def measure(tlwh: F32, form: Form) -> F32:
    """(N, 4) measurements in `form` from float32 (N, 4) top-left-wh detections (STrack.convert_coords), float32."""
    z = tlwh.copy()
    z[:, :2] += z[:, 2:] / 2
    if form == "xyah":
        z[:, 2] /= z[:, 3]
    return z


def tlwh(mean: F64, form: Form) -> F64:
    """(N, 4) top-left x, y, width, height of the tracks' boxes (STrack.tlwh / BOTrack.tlwh), float64."""
    ret = mean[:, :4].copy()
    if form == "xyah":
        ret[:, 2] *= ret[:, 3]
    ret[:, :2] -= ret[:, 2:] / 2
    return ret
