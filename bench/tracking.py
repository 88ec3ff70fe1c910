"""What tracking costs the gateway per frame (gateway/tracking), beside Ultralytics' own trackers on the same input.

    python -m bench track [--objects 50] [--frames 300] [--repeats 5] [--no-reference] [--json out.json]

A synthetic scene: people walking in a photo under a panning camera, --objects of them in view on average, seen as
a detector would (jittered boxes, 5 % missed, a tenth of the scores low), fed frame by frame to ByteTrack and to
BoT-SORT, the latter without frames and with 640x360 and 1920x1080 frames (its camera-motion estimate). Reports the
CPU time per frame of this process (OpenCV's threads included), the best of --repeats passes, and the state's size
as `dumps` writes it (what a `sequence` keeps in Redis) with the time of one dumps + loads. Ultralytics' BYTETracker
and BOTSORT on the same frames are the baseline (the tracker alone: no model, no Results).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# NumPy's OpenBLAS runs one thread in the gateway (gateway/__init__.py); more threads spin, and their CPU would be
# counted here. The variable only acts before NumPy loads: `python -m bench track` comes through bench/__main__,
# which has loaded it, so main() then starts over as `python -m bench.tracking` with the variable set.
LATE = "OPENBLAS_NUM_THREADS" not in os.environ and "numpy" in sys.modules
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from gateway import tracking  # noqa: E402

Frame = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]
Images = Sequence[NDArray[np.uint8] | None]
HD = (1920, 1080)


def scene(
    objects: int, frames: int, size: tuple[int, int], seed: int = 0
) -> tuple[list[Frame], list[NDArray[np.uint8]]]:
    """Detections and camera frames of people walking in a photo 1.25x the frame, under a camera panning over it.

    Per frame: (N, 4) xyxy boxes of the people wholly in view (`objects` on average), (N,) scores, (N,) classes,
    in frame pixels; and the (H, W, 3) BGR frame (Ultralytics' zidane.jpg, enlarged), so that BoT-SORT's camera
    motion has real pixels to follow and the people move with the camera as they would."""
    rng = np.random.default_rng(seed)
    width, height = size
    world = np.array([width * 5 // 4, height * 5 // 4])
    count = round(objects * 1.8)  # the frame sees 16/25 of the world, and some people only in part
    dims = rng.uniform([30, 70], [90, 220], (count, 2)) * height / 1080
    pos = rng.uniform(dims / 2, world - dims / 2, (count, 2))
    vel = rng.normal(0, 3, (count, 2)) * height / 1080
    classes = rng.integers(0, 3, count)
    spec = importlib.util.find_spec("ultralytics")  # the file only: importing ultralytics would load torch
    assert spec is not None and spec.submodule_search_locations, "the photo comes with ultralytics (the export extra)"
    photo = cv2.imread(str(Path(spec.submodule_search_locations[0]) / "assets" / "zidane.jpg"))
    photo = cv2.resize(photo, (int(world[0]), int(world[1])))
    detections, images = [], []
    for t in range(frames):
        pos += vel
        vel[(pos < dims / 2) | (pos > world - dims / 2)] *= -1
        x0, y0 = round(width / 8 * (1 - np.cos(t / 25))), round(height / 8 * (1 - np.cos(t / 35)))
        images.append(np.ascontiguousarray(photo[y0 : y0 + height, x0 : x0 + width]))
        centre = pos - [x0, y0]
        inside = np.all((centre >= dims / 2) & (centre <= np.array(size) - dims / 2), axis=1)
        seen = inside & (rng.random(count) > 0.05)  # 5 % missed
        n = int(seen.sum())
        centre = centre[seen] + rng.normal(0, 1.5, (n, 2)) * height / 1080
        wh = dims[seen] * (1 + rng.normal(0, 0.02, (n, 2)))
        boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1).astype(np.float32)
        scores = rng.uniform(0.3, 0.95, n)
        low = rng.random(n) < 0.1
        scores[low] = rng.uniform(0.12, 0.24, int(low.sum()))
        detections.append((boxes, scores.astype(np.float32), classes[seen]))
    return detections, images


def cpu_ms(step: Callable[[], Any], frames: int, repeats: int) -> float:
    """Best CPU milliseconds per frame of `step` (one pass over all frames) over `repeats` passes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        step()
        best = min(best, (time.process_time() - start) / frames * 1e3)
    return round(best, 3)


def ours(config: tracking.Config, data: list[Frame], images: Images) -> tracking.State:
    state = tracking.init(config)
    for (boxes, scores, classes), image in zip(data, images):
        state, _ = tracking.update(state, boxes, scores, classes, image)
    return state


def reference(kind: str, data: list[Frame], images: Images, size: tuple[int, int]) -> None:
    """Ultralytics' own tracker over the same frames, fed as trackers/track.py feeds it (Boxes, as NumPy)."""
    from ultralytics.engine.results import Boxes
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    args = IterableSimpleNamespace(**YAML.load(check_yaml(f"{kind}.yaml")))
    tracker = BYTETracker(args) if kind == "bytetrack" else BOTSORT(args)
    for (boxes, scores, classes), image in zip(data, images):
        rows = np.concatenate([boxes, scores[:, None], classes[:, None].astype(np.float32)], axis=1)
        tracker.update(Boxes(rows, size[::-1]), image)


def storage(state: tracking.State, repeats: int = 20) -> dict[str, Any]:
    """The state's size as bytes and the CPU time of one dumps + loads."""
    blob = tracking.dumps(state)
    start = time.process_time()
    for _ in range(repeats):
        tracking.loads(tracking.dumps(state))
    return {
        "tracks": len(state.tracked) + len(state.lost),
        "bytes": len(blob),
        "dumps_loads_ms": round((time.process_time() - start) / repeats * 1e3, 3),
    }


def measure(objects: int, frames: int, repeats: int, with_reference: bool) -> list[dict[str, Any]]:
    """One row per configuration: CPU ms per frame (ours and, if asked, Ultralytics'), state size and codec time."""
    configs: list[tuple[str, tuple[int, int], bool]] = [  # tracker, frame size, camera frames given
        ("bytetrack", HD, False),
        ("botsort", HD, False),
        ("botsort", (640, 360), True),
        ("botsort", HD, True),
    ]
    if with_reference:  # import torch and Ultralytics before anything is timed
        reference("bytetrack", [], [], HD)
    rows = []
    for kind, size, with_frames in configs:
        data, photos = scene(objects, frames, size)
        nothing: list[None] = [None] * frames
        images: Images = photos if with_frames else nothing
        config = tracking.Config(tracker="bytetrack" if kind == "bytetrack" else "botsort")
        row: dict[str, Any] = {
            "tracker": kind,
            "input": f"{size[0]}x{size[1]}" + (", camera motion from the frames" if with_frames else ", no frames"),
            "detections": round(float(np.mean([len(d[0]) for d in data])), 1),
            "ours_cpu_ms": cpu_ms(lambda: ours(config, data, images), frames, repeats),
        }
        if with_reference:
            row["ultralytics_cpu_ms"] = cpu_ms(lambda: reference(kind, data, images, size), frames, repeats)
        row.update(storage(ours(config, data, images)))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| tracker | input | detections/frame | tracks kept | CPU ms/frame: ours | Ultralytics | state bytes "
        "| dumps+loads ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tracker']} | {r['input']} | {r['detections']} | {r['tracks']} | {r['ours_cpu_ms']} "
            f"| {r.get('ultralytics_cpu_ms', '-')} | {r['bytes']} | {r['dumps_loads_ms']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench track", description=__doc__)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="passes over the frames; the best counts")
    parser.add_argument("--no-reference", action="store_true", help="skip Ultralytics' trackers (no torch import)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if LATE:
        os.execv(sys.executable, [sys.executable, "-m", "bench.tracking", *(sys.argv[1:] if argv is None else argv)])
    rows = measure(args.objects, args.frames, args.repeats, not args.no_reference)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"cpu": os.cpu_count(), "load": os.getloadavg(), "rows": rows}, indent=2))
    bad = [r for r in rows if not r["tracks"] or r["ours_cpu_ms"] <= 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
