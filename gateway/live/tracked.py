"""A live stream's rows with track ids: the frame's summary rows through gateway/tracking's `update`, as
`model.track()` reports them (the tracker's order and smoothed boxes, `track_id` on each row; a frame with no track
to report keeps its detections without ids). Detection, segmentation and pose rows (xyxy boxes); run in a worker
thread."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.arguments import PredictArgs
from gateway.tracking import State, update

TRACKED_TASKS = ("detect", "segment", "pose")


def rows(
    state: State, found: list[dict[str, Any]], image: NDArray[np.uint8], args: PredictArgs
) -> tuple[State, list[dict[str, Any]]]:
    """The tracker's next state and the frame's rows with `track_id`. found: the frame's summary rows (boxes in
    pixels, or normalized to the frame's size when `args.normalize`); image: the frame, (H, W, 3) BGR."""
    h, w = image.shape[:2] if args.normalize else (1, 1)
    boxes = np.array(
        [[r["box"]["x1"] * w, r["box"]["y1"] * h, r["box"]["x2"] * w, r["box"]["y2"] * h] for r in found],
        dtype=np.float32,
    ).reshape(-1, 4)
    scores = np.array([r["confidence"] for r in found], dtype=np.float32)
    classes = np.array([r["class"] for r in found], dtype=np.float32)
    state, tracks = update(state, boxes, scores, classes, image)
    if tracks.keep_detections:
        return state, found
    out = []
    for k, i in enumerate(tracks.idx.tolist()):
        x1, y1, x2, y2 = tracks.boxes[k].tolist()
        box = {"x1": x1 / w, "y1": y1 / h, "x2": x2 / w, "y2": y2 / h}
        out.append(
            {
                **found[i],
                "box": {name: round(value, args.decimals) for name, value in box.items()},
                "track_id": int(tracks.track_id[k]),
            }
        )
    return state, out
