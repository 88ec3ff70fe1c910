"""One run of a video job, by the replica that holds its lease: the stored video through the video route's own frame
pipeline (`video.open_reader`, `video.analysed_frames`: the same decoding, batching, limits, memory holds and
tracker), each frame written as one NDJSON line in the HUB v1 video format (what `stream=true` answers), the end
line last.

A run writes to a file of its own (`<id>.<token>.part`, the lease's fencing token) and renames it to the result
only at the end, so a replica that lost its lease never touches its successor's result. Every
GATEWAY_JOB_CHECKPOINT_S the run makes its lines so far durable (flushed, fsynced) and records a checkpoint (fenced):
its part file, the complete frame lines and their bytes, the last source frame and, tracked, the tracker's state
(gateway/tracking/codec.py). A run that finds a checkpoint (its job's owner died) copies that prefix of the old part
file into its own (never writing the old one: its owner may live on, fenced off), restores the tracker and goes on
after the checkpoint's frame: the frames before are decoded (inter-coded video needs them) but not analysed again
(`Reader.resume`), so a takeover redoes at most the frames since the last checkpoint, and the result is byte for
byte an uninterrupted run's (no frame twice, none missing). Progress goes to the record
every PROGRESS_S (fenced); the record and the key are re-read as often, so a cancel (`stop`) ends the run within
about a second, and so does revoking the job's key (the job fails with 401; the frames analysed so far are its
result).
Frames are charged to the key as the video route charges them, and a run after a takeover pays only for frames
beyond those the job already paid for (`charged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.dialects import DIALECTS, Call
from gateway.errors import GatewayError, PayloadTooLarge, ServiceUnavailable, Unauthorized
from gateway.keys.auth import KeyEntry
from gateway.predict import responses, tracked, video
from gateway.services import Services
from gateway.settings import Settings
from gateway.vision.videofile import Control
from gateway.work import checkpoint
from gateway.work.board import Board, Lease

log = logging.getLogger("gateway")

PROGRESS_S = 1.0  # progress written and the record re-read (a cancel) this often
CHECKPOINT = "checkpoint"  # the record's field holding the last checkpoint (`Checkpoint`, JSON)
STOP, LOST = "stop", "lost"  # why a run ends without a verdict (`going_on`)
HUB = DIALECTS["hub"]  # results are written as the v1 route's NDJSON video answer


def limits(settings: Settings) -> Settings:
    """The video limits a job runs under: a job may analyse every frame the video route may decode (a 10-minute video
    at 30 fps with vid_stride 1), not only the frames a request may answer with."""
    return dataclasses.replace(settings, max_video_frames=max(settings.max_video_frames,
                                                              settings.max_video_decoded_frames))  # fmt: skip


def result_path(settings: Settings, id: str) -> Path:
    return settings.jobs_dir / f"{id}.ndjson"


@dataclasses.dataclass
class Progress:
    """What GET /v1/jobs/{id} shows while a job runs; frames_total is 0 when the container does not say; `resumed`:
    the frames a checkpoint gave this run (not counted in its fps)."""

    total: int
    done: int = 0
    resumed: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def fields(self, charged: int) -> dict[str, str]:
        seconds = max(time.monotonic() - self.started, 1e-6)
        fps = (self.done - self.resumed) / seconds
        return {"frames_done": str(self.done), "fps": f"{fps:.2f}", "charged": str(charged)}


@dataclasses.dataclass(frozen=True)
class Checkpoint(checkpoint.Checkpoint):
    """The record's `checkpoint` (JSON): the first `size` bytes of the part file `part` (a name in GATEWAY_JOBS_DIR)
    are durable and hold `frames` complete frame lines, the last of source frame `after`; `tracker`: the tracker's
    state after that frame (base64 of gateway/tracking/codec.py's bytes; "" untracked)."""

    part: str
    frames: int
    size: int
    after: int
    tracker: str = ""

    def usable(self) -> bool:
        return "/" not in self.part and min(self.frames, self.size, self.after) >= 0


async def run(
    services: Services, board: Board, lease: Lease, record: dict[str, str], entry: KeyEntry
) -> dict[str, str]:
    """Run the job of `record` to its end; the record's final fields (state done or failed, error, finished), or
    {} when the run ended without a verdict (the lease was lost, or the job was cancelled)."""
    settings = services.settings
    if not await asyncio.to_thread(os.path.exists, record["video"]):
        raise ServiceUnavailable(
            f"The job's video is not in this gateway's GATEWAY_JOBS_DIR ({settings.jobs_dir}): with several "
            "replicas, that folder must be one shared volume (the chart: models.uploads). Submit the video again."
        )
    info = await services.model(record["model"])
    args = HUB.parse(orjson.loads(record["args"]), info.imgsz)
    call = Call(info, args, None, record["model"])
    control = Control(time.monotonic() + settings.job_timeout_s, settings.job_timeout_s, "GATEWAY_JOB_TIMEOUT_S")
    part = settings.jobs_dir / f"{lease.id}.{lease.token}.part"
    charged = int(record.get("charged") or 1)  # the POST's own token paid for the first frame
    paid = 1

    async def charge(extra: int) -> None:
        nonlocal paid, charged
        paid += extra
        if paid > charged:  # frames a run before a takeover already paid for are not charged twice
            await services.store.spend(entry, paid - charged, force=True)
            charged = paid

    error: GatewayError | None = None
    found_checkpoint = Checkpoint.loads(record.get(CHECKPOINT, ""))
    state = None
    if args.track and found_checkpoint and found_checkpoint.tracker:
        state = await asyncio.to_thread(tracked.restore, found_checkpoint.tracker, f"job {lease.id} checkpoint")
    if args.track and state is None:
        found_checkpoint = None  # a tracked job resumes with its tracker or not at all
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(setattr, control, "cancelled", True)
        out, resumed = await asyncio.to_thread(_open_part, settings.jobs_dir, part, found_checkpoint)
        stack.callback(out.close)
        if record.get(CHECKPOINT) and not await board.write(lease, {"resumed_at": str(resumed)}):
            return {}  # the lease is gone already
        job_limits = limits(settings)
        reader, found = await video.open_reader(
            services, record["video"], record["container"], args, control, stack, entry.id, job_limits, resumed
        )
        tracker = None
        if args.track:
            tracker = tracked.Tracker(state) if resumed and state else tracked.Tracker.start(info, args)
        frames = video.analysed_frames(services, info, reader, found, args, charge, entry.id, tracker, job_limits)
        stack.push_async_callback(frames.aclose)
        progress = Progress(reader.meta.frames, resumed, resumed)
        lines: list[bytes] = []
        checked = saved = time.monotonic()
        ended = ""
        try:
            async for outcome in frames:
                lines.append(orjson.dumps(HUB.frame(call, outcome)) + b"\n")
                progress.done += 1
                # tracked: only after the last frame of a batch, when the tracker has seen no frame past the lines
                settled = tracker is None or tracker.state.frame_id == progress.done
                # lost (a shutdown, or the lease lapsed): at once, with a last checkpoint, not at the next tick
                if (time.monotonic() - checked >= PROGRESS_S or lease.lost) and settled:
                    checked = time.monotonic()
                    fields = progress.fields(charged)
                    if checked - saved >= settings.job_checkpoint_s or lease.lost:  # lost: maybe a shutdown
                        saved = checked
                        fields[CHECKPOINT] = await _checkpoint(out, lines, part, progress.done, outcome.index, tracker)
                    else:
                        await asyncio.to_thread(out.writelines, lines)
                    lines = []
                    ended = await going_on(board, lease, fields)
                    if ended:
                        control.cancelled = True
                        break
                    if not await _key_valid(services, entry.id):
                        error = Unauthorized(
                            f"The job's API key was revoked while it ran: the {progress.done} frame(s) analysed "
                            "before are its result, the rest were not analysed. Submit it again with a valid key."
                        )
                        break
        except PayloadTooLarge as exc:  # a limit, or the job's time: the frames read so far are the result
            error = exc
            if reader.out_of_time:
                error = PayloadTooLarge(
                    f"The job was not done within {settings.job_timeout_s:g} s (GATEWAY_JOB_TIMEOUT_S): "
                    f"{progress.done} frame(s) analysed; they are in the result. Send the video in parts."
                )
        except GatewayError as exc:  # the video broke off partway (422), Triton failed (503/504)
            error = exc
        if control.cancelled:
            if ended != LOST:  # a lost lease's part file stays, for its successor to resume from (retire removes it)
                await asyncio.to_thread(_remove, part)
            return {}
        end = HUB.end_line(call, responses.video_meta(reader), reader.analysed, error)
        lines.append(orjson.dumps(end) + b"\n")
        await asyncio.to_thread(_finish, out, lines, part, result_path(settings, lease.id))
    final = {
        **progress.fields(charged),
        "state": "done" if error is None else "failed",
        "finished": f"{time.time():.3f}",
    }
    if error is not None:
        final |= {"error": error.message[:500], "status": str(HUB.status(error))}
    return final


async def _checkpoint(
    out: IO[bytes], lines: list[bytes], part: Path, frames: int, after: int, tracker: tracked.Tracker | None
) -> str:
    """The lines so far made durable in the part file, and the record's checkpoint for them (JSON). Called between
    the frames of the generator (suspended): the tracker's state is that after frame `after`."""
    blob = await asyncio.to_thread(tracked.saved, tracker) if tracker is not None else ""
    size = await asyncio.to_thread(_durable, out, lines)
    return Checkpoint(part.name, frames, size, after, blob).dumps()


def _durable(out: IO[bytes], lines: list[bytes]) -> int:
    """Write `lines`, flush and fsync; the file's length (bytes)."""
    out.writelines(lines)
    out.flush()
    os.fsync(out.fileno())
    return out.tell()


def _open_part(folder: Path, part: Path, found: Checkpoint | None) -> tuple[IO[bytes], int]:
    """This run's part file, open for writing, and the frames it starts with: the complete prefix of the
    checkpoint's part file copied in (that file only read: its run may go on, fenced off), else empty and 0 (no
    checkpoint, or its file is gone or shorter than it says)."""
    out = open(part, "wb")  # noqa: SIM115 - the run closes it (its exit stack)
    if found is None:
        return out, 0
    left, newlines, last = found.size, 0, b"\n"
    try:
        with open(folder / found.part, "rb") as old:
            while left > 0 and (block := old.read(min(left, 1 << 20))):
                out.write(block)
                left, newlines, last = left - len(block), newlines + block.count(b"\n"), block[-1:]
    except OSError as exc:
        log.warning("job checkpoint: %s can't be read (%s): the run starts over", found.part, exc.strerror)
        left = -1
    if left != 0 or newlines != found.frames or last != b"\n":
        out.seek(0)
        out.truncate()
        return out, 0
    return out, found.frames


async def going_on(board: Board, lease: Lease, fields: dict[str, str]) -> str:
    """Write progress (fenced) and say whether the run may go on: "" (it may), STOP (the job was cancelled or
    deleted) or LOST (the lease). A lease this replica gives up at shutdown is `lost` while the board still holds it:
    this last write goes in, with the checkpoint the run made for it, and the next owner resumes from there."""
    if lease.stop:
        return STOP
    if not await board.write(lease, fields) or lease.lost:
        return LOST
    found = await board.read(lease.kind, lease.id)
    return STOP if found is None or found.get("stop") else ""


async def _key_valid(services: Services, key_id: str) -> bool:
    found = await services.store.get_key(key_id)
    return found is not None and not found.revoked


def _finish(out: IO[bytes], lines: list[bytes], part: Path, result: Path) -> None:
    """The last lines written, flushed to disk, and the run's file made the job's result (atomically)."""
    out.writelines(lines)
    out.flush()
    os.fsync(out.fileno())
    out.close()
    os.replace(part, result)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def public_progress(record: dict[str, str]) -> dict[str, Any]:
    """The `progress` object of a job resource: frames done and total (0: unknown), percent, processed fps, the
    frames of the last checkpoint and those the last run resumed at (a takeover; 0: it found none it could use)."""
    done, total = int(record.get("frames_done") or 0), int(record.get("frames_total") or 0)
    percent = 100.0 if record.get("state") == "done" else round(100 * done / total, 1) if total else None
    checkpoint = Checkpoint.loads(record.get(CHECKPOINT, ""))
    return {"frames_done": done, "frames_total": total or None, "percent": percent,
            "fps": float(record.get("fps") or 0),
            "checkpoint": checkpoint.frames if checkpoint else None,
            "resumed_at": int(record["resumed_at"]) if record.get("resumed_at") else None}  # fmt: skip
