"""One frame's detections through the tracker, as Ultralytics' `model.track()` turns a frame's `Results` into tracked
ones (trackers/track.py `on_predict_postprocess_end`, 8.4.190):

- the tracker reports tracks: the rows become those tracks, in the tracker's order, each with the tracker's
  (Kalman-smoothed) box, clipped to the image as `Results.update` clips it (oriented boxes are not clipped), its
  score, class and id, and the mask outline or keypoints of the detection it matched this frame;
- it reports none while a new track awaits confirmation: no rows (new tracks are hidden until confirmed);
- it reports none and none awaits confirmation: the frame's detections as they are, without ids.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gateway.tracking.state import State
from gateway.tracking.tracker import update
from gateway.vision.pipeline import Found


def track(state: State, found: Found, shape: tuple[int, int], frame: NDArray[np.uint8] | None) -> tuple[State, Found]:
    """The next state and the frame's rows. found: the frame's detections (gateway/vision/pipeline.py `detect`);
    shape: the image's (height, width); frame: the BGR image, for BoT-SORT's camera motion (None: no motion)."""
    state, rows = update(state, found.boxes, found.scores, found.classes, frame)
    if not len(rows):
        return state, found if rows.keep_detections else _take(found, np.zeros(0, np.int64))
    picked = _take(found, rows.idx)
    boxes = rows.boxes.astype(np.float32)
    if not state.obb:
        h, w = shape
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    tracked = Found(
        boxes,
        rows.score.astype(np.float32),
        rows.cls.astype(np.float32),
        picked.polygons,
        picked.keypoints,
        rows.track_id,
    )
    return state, tracked


def _take(found: Found, idx: NDArray[np.int64]) -> Found:
    """The detections at `idx`, in that order (Ultralytics' `result[idx]`)."""
    polygons = None if found.polygons is None else [found.polygons[i] for i in idx]
    keypoints = None if found.keypoints is None else found.keypoints[idx]
    return Found(found.boxes[idx], found.scores[idx], found.classes[idx], polygons, keypoints)
