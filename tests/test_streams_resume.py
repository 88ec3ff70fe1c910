"""A live stream's checkpoint (gateway/live/resume.py) on the memory board: what a new owner continues from, and the
promise that makes frame indices only grow across a takeover (no index at or past the last checkpoint's `next` is
analysed before a new checkpoint is written, fenced). The end-to-end takeover is tests/test_streams_takeover.py."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.arguments import parse_args
from gateway.live.resume import CHECKPOINT, MIN_RESERVE, Checkpoint, Saver, restore
from gateway.predict import tracked
from gateway.tracking.results import track
from gateway.vision.pipeline import Found
from gateway.work.board import MemoryBoard

DETECT: Any = SimpleNamespace(task="detect", name="yolov8n")


def _tracked_once() -> tracked.Tracker:
    """A ByteTrack tracker after one frame with two detections (ids 1 and 2)."""
    tracker = tracked.Tracker.start(DETECT, parse_args({"track": "true"}))
    boxes = np.array([[10, 10, 50, 90], [100, 20, 140, 100]], dtype=np.float32)
    found = Found(boxes, np.array([0.9, 0.8], dtype=np.float32), np.array([0, 0], dtype=np.float32))
    tracker.state, _ = track(tracker.state, found, (200, 200), None)
    assert tracker.state.next_id == 3
    return tracker


def test_a_checkpoint_restores_the_next_frame_index_and_the_tracker() -> None:
    tracker = _tracked_once()
    record = {CHECKPOINT: Checkpoint(345, tracked.saved(tracker)).dumps()}
    first, restored = restore("st_1", record, DETECT, parse_args({"track": "true"}))
    assert first == 345 and restored is not None
    assert restored.state.next_id == 3 and restored.state.frame_id == tracker.state.frame_id
    assert len(restored.state.tracked) == len(tracker.state.tracked) == 2
    assert restore("st_1", record, DETECT, parse_args({})) == (345, None)  # untracked: the index only


@pytest.mark.parametrize(
    "text, first",
    [
        ("{not json", 0),
        (orjson.dumps({"next": -1}).decode(), 0),
        (orjson.dumps({"next": "7"}).decode(), 0),
        (orjson.dumps({"next": 7, "tracker": "!!not base64"}).decode(), 7),
        (orjson.dumps({"next": 7, "tracker": "WVRUUksB"}).decode(), 7),  # the codec's magic, then nothing
    ],
)
def test_a_checkpoint_that_cant_be_read_starts_over_logged_never_fails(
    text: str, first: int, caplog: pytest.LogCaptureFixture
) -> None:
    """What can't be read starts over (a new tracker; index 0 when `next` itself is unreadable); what can is kept."""
    with caplog.at_level(logging.WARNING, logger="gateway"):
        got, tracker = restore("st_1", {CHECKPOINT: text}, DETECT, parse_args({"track": "true"}))
    assert got == first and tracker is not None and tracker.state.next_id == 1 and len(tracker.state.tracked) == 0
    assert "st_1" in caplog.text and "start over" in caplog.text


def test_a_checkpoint_of_another_tracker_starts_the_tracks_over(caplog: pytest.LogCaptureFixture) -> None:
    record = {CHECKPOINT: Checkpoint(9, tracked.saved(_tracked_once())).dumps()}
    with caplog.at_level(logging.WARNING, logger="gateway"):
        first, tracker = restore("st_1", record, DETECT, parse_args({"track": "true", "tracker": "botsort"}))
    assert first == 9 and tracker is not None and tracker.state.config.tracker == "botsort"
    assert tracker.state.next_id == 1 and "not the stream's" in caplog.text


def test_an_owner_checkpoints_before_it_passes_its_promise_and_a_fenced_off_one_stops() -> None:
    """Frame indices at or past the last checkpoint's `next` are refused analysis until a new checkpoint is written;
    once another replica holds the lease, that write is refused, so nothing the old owner publishes reaches the
    index the successor starts from."""

    async def main() -> None:
        board = MemoryBoard()
        assert await board.create("stream", "st_1", "k1", {"state": "running"}, 0)
        old = await board.acquire("stream", "st_1", "replica-a", 0.5)
        assert old is not None
        saver = Saver(board, old, 1000.0, 0, _tracked_once())  # time never due here: only the promise counts

        async def promised() -> int:
            found = Checkpoint.loads((await board.read("stream", "st_1") or {}).get(CHECKPOINT, ""))
            assert found is not None
            return found.next

        assert await saver.before(0, 0.0) and await promised() == MIN_RESERVE  # the first frame checkpoints
        assert await saver.before(MIN_RESERVE - 1, 0.0) and await promised() == MIN_RESERVE  # within: no write
        # past it: a new checkpoint first, its reserve two checkpoint times of the source's frames (0.5 fps)
        assert await saver.before(MIN_RESERVE + 5, 0.5) and await promised() == MIN_RESERVE + 5 + 1000
        deadline = time.monotonic() + 10
        while (new := await board.acquire("stream", "st_1", "replica-b", 10)) is None:  # the old lease lapses
            assert time.monotonic() < deadline, "the lease never lapsed"
            await asyncio.sleep(0.01)
        successor_first, _ = restore("st_1", await board.read("stream", "st_1") or {}, DETECT, parse_args({}))
        assert successor_first > MIN_RESERVE + 5  # past every frame the old owner was allowed to analyse
        assert not await saver.before(successor_first, 0.0)  # fenced off: the frame is not analysed
        await saver.last()  # refused too
        assert await promised() == successor_first
        mine = Saver(board, new, 1000.0, successor_first, None)
        assert await mine.before(successor_first, 0.0) and await mine.before(successor_first + 1, 0.0)
        await mine.last()  # a shutdown: the lease still held, `next` just past the last frame analysed
        assert await promised() == successor_first + 2

    asyncio.run(main())
