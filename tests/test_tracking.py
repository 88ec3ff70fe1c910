"""Tracking (gateway/tracking) against Ultralytics 8.4.190's own BYTETracker and BOTSORT, fed the same detections.

The detections are the TUD-Campus and TUD-Stadtmitte ground truth that ships with motmetrics, made detector-like
deterministically: boxes jittered, 10 % dropped, a fifth of the scores low (the second association), some classes
switched, false positives and a few boxes of no height added, rows shuffled. BoT-SORT also gets camera frames (a
photo panned and turned) so that its camera-motion estimate runs on real pixels. Equal means: the same rows in the
same order with the same ids, scores, classes and detection indices, and boxes within 1e-3 px (here they come out
bit-identical).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from gateway import tracking
from gateway.tracking import gmc, matching

Frame = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]  # boxes, scores, classes
CLIPS = ("TUD-Campus", "TUD-Stadtmitte")  # 71 and 179 frames of 640 x 480, up to 10 people


def _mot(name: str) -> dict[int, NDArray[np.float64]]:
    """Ground truth per frame: (K, 5) rows of object id, left, top, width, height."""
    spec = importlib.util.find_spec("motmetrics")
    assert spec is not None and spec.submodule_search_locations, "motmetrics (a test dependency) is not installed"
    rows = np.loadtxt(Path(spec.submodule_search_locations[0]) / "data" / name / "gt.txt", delimiter=",")
    return {int(f): rows[rows[:, 0] == f][:, 1:6] for f in np.unique(rows[:, 0])}


def clip(name: str, obb: bool, seed: int = 1) -> list[Frame]:
    """The clip's ground truth as a noisy detector would report it (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for _, truth in sorted(_mot(name).items()):
        rows = truth[rng.random(len(truth)) > 0.1]
        ids = rows[:, 0].astype(int)
        n = len(rows)
        cx = rows[:, 1] + rows[:, 3] / 2 + rng.normal(0, 2, n)
        cy = rows[:, 2] + rows[:, 4] / 2 + rng.normal(0, 2, n)
        w, h = rows[:, 3] * (1 + rng.normal(0, 0.03, n)), rows[:, 4] * (1 + rng.normal(0, 0.03, n))
        score = rng.uniform(0.3, 0.95, n)
        low = rng.random(n) < 0.2
        score[low] = rng.uniform(0.08, 0.27, int(low.sum()))
        cls = ids % 3
        switched = rng.random(n) < 0.05
        cls[switched] = (cls[switched] + 1) % 3
        # oriented: each person at an angle of its own, some near ±π/2 where the half-turn form flips
        angle = np.array([0.0, 0.6, np.pi / 2 - 0.03, -np.pi / 2 + 0.03])[ids % 4] + rng.normal(0, 0.05, n)
        k = int(rng.poisson(0.3))  # false positives
        cx, cy = np.r_[cx, rng.uniform(0, 640, k)], np.r_[cy, rng.uniform(0, 480, k)]
        w, h = np.r_[w, rng.uniform(20, 100, k)], np.r_[h, rng.uniform(40, 200, k)]
        score, cls = np.r_[score, rng.uniform(0.1, 0.6, k)], np.r_[cls, rng.integers(0, 3, k)]
        angle = np.r_[angle, rng.uniform(-1, 1, k)]
        if rng.random() < 0.1:  # a box of no height, confident: both trackers must skip it (and keep the indices)
            cx, cy, w, h = np.r_[cx, 300], np.r_[cy, 200], np.r_[w, 50], np.r_[h, 0]
            score, cls, angle, k = np.r_[score, 0.9], np.r_[cls, 0], np.r_[angle, 0], k + 1
        order = rng.permutation(n + k)
        if obb:
            boxes = np.stack([cx, cy, w, h, angle], axis=1)
        else:
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        out.append((boxes[order].astype(np.float32), score[order].astype(np.float32), cls[order].astype(np.float32)))
    return out


