"""One live stream, run by the replica that holds its lease: frames from its `Source`, through the same steps as a
video frame (`pipeline.model_input`, Triton, `pipeline.finish`, and the tracker when `track`), to its subscribers
(an event per frame on the shared channel), its webhook (in batches) and its record (state and rates, every
STATS_S).

Each frame costs the key one token, like an image; a frame the key's rate has no token for is skipped (counted in
`frames_rate_limited`), never queued. Every write goes through the lease (fenced): when the lease is lost the loop
ends without another write, and the new owner goes on from the stream's last checkpoint (gateway/live/resume.py:
frame indices and tracks continue).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.arguments import PredictArgs
from gateway.dialects import DIALECTS, Call
from gateway.errors import GatewayError, TooManyRequests
from gateway.keys.auth import KeyEntry
from gateway.live.resume import Saver
from gateway.live.source import Grabbed, Source
from gateway.modelcard import ModelInfo
from gateway.predict.responses import FrameOutcome
from gateway.predict.tracked import Tracker
from gateway.services import Services
from gateway.vision import pipeline
from gateway.vision.videofile import check_pixels
from gateway.work.board import Board, Lease
from gateway.work.webhooks import Batch

log = logging.getLogger("gateway")
STATS_S = 1.0  # the record's state and rates are written this often
KEY_CHECK_S = 5.0  # the key is looked up again this often (a revoked key stops its streams)
ERROR_PAUSE_S = 0.5  # after a failed inference, before the next frame (no tight loop against a down Triton)
HUB = DIALECTS["hub"]  # events carry each frame as the HUB's video answers do: frame, time, data


@dataclass
class Counters:
    processed: int = 0
    rate_limited: int = 0
    failed: int = 0
    lag_ms: float = 0.0  # from a frame's read to its event, last frame
    size: tuple[int, int] = (0, 0)  # the last analysed frame's (width, height) in pixels: where the boxes lie
    times: list[float] | None = None

    def processed_fps(self, now: float, window: float = 2.0) -> float:
        times = [t for t in self.times or [] if t > now - window]
        self.times = times
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6) if len(times) > 1 else 0.0


@dataclass
class Run:
    """What one run of a stream uses (made by gateway/live/service.py)."""

    services: Services
    board: Board
    lease: Lease
    record: dict[str, str]
    entry: KeyEntry
    info: ModelInfo
    args: PredictArgs
    source: Source
    batch: Batch | None
    tracker: Tracker | None  # the stream's tracks, carried from frame to frame (as a video's)
    saver: Saver | None = None  # the stream's checkpoints (gateway/live/resume.py)


def stats(run: Run, counters: Counters, now: float) -> dict[str, str]:
    """The record's fields for the run's state and rates (`stats` is JSON: what GET /v1/streams/{id} shows)."""
    source = run.source
    figures = {
        "input_fps": round(source.input_fps, 2),
        "processed_fps": round(counters.processed_fps(now), 2),
        "lag_ms": round(counters.lag_ms, 1),
        "frames_read": source.read,
        "frames_processed": counters.processed,
        "frames_dropped": source.dropped,
        "frames_rate_limited": counters.rate_limited,
        "frames_failed": counters.failed,
        "reconnects": source.reconnects,
        "width": counters.size[0],
        "height": counters.size[1],
    }
    state = "running" if source.state == "running" else source.state
    return {"state": state, "error": source.error, "stats": orjson.dumps(figures).decode(), "updated": str(time.time())}


async def loop(run: Run, ready: asyncio.Event, key_check: Any) -> None:
    """Analyse frames until the lease is lost or the stream asks to stop. `ready` is set by the source's thread
    (through the event loop) when a frame is waiting; `key_check()` returns the key's entry now (None: revoked)."""
    lease = run.lease
    counters = Counters(times=[])
    started = time.monotonic()
    flushed = checked = 0.0
    while not lease.lost and not lease.stop:
        try:
            await asyncio.wait_for(ready.wait(), STATS_S)
        except TimeoutError:
            pass
        ready.clear()
        now = time.monotonic()
        if now - checked >= KEY_CHECK_S:
            checked = now
            entry = await key_check()
            if entry is None:
                await run.board.write(lease, {"error": "The stream's API key was revoked.", "state": "failed"})
                return
            run.entry = entry
        frame = run.source.take()
        if (
            frame is not None
            and run.saver is not None
            and not await run.saver.before(frame.index, run.source.input_fps)
        ):
            return  # the checkpoint before this frame was refused: the lease is gone
        if frame is not None:
            await _analyse(run, frame, counters, started)
        if run.batch is not None:
            run.batch.tick()
        if time.monotonic() - flushed >= STATS_S:
            flushed = time.monotonic()
            await run.board.write(lease, stats(run, counters, flushed))


async def _analyse(run: Run, frame: Grabbed, counters: Counters, started: float) -> None:
    services = run.services
    try:
        await services.store.spend(run.entry, 1)
    except TooManyRequests:
        counters.rate_limited += 1
        return
    except GatewayError:  # the key store is unreachable: the frame is not charged, nor analysed
        counters.failed += 1
        return
    settings = services.settings
    t0 = time.perf_counter()
    try:
        check_pixels(frame.image.shape[1], frame.image.shape[0], settings.max_pixels)
        tensor, box = await services.workers.run(
            pipeline.model_input, frame.image, run.info, run.args.size, settings.letterbox == "rect",
            settings.max_pixels,
        )  # fmt: skip
        t1 = time.perf_counter()
        async with services.triton.infer(run.info, [tensor]) as result:
            t2 = time.perf_counter()
            outputs = {name: value[0] for name, value in result.items()}
            then = run.tracker.then(box.orig_shape, frame.image) if run.tracker is not None else None
            rows = await services.workers.run(pipeline.finish, run.info, outputs, box, run.args, then)
    except GatewayError as exc:
        counters.failed += 1
        await run.board.write(run.lease, {"error": exc.message[:300]})
        await asyncio.sleep(ERROR_PAUSE_S)
        return
    speed = {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000, "postprocess": 0.0}
    speed["postprocess"] = (time.perf_counter() - t2) * 1000
    outcome = FrameOutcome(frame.index, round(frame.at - started, 6), rows, box.orig_shape, speed)
    event = HUB.frame(Call(run.info, run.args), outcome)  # a frame as the HUB's video answers write it
    if await run.board.publish(run.lease, orjson.dumps(event)):
        counters.processed += 1
        now = time.monotonic()
        counters.lag_ms = (now - frame.at) * 1000
        counters.size = (frame.image.shape[1], frame.image.shape[0])
        assert counters.times is not None
        counters.times.append(now)
        if run.batch is not None:
            run.batch.add(event)
