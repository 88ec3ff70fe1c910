"""ByteTrack and BoT-SORT (without ReID) as Ultralytics 8.4 runs them (trackers/byte_tracker.py, bot_sort.py,
utils/stracks.py), as one pure function: `update(state, boxes, scores, classes, frame) -> (state, rows)`.

Per frame: split the detections by score; predict every confirmed or lost track one frame ahead (BoT-SORT: then
warp them by the camera motion); match them to the high-score detections (1 - IoU fused with the score, up to
match_thresh), the remaining tracked ones to the low-score detections (1 - IoU up to 0.5, so low scores only extend
tracks), the unconfirmed (one-frame-old) tracks to what is left (up to 0.7); start a track for each high-score
detection still unmatched (from new_track_thresh). A track unmatched for more than track_buffer frames is removed; a
new track is reported from its second consecutive frame (from the first on frame 1). Association is class-agnostic:
a track takes the class of the detection it matched, as Ultralytics' does.

Two quirks are kept because they change ids. A lost track removed for age stays in the lost list for one more frame
(Ultralytics drops lost tracks by the removed list before adding that frame's removals), so it can still be matched
then and keep its id. And a track whose id is among the last 1000 removals is dropped as soon as it is lost again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.tracking import gmc, kalman, matching
from gateway.tracking.state import Rows, State
from gateway.tracking.tracks import (
    ACTIVE,
    CLS,
    COV,
    D_ANGLE,
    D_CLS,
    D_IDX,
    D_SCORE,
    FRAME,
    ID,
    IDX,
    MEAN,
    REMOVED,
    SCORE,
    START,
    WIDTH,
    ANGLE,
    Detections,
    Index,
    Tracks,
    concat,
    detections,
)

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
REMOVED_BUFFER = 1000  # Ultralytics keeps this many entries of removed_stracks (merge_track_pools)
DUPLICATE_COST = np.float32(0.15)  # a tracked and a lost track this close (1 - IoU) are one object: keep the older


def update(
    state: State,
    boxes: NDArray[Any],
    scores: NDArray[Any],
    classes: NDArray[Any],
    frame: NDArray[np.uint8] | None = None,
) -> tuple[State, Rows]:
    """The next state and the frame's tracks. boxes: (N, 4) xyxy or (N, 5) xywhr (state.obb) in original-image
    pixels; scores, classes: (N,); frame: the BGR image (H, W, 3), used by BoT-SORT's camera-motion estimate only."""
    cfg, form, obb = state.config, state.config.form, state.obb
    width = 5 if obb else 4
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, width)
    if boxes.ndim != 2 or boxes.shape[1] != width or len(scores) != len(boxes) or len(classes) != len(boxes):
        raise ValueError(f"expected boxes (N, {width}), scores (N,) and classes (N,); got boxes {boxes.shape}")
    frame_id = state.frame_id + 1
    dets = detections(boxes, scores, classes, obb)
    score = dets.score
    valid = (dets.data[:, 2] > 0) & (dets.data[:, 3] > 0)  # h = 0 would make the aspect ratio infinite
    # float32 comparisons: NumPy 1.26 compares Ultralytics' float32 score array with its thresholds in float32
    high_t, low_t = np.float32(cfg.track_high_thresh), np.float32(cfg.track_low_thresh)
    high = dets.take(valid & (score >= high_t))
    low = dets.take(valid & (score > low_t) & (score < high_t))

    # This frame's tracks, in one table: confirmed and lost (Ultralytics' strack_pool, predicted), then unconfirmed
    active = state.tracked.data[:, ACTIVE] > 0
    n_tracked = int(active.sum())
    n_pool = n_tracked + len(state.lost)
    work = concat(state.tracked.take(active), state.lost, state.tracked.take(~active))
    work = _predict(work, n_tracked, n_pool, form)
    motion = state.motion
    if cfg.tracker == "botsort" and cfg.gmc_method == "sparseOptFlow" and frame is not None:
        warp, motion = gmc.estimate(state.motion, frame)
        work = _warp(work, warp, obb)
    boxes_now = work.boxes(form, obb)  # every cost below is computed before any track is corrected

    # 1. confirmed and lost tracks with the high-score detections
    cost = matching.iou_cost(boxes_now[:n_pool], high.boxes(obb))
    if cfg.fuse_score:
        cost = matching.fuse_score(cost, high.score)
    first, free_pool, free_high = matching.assign(cost, cfg.match_thresh)
    refound = first[first[:, 0] >= n_tracked, 0]  # lost tracks found again: they join the tracked list last

    # 2. tracked tracks still unmatched with the low-score detections; those left are lost
    rest = free_pool[free_pool < n_tracked]
    second = np.zeros((0, 2), np.int64)
    newly_lost = rest
    if len(rest) and len(low):
        second, free_rest, _ = matching.assign(matching.iou_cost(boxes_now[rest], low.boxes(obb)), 0.5)
        second[:, 0] = rest[second[:, 0]]
        newly_lost = rest[free_rest]

    # 3. unconfirmed tracks with the high-score detections left; unconfirmed tracks left unmatched are removed
    left = high.take(free_high)
    free_left = np.arange(len(left))
    third = np.zeros((0, 2), np.int64)
    dropped = np.zeros(0, np.int64)
    if len(work) > n_pool:
        cost = matching.iou_cost(boxes_now[n_pool:], left.boxes(obb))
        if cfg.fuse_score:
            cost = matching.fuse_score(cost, left.score)
        third, dropped, free_left = matching.assign(cost, 0.7)
        third[:, 0] += n_pool
        dropped += n_pool
    matched = np.concatenate([first[:, 0], second[:, 0], third[:, 0]])
    found = np.concatenate([high.data[first[:, 1]], low.data[second[:, 1]], left.data[third[:, 1]]])
    work = _correct(work, matched, Detections(found), frame_id, form, obb)

    # 4. new tracks; Ultralytics compares each score as a NumPy float32 scalar, which NumPy 1.26 makes float64
    starts = left.take(free_left[left.data[free_left, D_SCORE] >= cfg.new_track_thresh])
    born = _start(starts, state.next_id, frame_id, form)

    # 5. lost tracks older than track_buffer are removed (from the previous lost list, after this frame's matches)
    lost_rows = np.arange(n_tracked, n_pool)
    stale = lost_rows[frame_id - work.data[lost_rows, FRAME] > cfg.track_buffer]
    removed_total = state.removed_total + len(dropped)  # unconfirmed removals come first in the list
    was_removed = _in_removed(work, state.removed_total)  # by removed_stracks as it was before this frame
    work = _set(work, stale, (REMOVED, removed_total + np.arange(len(stale))))
    removed_total += len(stale)

    # merge_track_pools: the tracked list in its order minus the lost and removed, then the new, then the refound
    keep = np.ones(len(work), bool)
    keep[newly_lost] = False
    keep[dropped] = False
    order = np.empty(len(state.tracked), np.int64)  # each tracked track's row in `work`
    order[active] = np.arange(n_tracked)
    order[~active] = np.arange(n_pool, len(work))
    tracked = concat(work.take(order[keep[order]]), born, work.take(refound))
    still_lost = ~was_removed
    still_lost[refound] = False
    lost = work.take(np.concatenate([lost_rows[still_lost[lost_rows]], newly_lost[still_lost[newly_lost]]]))
    tracked, lost = _deduplicate(tracked, lost, form, obb)

    shown = tracked.take(tracked.data[:, ACTIVE] > 0)
    rows = Rows(
        boxes=shown.boxes(form, obb).astype(np.float32),
        track_id=shown.ints(ID),
        score=shown.data[:, SCORE].astype(np.float32),
        cls=shown.ints(CLS),
        idx=shown.ints(IDX),
        keep_detections=not len(tracked),
    )
    after = replace(
        state,
        frame_id=frame_id,
        next_id=state.next_id + len(born),
        removed_total=removed_total,
        tracked=tracked,
        lost=lost,
        motion=motion,
    )
    return after, rows