@functools.lru_cache(maxsize=4)
def camera(n: int) -> tuple[NDArray[np.uint8], ...]:
    """n 640 x 480 frames of a photo under a panning, slightly turning camera."""
    from ultralytics.utils import ASSETS

    photo = cv2.imread(str(ASSETS / "zidane.jpg"))
    frames = []
    for t in range(n):
        m = cv2.getRotationMatrix2D((320, 240), 2.0 * np.sin(t / 15), 1.0)
        m[:, 2] -= [200 + 3 * (t % 100), 100 + 1.5 * (t % 60)]
        frames.append(cv2.warpAffine(photo, m, (640, 480)))
    return tuple(frames)


@pytest.fixture(scope="module")
def reference() -> Callable[..., Any]:
    """A factory of Ultralytics' trackers, from its own YAML defaults with overrides."""
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # lap is installed: nothing may be fetched
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    def make(kind: str, **overrides: Any) -> Any:
        cfg = {**YAML.load(check_yaml(f"{kind}.yaml")), **overrides}
        return (BYTETracker if kind == "bytetrack" else BOTSORT)(IterableSimpleNamespace(**cfg))

    return make


def results(frame: Frame, obb: bool) -> Any:
    """What trackers/track.py feeds the tracker: the frame's Boxes or OBB, as NumPy (float32, orig_shape 480x640)."""
    from ultralytics.engine.results import OBB, Boxes

    boxes, scores, classes = frame
    data = np.concatenate([boxes, scores[:, None], classes[:, None]], axis=1).astype(np.float32)
    return (OBB if obb else Boxes)(data, (480, 640))


def run_both(
    ref: Any,
    state: tracking.State,
    frames: list[Frame],
    images: Sequence[NDArray[np.uint8] | None],
) -> Iterator[tuple[int, tracking.Rows, NDArray[np.float32]]]:
    """Feed every frame to both trackers; yield (frame number, our rows, Ultralytics' array)."""
    width = 5 if state.obb else 4
    for number, (frame, image) in enumerate(zip(frames, images), start=1):
        want = np.asarray(ref.update(results(frame, state.obb), image), dtype=np.float32).reshape(-1, width + 4)
        state, rows = tracking.update(state, *frame, image)
        yield number, rows, want


def assert_same(number: int, rows: tracking.Rows, want: NDArray[np.float32]) -> None:
    got = rows.as_array()
    k = got.shape[1] - 4
    assert got.shape == want.shape, f"frame {number}: {len(got)} tracks, Ultralytics {len(want)}"
    assert np.array_equal(got[:, k:], want[:, k:]), f"frame {number}: ids/score/cls/idx {got[:, k:]} != {want[:, k:]}"
    assert np.abs(got[:, :k] - want[:, :k]).max(initial=0) <= 1e-3, f"frame {number}: boxes differ"


@pytest.mark.parametrize("obb", [False, True], ids=["xyxy", "xywhr"])
@pytest.mark.parametrize("kind", ["bytetrack", "botsort"])
def test_tracks_equal_ultralytics_on_mot_clips(reference: Callable[..., Any], kind: str, obb: bool) -> None:
    total = reactivated = 0
    for name in CLIPS:
        frames = clip(name, obb)
        images: Sequence[NDArray[np.uint8] | None] = camera(len(frames)) if kind == "botsort" else [None] * len(frames)
        state = tracking.init(tracking.Config(tracker=kind), obb=obb)
        seen: set[int] = set()
        for number, rows, want in run_both(reference(kind), state, frames, images):
            assert_same(number, rows, want)
            total += len(rows)
            ids = set(rows.track_id.tolist())
            reactivated += len(ids & seen)
            seen |= ids
    assert total > 1000 and reactivated > 900  # tracks were reported, and kept their ids across frames


