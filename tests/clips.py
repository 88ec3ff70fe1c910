"""What the tracking tests share: clips with real motion (a slow pan over a real photo with people), Ultralytics'
`model.track()` as the reference, and the comparison of two tracked runs (ids equal up to a one-to-one relabelling).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from bench.parity import assert_matches

os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # Ultralytics must never pip-install anything in the tests
FPS = 25.0
MIN_AGREEMENT = 0.99  # of matched detections, with the same id up to a one-to-one relabelling (issue #28)
# (photo, crop width, crop height, top of the crop): the people of bus.jpg (and the bus), the two of zidane.jpg
PANS = {"bus": ("bus.jpg", 480, 560, 360), "zidane": ("zidane.jpg", 800, 560, 100)}


def pan_frames(name: str, frames: int) -> list[NDArray[np.uint8]]:
    """`frames` BGR crops panning left to right across the photo at a steady pace (6-10 px a frame)."""
    from ultralytics.utils import ASSETS

    photo, w, h, top = PANS[name]
    image = cv2.imread(str(ASSETS / photo))
    span = image.shape[1] - w
    return [
        np.ascontiguousarray(image[top : top + h, x : x + w]) for x in np.linspace(0, span, frames).round().astype(int)
    ]


def write_clip(path: Path, name: str, frames: int) -> Path:
    """The pan as an MJPEG AVI (every frame decodes the same in the gateway and in Ultralytics' loader)."""
    crops = pan_frames(name, frames)
    h, w = crops[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    assert writer.isOpened()
    for crop in crops:
        writer.write(crop)
    writer.release()
    return path


def ultralytics_model(path: Path) -> Any:
    """YOLO(<the served model's source.onnx>), with Ultralytics' auto-install off."""
    import ultralytics.utils.checks
    from ultralytics import YOLO

    ultralytics.utils.checks.AUTOINSTALL = False  # in case Ultralytics was imported before the variable was set
    return YOLO(str(path))


def _center(row: dict[str, Any]) -> NDArray[np.float64]:
    box = row["box"]
    xs = [v for k, v in box.items() if k.startswith("x")]
    ys = [v for k, v in box.items() if k.startswith("y")]
    return np.array([np.mean(xs), np.mean(ys)])


def compare_tracks(
    ours: Sequence[list[dict[str, Any]]], ref: Sequence[list[dict[str, Any]]], wh: tuple[int, int]
) -> dict[str, float]:
    """Assert that two tracked runs agree as issue #28 asks, and return the figures.

    Per frame, each of our rows is matched to the reference row of the same class whose box centre is nearest
    (within 2 px). At least MIN_AGREEMENT of the tracked rows (either run's) must be matched, every matched pair
    must have the same fields in the same order (`track_id` right after `box`) and agree within the parity
    tolerances (bench/parity.py), and the ids must agree up to a one-to-one relabelling on at least MIN_AGREEMENT
    of the pairs.
    """
    assert len(ours) == len(ref), f"{len(ours)} frames, Ultralytics has {len(ref)}"
    pairs: list[tuple[int, int]] = []
    total = sum(len(r) for r in ref)
    assert total > 0 and sum("track_id" in row for rows in ref for row in rows) > 0, "nothing tracked: compares nothing"
    for k, (a_rows, b_rows) in enumerate(zip(ours, ref)):
        free = list(range(len(b_rows)))
        for a in a_rows:
            best = min(
                (j for j in free if b_rows[j]["class"] == a["class"]),
                key=lambda j: float(np.abs(_center(b_rows[j]) - _center(a)).max()),
                default=None,
            )
            if best is None or np.abs(_center(b_rows[best]) - _center(a)).max() > 2.0:
                continue
            b = b_rows[best]
            free.remove(best)
            assert list(a) == list(b), f"frame {k}: fields {list(a)} vs Ultralytics' {list(b)}"
            assert_matches([a], [b], wh, normalize=False)
            if "track_id" in b:
                pairs.append((a["track_id"], b["track_id"]))
    tracked = [sum("track_id" in row for rows in run for row in rows) for run in (ours, ref)]
    assert len(pairs) >= MIN_AGREEMENT * max(tracked), f"{len(pairs)} matched of {tracked} tracked rows (ours, theirs)"
    mapping = {a: Counter(b for x, b in pairs if x == a).most_common(1)[0][0] for a in {x for x, _ in pairs}}
    assert len(set(mapping.values())) == len(mapping), f"two of our ids map to one of Ultralytics': {mapping}"
    agree = sum(mapping[a] == b for a, b in pairs) / len(pairs)
    assert agree >= MIN_AGREEMENT, f"ids agree on {agree:.1%} of {len(pairs)} matched detections"
    return {"rows": float(total), "matched": float(len(pairs)), "agree": agree, "ids": float(len(mapping))}