def _in_removed(tracks: Tracks, removed_total: int) -> NDArray[np.bool_]:
    """Which tracks have an entry among the last REMOVED_BUFFER of `removed_total` removals (by id, as sub_stracks)."""
    at = tracks.data[:, REMOVED]
    return (at >= 0) & (at >= removed_total - REMOVED_BUFFER)


def _set(tracks: Tracks, rows: Index, *columns: tuple[int | slice, NDArray[Any] | float]) -> Tracks:
    """A copy with the (column, values) pairs replaced at `rows`."""
    data = tracks.data.copy()
    for col, values in columns:
        data[rows, col] = values
    return Tracks(data)


def _predict(work: Tracks, n_tracked: int, n_pool: int, form: kalman.Form) -> Tracks:
    """Rows up to n_pool one frame ahead, the lost ones (from n_tracked) without size velocity (STrack.predict)."""
    if not n_pool:
        return work
    pool = work.take(slice(0, n_pool))
    mean = pool.mean
    mean[n_tracked:, 7] = 0
    if form == "xywh":  # BOTrack zeroes the width velocity too
        mean[n_tracked:, 6] = 0
    mean, covariance = kalman.predict(mean, pool.covariance, form)
    return _set(work, slice(0, n_pool), (MEAN, mean), (COV, covariance.reshape(-1, 64)))