def test_assignment_equals_lap() -> None:
    lap = pytest.importorskip("lap")
    rng = np.random.default_rng(0)
    for trial in range(600):
        rows, cols = rng.integers(1, 30, 2)
        cost = np.ones((rows, cols), np.float32)  # IoU costs: mostly no overlap
        near = rng.random((rows, cols)) < 0.2
        cost[near] = rng.random(int(near.sum())).astype(np.float32)
        thresh = (0.5, 0.7, 0.8)[trial % 3]
        _, x, y = lap.lapjv(cost, extend_cost=True, cost_limit=thresh)
        pairs, free_rows, free_cols = matching.assign(cost, thresh)
        assert pairs.tolist() == [[i, j] for i, j in enumerate(x) if j >= 0]
        assert free_rows.tolist() == np.flatnonzero(x < 0).tolist()
        assert free_cols.tolist() == np.flatnonzero(y < 0).tolist()


def test_camera_motion_equals_ultralytics_gmc() -> None:
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics.trackers.utils.gmc import GMC

    frames = list(camera(30))
    frames[10] = np.zeros_like(frames[10])  # no corners: both start over on the next frame
    frames[20] = cv2.resize(frames[20], (600, 450))  # OpenCV refuses a size change: identity, state kept
    theirs = GMC("sparseOptFlow")
    motion = None
    moved = 0
    for number, image in enumerate(frames, start=1):
        try:
            want = theirs.apply(image)
        except cv2.error:  # what BOTSORT catches (and then uses the identity)
            want = np.eye(2, 3)
        warp, motion = gmc.estimate(motion, image)
        assert np.array_equal(warp, want), f"frame {number}"
        moved += not np.allclose(warp, np.eye(2, 3), atol=0.5)
    assert moved >= 20  # the camera's motion was found, not the identity


def _scripted(segments: list[tuple[int, int]], extra: int = 0, seed: int = 0) -> list[Frame]:
    """A person standing still, seen in segments of (frames absent before, frames seen); with `extra` one-frame false
    positives in each frame seen (each starts an unconfirmed track that is removed on the next frame: one entry in
    Ultralytics' removed list)."""
    rng = np.random.default_rng(seed)
    nothing = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    frames: list[Frame] = []
    for gap, seen in segments:
        frames += [nothing] * gap
        for _ in range(seen):
            flicker = [[*p, *(p + 30)] for p in rng.uniform(300, 600, (extra, 2))]
            boxes = np.array([[100, 100, 140, 200], *flicker], np.float32)
            frames.append((boxes, np.array([0.9] + [0.6] * extra, np.float32), np.zeros(1 + extra, np.float32)))
    return frames


def _person_ids(reference: Callable[..., Any], frames: list[Frame], buffer: int) -> list[int]:
    """The id reported for the person (detection row 0) in each frame it is reported, checked against Ultralytics."""
    state = tracking.init(tracking.Config(track_buffer=buffer))
    ids = []
    for number, rows, want in run_both(
        reference("bytetrack", track_buffer=buffer), state, frames, [None] * len(frames)
    ):
        assert_same(number, rows, want)
        ids += rows.track_id[rows.idx == 0].tolist()
    return ids


@pytest.mark.parametrize("buffer", [3, 30])
def test_track_buffer_expiry_equals_ultralytics(reference: Callable[..., Any], buffer: int) -> None:
    # Absent for buffer frames: kept. buffer + 1: removed, yet still matched on the next frame (Ultralytics drops lost
    # tracks by its removed list before adding that frame's removals): kept, but its id is now in that list, so the
    # next time it is lost it is dropped at once: absent for 1 frame, it comes back with a new id.
    ids = _person_ids(reference, _scripted([(0, 5), (buffer, 5), (buffer + 1, 5), (1, 5)]), buffer)
    assert ids == [1] * 15 + [2] * 4  # a new track is reported from its second frame


