"""What a live stream's next owner continues from: the stream's checkpoint in its record (`checkpoint`, JSON), written
by the owner through its lease (fenced) and read by a replica that takes the stream over.

A checkpoint holds `next`, the first frame index a later owner may use, and, tracked, the tracker's state after the
last frame analysed before it (gateway/predict/tracked.py: base64 of gateway/tracking/codec.py's bytes, as video
jobs keep theirs). `next` is a promise: the owner never publishes a frame index at or past the `next` it last
checkpointed. Before it analyses such a frame it checkpoints again (`Saver.before`), with `next` a reserve of frames
ahead (two GATEWAY_STREAM_CHECKPOINT_S of the source's frames, at least MIN_RESERVE); a refused write (the lease is
gone) ends the run first. So the frames a killed owner published all lie below the checkpoint its successor reads,
and the successor's indices, counted on from that `next`, are greater than any index published before: subscribers
see indices only grow, with a jump at a takeover, never a repeat.

The checkpoint is written every GATEWAY_STREAM_CHECKPOINT_S (at the first frame after that time), at once when the
frame indices reach the reserve's end, and when the run ends because its lease is given up (a shutdown: the board
still holds the lease, so that last write goes in, with `next` just past the last frame analysed). A killed owner's
successor therefore restores the tracker as it was at most GATEWAY_STREAM_CHECKPOINT_S before the death.

The restored tracker counts only the frames it is given, like frames that newest-frame-wins or `vid_stride` passed
over: the frames between the last checkpoint and the first frame the new owner analyses are never seen, so a track
not matched again stays lost for `track_buffer` (30) analysed frames from there, and each Kalman filter predicts
one frame's motion across the gap. An object that moved far during the gap can get a new id; one that stayed, or
moved little, keeps its id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time

from gateway.arguments import PredictArgs
from gateway.modelcard import ModelInfo
from gateway.predict import tracked
from gateway.work import checkpoint
from gateway.work.board import Board, Lease

log = logging.getLogger("gateway")
CHECKPOINT = "checkpoint"  # the stream record's field holding the last checkpoint (`Checkpoint`, JSON)
MIN_RESERVE = 100  # frame indices an owner may use past a checkpoint before it writes the next, at the least


@dataclasses.dataclass(frozen=True)
class Checkpoint(checkpoint.Checkpoint):
    """The record's `checkpoint`: `next` (see the module docstring) and the tracker's state ("" untracked)."""

    next: int
    tracker: str = ""

    def usable(self) -> bool:
        return isinstance(self.next, int) and self.next >= 0 and isinstance(self.tracker, str)


def restore(id: str, record: dict[str, str], info: ModelInfo, args: PredictArgs) -> tuple[int, tracked.Tracker | None]:
    """The first frame index of a run of stream `id` and its tracker (None untracked): where the record's checkpoint
    left off, else 0 and a new tracker. A checkpoint that can't be read, or a tracker state of another tracker or
    kind of box, means a fresh start of what it held (logged), never a failed run."""
    text = record.get(CHECKPOINT, "")
    found = Checkpoint.loads(text)
    if text and found is None:
        log.warning("stream %s: its checkpoint can't be read: frame indices and tracks start over", id)
    first = found.next if found is not None else 0
    if not args.track:
        return first, None
    state = tracked.restore(found.tracker, f"stream {id} checkpoint") if found is not None and found.tracker else None
    if state is not None and (state.config.tracker != args.tracker or state.obb != (info.task == "obb")):
        log.warning("stream %s: its checkpoint's tracker is not the stream's: tracks start over", id)
        state = None
    return first, tracked.Tracker(state) if state is not None else tracked.Tracker.start(info, args)


class Saver:
    """The checkpoints of one run (see the module docstring): `before(index, fps)` ahead of each frame analysed,
    `last()` when the run ends on a lost lease. `tracker`: the run's own (its state is read between frames)."""

    def __init__(self, board: Board, lease: Lease, every_s: float, first: int, tracker: tracked.Tracker | None) -> None:
        self.board, self.lease, self.every_s, self.tracker = board, lease, every_s, tracker
        self.promised = first  # the `next` of the last checkpoint written (none yet: where this run starts)
        self.analysed = -1  # the last frame index handed to analysis (-1: none yet)
        self.saved = -math.inf  # when the last checkpoint was written (time.monotonic())

    async def before(self, index: int, fps: float) -> bool:
        """Checkpoint, if due, before frame `index` is analysed (the source sends `fps` frames a second); False
        when the write was refused (the lease is gone: the frame must not be published)."""
        now = time.monotonic()
        if index >= self.promised or now - self.saved >= self.every_s:
            reserve = max(MIN_RESERVE, math.ceil(2 * self.every_s * fps))
            if not await self._write(index + reserve):
                return False
        self.analysed = index
        return True

    async def last(self) -> None:
        """The checkpoint of a run that ends: `next` just past the last frame analysed. Fenced: it goes in only
        while the board still holds the lease (a shutdown hands it back after this), never after a takeover."""
        if self.analysed >= 0:
            await self._write(self.analysed + 1)

    async def _write(self, next: int) -> bool:
        blob = await asyncio.to_thread(tracked.saved, self.tracker) if self.tracker is not None else ""
        if not await self.board.write(self.lease, {CHECKPOINT: Checkpoint(next, blob).dumps()}):
            return False
        self.promised, self.saved = next, time.monotonic()
        return True
