"""One run of a video job, by the replica that holds its lease: the stored video through the video route's own frame
pipeline (`video.open_reader`, `video.analysed_frames`: the same decoding, batching, limits, memory holds and
tracker), each frame written as one NDJSON line in the HUB v1 video format (what `stream=true` answers), the end
line last.

A run writes to a file of its own (`<id>.<token>.part`, the lease's fencing token) and renames it to the result
only at the end, so a replica that lost its lease never touches its successor's result: a job taken over after its
owner died starts over and rewrites the whole result (no frame twice, none missing). Progress goes to the record
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
from gateway.work.board import Board, Lease

PROGRESS_S = 1.0  # progress written and the record re-read (a cancel) this often
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
    """What GET /v1/jobs/{id} shows while a job runs; frames_total is 0 when the container does not say."""

    total: int
    done: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def fields(self, charged: int) -> dict[str, str]:
        seconds = max(time.monotonic() - self.started, 1e-6)
        return {"frames_done": str(self.done), "fps": f"{self.done / seconds:.2f}", "charged": str(charged)}


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
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(setattr, control, "cancelled", True)
        job_limits = limits(settings)
        reader, found = await video.open_reader(
            services, record["video"], record["container"], args, control, stack, entry.id, job_limits
        )
        tracker = tracked.Tracker.start(info, args) if args.track else None
        frames = video.analysed_frames(services, info, reader, found, args, charge, entry.id, tracker, job_limits)
        stack.push_async_callback(frames.aclose)
        out: IO[bytes] = await asyncio.to_thread(open, part, "wb")
        stack.callback(out.close)
        progress = Progress(reader.meta.frames)
        lines: list[bytes] = []
        checked = time.monotonic()
        try:
            async for outcome in frames:
                lines.append(orjson.dumps(HUB.frame(call, outcome)) + b"\n")
                progress.done += 1
                if time.monotonic() - checked >= PROGRESS_S:
                    checked = time.monotonic()
                    await asyncio.to_thread(out.writelines, lines)
                    lines = []
                    if not await _going_on(board, lease, progress.fields(charged)):
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


async def _going_on(board: Board, lease: Lease, fields: dict[str, str]) -> bool:
    """Write progress (fenced) and say whether the run may go on: the lease holds and nobody asked for a stop."""
    if lease.lost or lease.stop or not await board.write(lease, fields):
        return False
    found = await board.read(lease.kind, lease.id)
    return found is not None and not found.get("stop")


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
    """The `progress` object of a job resource: frames done and total (0: unknown), percent, processed fps."""
    done, total = int(record.get("frames_done") or 0), int(record.get("frames_total") or 0)
    percent = 100.0 if record.get("state") == "done" else round(100 * done / total, 1) if total else None
    return {"frames_done": done, "frames_total": total or None, "percent": percent,
            "fps": float(record.get("fps") or 0)}  # fmt: skip
