"""Tracks and detections as rows of one float64 table each: what Ultralytics keeps in its STrack objects.

One table rather than a dozen columns because the tracker selects and joins rows many times a frame, and one
NumPy call per selection is what keeps a frame with 50 objects well under a millisecond. float64 holds every
column exactly: float32 scores, and integers (ids, frame numbers) far below 2**53. Both are immutable values:
every operation returns a new table, so a `State` (gateway/tracking/state.py) that was read stays valid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.tracking import kalman

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Index = NDArray[np.integer[Any]] | NDArray[np.bool_] | slice

# Track columns. MEAN, COV: the Kalman state (8 and 8 x 8) in the tracker's form, original-image pixels; ANGLE:
# radians (oriented boxes; 0 otherwise); FRAME: the last frame matched; START: the frame it began; ACTIVE: 1 when
# confirmed (an unconfirmed track is in its first frame and not reported); SCORE, CLS, IDX: of the detection last
# matched (IDX: its row in that frame's input); REMOVED: the sequence number of the track's last entry in
# Ultralytics' removed_stracks, -1 if none (tracker.py says why that matters).
MEAN, COV = slice(0, 8), slice(8, 72)
ANGLE, ID, FRAME, START, ACTIVE, SCORE, CLS, IDX, REMOVED = range(72, 81)
WIDTH = 81


class Tracks:
    """N tracks in list order: a read-only (N, WIDTH) float64 table (columns above)."""

    __slots__ = ("data",)

    def __init__(self, data: F64) -> None:
        data.flags.writeable = False
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def take(self, rows: Index) -> Tracks:
        """The tracks at `rows` (indices or a mask), in that order."""
        return Tracks(self.data[rows])

    @property
    def mean(self) -> F64:
        """(N, 8), a C-ordered copy."""
        return self.data[:, MEAN].copy()

    @property
    def covariance(self) -> F64:
        """(N, 8, 8), a C-ordered copy."""
        return self.data[:, COV].copy().reshape(-1, 8, 8)

    def column(self, col: int) -> F64:
        return self.data[:, col]

    def ints(self, col: int) -> I64:
        return self.data[:, col].astype(np.int64)

    def boxes(self, form: kalman.Form, obb: bool) -> F64:
        """(N, 4) xyxy (STrack.xyxy), or (N, 5) xywh + angle for oriented boxes (STrack.xywha), float64."""
        ret = kalman.tlwh(self.data[:, MEAN], form)
        if obb:
            ret[:, :2] += ret[:, 2:] / 2
            return np.concatenate([ret, self.data[:, ANGLE : ANGLE + 1]], axis=1)
        ret[:, 2:] += ret[:, :2]
        return ret


def concat(*parts: Tracks) -> Tracks:
    """The tracks of `parts`, one list after the other."""
    return Tracks(np.concatenate([p.data for p in parts]))


def empty() -> Tracks:
    """No tracks."""
    return Tracks(np.zeros((0, WIDTH)))


# Detection columns: TLWH (float32 values) top-left x, y, width, height; D_ANGLE radians in the long-edge form
# (width >= height; 0 for axis-aligned boxes); D_SCORE (float32 value), D_CLS, D_IDX (the row in the frame's input).
TLWH = slice(0, 4)
D_ANGLE, D_SCORE, D_CLS, D_IDX = range(4, 8)


class Detections:
    """M detections as STrack's constructor stores them: an (M, 8) float64 table (columns above)."""

    __slots__ = ("data",)

    def __init__(self, data: F64) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def take(self, rows: Index) -> Detections:
        """The detections at `rows`, in that order."""
        return Detections(self.data[rows])

    @property
    def tlwh(self) -> F32:
        return self.data[:, TLWH].astype(np.float32)

    @property
    def score(self) -> F32:
        return self.data[:, D_SCORE].astype(np.float32)

    def boxes(self, obb: bool) -> F32 | F64:
        """(M, 4) float32 xyxy, or (M, 5) xywh + angle (float64, the angle's precision) for oriented boxes."""
        ret = self.tlwh
        if obb:
            ret[:, :2] += ret[:, 2:] / 2
            return np.concatenate([ret, self.data[:, D_ANGLE : D_ANGLE + 1]], axis=1)
        ret[:, 2:] += ret[:, :2]
        return ret


def detections(boxes: NDArray[Any], scores: NDArray[Any], classes: NDArray[Any], obb: bool) -> Detections:
    """The frame's detections as Ultralytics' trackers see them (Boxes.xywh / OBB.xywhr, then STrack.__init__).

    boxes: (M, 4) xyxy or, when `obb`, (M, 5) xywhr (radians), original-image pixels; scores, classes: (M,).
    """
    data = np.asarray(boxes, dtype=np.float32)  # Results keep float32
    out = np.empty((len(data), 8))
    if obb:
        xywh = data[:, :5].astype(np.float64)  # parse_bboxes appends the index column: the rows become float64
        tall = xywh[:, 2] < xywh[:, 3]  # long-edge form keeps equivalent OBB measurements consistent (STrack)
        xywh[tall] = xywh[tall][:, [0, 1, 3, 2, 4]] + [0, 0, 0, 0, np.pi / 2]
        out[:, D_ANGLE] = xywh[:, 4]
    else:
        x1, y1, x2, y2 = data.T
        xywh = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1).astype(np.float64)
        out[:, D_ANGLE] = 0.0
    # xywh2ltwh in float64, then STrack stores float32
    out[:, 0] = (xywh[:, 0] - xywh[:, 2] / 2).astype(np.float32)
    out[:, 1] = (xywh[:, 1] - xywh[:, 3] / 2).astype(np.float32)
    out[:, 2:4] = xywh[:, 2:4]
    out[:, D_SCORE] = np.asarray(scores, dtype=np.float32)
    out[:, D_CLS] = np.asarray(classes).astype(np.int64)
    out[:, D_IDX] = np.arange(len(data))
    return Detections(out)
