"""What a tracker is between frames (`State`, with its `Config`), and what it reports for a frame (`Rows`).

`State` is a plain value: gateway/tracking/tracker.py `update` returns a new one and never changes the one it was
given, and gateway/tracking/codec.py turns it into bytes and back (a `sequence` keeps it in Redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gateway.tracking import gmc, kalman
from gateway.tracking.tracks import Tracks, empty

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class Config:
    """A tracker's settings, as Ultralytics' cfg/trackers/bytetrack.yaml and botsort.yaml (defaults: theirs).

    BoT-SORT's proximity_thresh and appearance_thresh only act with ReID (with_reid, not supported), so they are not
    here; gmc_method is "sparseOptFlow" (the default) or "none"."""

    tracker: Literal["bytetrack", "botsort"] = "bytetrack"
    track_high_thresh: float = 0.25
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.25
    track_buffer: int = 30
    match_thresh: float = 0.8
    fuse_score: bool = True
    gmc_method: Literal["sparseOptFlow", "none"] = "sparseOptFlow"

    def __post_init__(self) -> None:
        if self.tracker not in ("bytetrack", "botsort"):
            raise ValueError(f"tracker={self.tracker!r}: choose bytetrack or botsort")
        if self.gmc_method not in ("sparseOptFlow", "none"):
            raise ValueError(f"gmc_method={self.gmc_method!r}: choose sparseOptFlow or none")
        if self.track_buffer < 0:
            raise ValueError(f"track_buffer={self.track_buffer!r}: must be 0 or more")

    @property
    def form(self) -> kalman.Form:
        return "xyah" if self.tracker == "bytetrack" else "xywh"


@dataclass(frozen=True)
class State:
    """Everything a tracker carries from one frame to the next (a value: `update` returns a new one).

    tracked, lost: Ultralytics' tracked_stracks and lost_stracks, in their order; frame_id: frames seen; next_id: the
    id the next new track gets (ids start at 1); removed_total: entries ever added to removed_stracks; motion: the
    previous frame for BoT-SORT's camera-motion estimate; obb: boxes are xywhr (task obb) rather than xyxy."""

    config: Config
    obb: bool = False
    frame_id: int = 0
    next_id: int = 1
    removed_total: int = 0
    tracked: Tracks = empty()
    lost: Tracks = empty()
    motion: gmc.Motion | None = None


@dataclass(frozen=True)
class Rows:
    """The frame's tracks as Ultralytics' tracker returns them, in its order. boxes: (N, 4) xyxy or (N, 5) xywhr
    (float32, the Kalman-smoothed box); track_id, score (float32), cls; idx: the input row of the detection each
    track matched this frame (attach that detection's mask or keypoints).

    keep_detections: no track is reported and none awaits confirmation. Then `model.track()` leaves the frame's
    results as they were, detections without ids (trackers/track.py); otherwise it keeps only these rows."""

    boxes: F32
    track_id: I64
    score: F32
    cls: I64
    idx: I64
    keep_detections: bool

    def __len__(self) -> int:
        return len(self.track_id)

    def as_array(self) -> F32:
        """(N, 8) or (N, 9) float32 [*box, track_id, score, cls, idx]: what BYTETracker.update returns."""
        columns = np.stack([self.track_id, self.score, self.cls, self.idx], axis=1).astype(np.float32)
        return np.concatenate([self.boxes, columns], axis=1)


def init(config: Config | None = None, obb: bool = False) -> State:
    """A tracker before its first frame. obb: boxes will be (N, 5) xywhr rather than (N, 4) xyxy."""
    return State(config=config or Config(), obb=obb)
