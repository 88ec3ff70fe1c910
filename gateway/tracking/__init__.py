"""Multi-object tracking as Ultralytics' `model.track()` does it: ByteTrack and BoT-SORT (without ReID), in NumPy.

    state = init(Config(tracker="bytetrack"))          # or init(Config(tracker="botsort"), obb=True)
    state, rows = update(state, boxes, scores, classes, frame)
    blob = dumps(state); state = loads(blob)            # between requests (e.g. in Redis)

Modules: kalman.py (the two Kalman filters), matching.py (IoU costs, score fusion, the assignment), gmc.py
(BoT-SORT's camera-motion estimate), tracks.py (tracks and detections as arrays), state.py (the state, settings and
output), tracker.py (the per-frame update), codec.py (the state as bytes). Parity with Ultralytics 8.4.190's
trackers: tests/test_tracking.py.
"""

from __future__ import annotations

from gateway.tracking.codec import dumps, loads
from gateway.tracking.state import Config, Rows, State, init
from gateway.tracking.tracker import update

__all__ = ["Config", "Rows", "State", "dumps", "init", "loads", "update"]