def _warp(tracks: Tracks, warp: NDArray[np.float64], obb: bool) -> Tracks:
    """The tracks moved by the camera's (2, 3) affine motion (multi_gmc)."""
    if not len(tracks):
        return tracks
    mean, covariance, angle = gmc.apply(tracks.mean, tracks.covariance, tracks.column(ANGLE), warp, obb)
    return _set(tracks, slice(None), (MEAN, mean), (COV, covariance.reshape(-1, 64)), (ANGLE, angle))


def _correct(tracks: Tracks, rows: I64, dets: Detections, frame_id: int, form: kalman.Form, obb: bool) -> Tracks:
    """The tracks at `rows` updated with their matched detections (STrack.update and re_activate alike)."""
    if not len(rows):
        return tracks
    chosen = tracks.take(rows)
    mean, covariance = kalman.update(chosen.mean, chosen.covariance, kalman.measure(dets.tlwh, form), form)
    angle = dets.data[:, D_ANGLE]
    if obb:  # the half-turn form of the new angle (θ or θ ± π) nearest the track's, so it never flips
        angle = angle - np.pi * np.round((angle - chosen.data[:, ANGLE]) / np.pi)
    return _set(
        tracks,
        rows,
        (MEAN, mean),
        (COV, covariance.reshape(-1, 64)),
        (ANGLE, angle),
        (FRAME, frame_id),
        (ACTIVE, 1.0),
        (SCORE, dets.data[:, D_SCORE]),
        (CLS, dets.data[:, D_CLS]),
        (IDX, dets.data[:, D_IDX]),
    )


def _start(dets: Detections, next_id: int, frame_id: int, form: kalman.Form) -> Tracks:
    """New tracks from detections (STrack.activate): confirmed at once only on the first frame."""
    mean, covariance = kalman.initiate(kalman.measure(dets.tlwh, form), form)
    data = np.empty((len(dets), WIDTH))
    data[:, MEAN] = mean
    data[:, COV] = covariance.reshape(-1, 64)
    data[:, ANGLE] = dets.data[:, D_ANGLE]
    data[:, ID] = next_id + np.arange(len(dets))
    data[:, FRAME] = data[:, START] = frame_id
    data[:, ACTIVE] = float(frame_id == 1)
    data[:, [SCORE, CLS, IDX]] = dets.data[:, [D_SCORE, D_CLS, D_IDX]]
    data[:, REMOVED] = -1
    return Tracks(data)


def _deduplicate(tracked: Tracks, lost: Tracks, form: kalman.Form, obb: bool) -> tuple[Tracks, Tracks]:
    """Drop the younger of each tracked/lost pair that overlaps by IoU > 0.85 (remove_duplicate_stracks)."""
    if not len(tracked) or not len(lost):
        return tracked, lost
    close = matching.iou_cost(tracked.boxes(form, obb), lost.boxes(form, obb)) < DUPLICATE_COST
    p, q = np.nonzero(close)
    if not len(p):
        return tracked, lost
    age_p = tracked.data[p, FRAME] - tracked.data[p, START]
    age_q = lost.data[q, FRAME] - lost.data[q, START]
    older = age_p > age_q
    keep_tracked = np.ones(len(tracked), bool)
    keep_lost = np.ones(len(lost), bool)
    keep_tracked[p[~older]] = False
    keep_lost[q[older]] = False
    return tracked.take(keep_tracked), lost.take(keep_lost)