@pytest.mark.parametrize("removals", ["few", "over 1000"])
def test_removed_list_window_equals_ultralytics(reference: Callable[..., Any], removals: str) -> None:
    # As above, the id goes into the removed list (absent buffer + 1 frames); then flickering false positives add
    # removals. Ultralytics keeps the last 1000: once the id has left them, losing the track keeps it (same id).
    seen = 10 if removals == "few" else 100  # 12 removals a frame
    ids = _person_ids(reference, _scripted([(0, 5), (4, seen), (2, 5)], extra=12), buffer=3)
    assert ids[: 5 + seen] == [1] * (5 + seen)
    if removals == "few":  # a new id (the flickers took many), reported from the track's second frame
        assert len(ids) == 5 + seen + 4 and len(set(ids[5 + seen :])) == 1 and ids[-1] > 1
    else:
        assert ids[5 + seen :] == [1] * 5


def test_class_switch_keeps_the_track_and_takes_the_new_class(reference: Callable[..., Any]) -> None:
    boxes = np.array([[10, 10, 50, 90]], np.float32)
    frames = [(boxes + 2 * i, np.array([0.9], np.float32), np.array([i // 3], np.float32)) for i in range(6)]
    state = tracking.init()
    got = []
    for number, rows, want in run_both(reference("bytetrack"), state, frames, [None] * 6):
        assert_same(number, rows, want)
        got.append((int(rows.track_id[0]), int(rows.cls[0])))
    assert got == [(1, 0), (1, 0), (1, 0), (1, 1), (1, 1), (1, 1)]  # association ignores the class, as Ultralytics'


def test_thresholds_compare_like_ultralytics(reference: Callable[..., Any]) -> None:
    # Scores at exactly float32(threshold). Ultralytics splits detections with float32 array comparisons, but checks
    # new_track_thresh on a NumPy float32 scalar, which NumPy 1.26 compares in float64: float32(0.7) < 0.7 there.
    a, b = [10, 10, 50, 90], [200, 10, 240, 90]
    f32 = np.float32
    frames = [
        (np.array([a, b], f32), np.array([0.9, 0.7], f32), np.zeros(2, f32)),  # b is high, yet starts no track
        (np.array([a], f32), np.array([0.1], f32), np.zeros(1, f32)),  # not above the low threshold: a is lost
        (np.array([a], f32), np.array([0.7], f32), np.zeros(1, f32)),  # high again: a found again
    ]
    overrides = {"track_high_thresh": 0.7, "new_track_thresh": 0.7}
    state = tracking.init(tracking.Config(**overrides))
    got = []
    for number, rows, want in run_both(reference("bytetrack", **overrides), state, frames, [None] * 3):
        assert_same(number, rows, want)
        got.append(rows.track_id.tolist())
    assert got == [[1], [], [1]]


def test_ids_start_at_1_and_new_objects_are_reported_from_their_second_frame() -> None:
    a = np.array([[10, 10, 50, 90]], np.float32)
    b = np.array([[200, 10, 240, 90]], np.float32)
    one, classes = np.array([0.9], np.float32), np.zeros(1, np.float32)
    state, rows = tracking.update(tracking.init(), a, one, classes)
    assert rows.track_id.tolist() == [1] and rows.idx.tolist() == [0]  # frame 1: every detection at once
    both = np.concatenate([b, a + 2])
    state, rows = tracking.update(state, both, np.r_[one, one], np.r_[classes, classes])
    assert rows.track_id.tolist() == [1] and rows.idx.tolist() == [1]  # b is new: not yet reported
    assert not rows.keep_detections  # an unconfirmed track exists: model.track() shows no untracked boxes
    state, rows = tracking.update(state, both + 2, np.r_[one, one], np.r_[classes, classes])
    assert rows.track_id.tolist() == [1, 2] and rows.idx.tolist() == [1, 0]  # b from its second frame
    assert rows.boxes.shape == (2, 4) and not np.array_equal(rows.boxes[0], (a + 4)[0])  # Kalman-smoothed boxes


def test_low_scores_alone_start_nothing_and_keep_the_detections() -> None:
    low = np.array([[10, 10, 50, 90]], np.float32)
    state, rows = tracking.update(tracking.init(), low, np.array([0.2], np.float32), np.zeros(1))
    assert len(rows) == 0 and rows.keep_detections and len(state.tracked) == 0 and state.next_id == 1


def test_dump_and_load_between_frames_changes_nothing() -> None:
    for kind, obb in [("bytetrack", False), ("botsort", True)]:
        frames = clip("TUD-Campus", obb)
        images: Sequence[NDArray[np.uint8] | None] = camera(len(frames)) if kind == "botsort" else [None] * len(frames)
        direct = stored = tracking.init(tracking.Config(tracker=kind), obb=obb)
        for frame, image in zip(frames, images):
            stored = tracking.loads(tracking.dumps(stored))
            direct, want = tracking.update(direct, *frame, image)
            stored, got = tracking.update(stored, *frame, image)
            assert np.array_equal(got.as_array(), want.as_array()) and got.keep_detections == want.keep_detections
        assert tracking.dumps(stored) == tracking.dumps(direct)
        assert len(direct.tracked) and (kind == "bytetrack" or direct.motion is not None)


def test_update_leaves_its_input_state_as_it_was() -> None:
    frames = clip("TUD-Campus", False)
    state = tracking.init()
    for frame in frames[:20]:
        state, _ = tracking.update(state, *frame)
    blob = tracking.dumps(state)
    _, first = tracking.update(state, *frames[20])
    _, again = tracking.update(state, *frames[20])
    assert np.array_equal(first.as_array(), again.as_array()) and tracking.dumps(state) == blob


def test_loads_refuses_what_dumps_did_not_write() -> None:
    import orjson

    from gateway.tracking import codec

    blob = tracking.dumps(tracking.update(tracking.init(), *clip("TUD-Campus", False)[0])[0])
    raw = zlib.decompress(blob[len(codec.MAGIC) + 4 :])
    (size,) = struct.unpack_from("<I", raw)
    header = {**orjson.loads(raw[4 : 4 + size]), "tracked": 10**9}  # would ask for 650 GB
    head = orjson.dumps(header)
    body = zlib.compress(struct.pack("<I", len(head)) + head + raw[4 + size :])
    forged = codec.MAGIC + struct.pack("<I", len(body)) + body
    for bad in [b"", b"junk", blob[:-5], blob[:6] + b"\x00" * 40, blob + b"x", forged]:
        with pytest.raises(ValueError):
            tracking.loads(bad)
    assert tracking.dumps(tracking.loads(blob)) == blob


def test_boxes_of_the_wrong_form_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        tracking.update(tracking.init(obb=True), np.zeros((2, 4), np.float32), np.ones(2), np.zeros(2))
    state, rows = tracking.update(tracking.init(obb=True), np.zeros((0,), np.float32), np.ones(0), np.zeros(0))
    assert len(rows) == 0 and rows.boxes.shape == (0, 5) and state.frame_id == 1


def test_bench_track_measures_both_trackers_and_the_state_size() -> None:
    from bench import tracking as bench_tracking

    rows = bench_tracking.measure(objects=10, frames=20, repeats=1, with_reference=False)
    assert [r["tracker"] for r in rows] == ["bytetrack", "botsort", "botsort", "botsort"]
    for r in rows:
        assert r["detections"] > 5 and r["tracks"] > 5 and r["ours_cpu_ms"] > 0 and r["dumps_loads_ms"] > 0
    assert rows[0]["bytes"] < rows[2]["bytes"] < rows[3]["bytes"]  # the previous frame dominates BoT-SORT's state
    assert "| bytetrack |" in bench_tracking.table(rows)
