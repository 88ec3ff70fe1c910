"""A job's video from a `url`: downloaded by the run that holds the job's lease (never in the POST: a video may be
100 MiB), streamed to GATEWAY_JOBS_DIR, then analysed as an uploaded one (gateway/jobs/run.py).

The download goes through the image `url`'s guarded fetcher (gateway/predict/fetch.py `opened`): http(s) only,
every hop (the first request and each redirect, at most GATEWAY_URL_MAX_REDIRECTS) checked against the URL guard
and connected to the address that was checked. It is capped at GATEWAY_MAX_VIDEO_BYTES (an uploaded video's limit;
a larger Content-Length is refused before the body is read) and must end within GATEWAY_JOB_DOWNLOAD_TIMEOUT_S. The
bytes go to a file of the run's own (`<id>.<token>.download.part`, the lease's fencing token), which becomes the
job's video (`<id>.<token>.<ext>`) only when it is complete, sniffed as a video, opens within the video limits and
the run still holds the lease (the record's `video` is written fenced). So a takeover of a job whose download had
not finished finds no `video` in the record and downloads again. Progress (`downloaded`, `download_total` bytes) is
written to the record every PROGRESS_S, whether bytes arrive or not, and a cancel stops the download within
about a second, as it stops an analysis.

A failed download (refused address, HTTP error, too large, too slow, not a video) raises the fetcher's error (its
status: 400, 413, 415, 502) with a message naming the URL (without its query string) and what to fix; the job
fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.dialects import DIALECTS
from gateway.errors import BadGateway, BadRequest, GatewayError, PayloadTooLarge, UnsupportedMediaType
from gateway.jobs import run
from gateway.predict.fetch import Resolver, opened
from gateway.services import Services
from gateway.streams import capped
from gateway.vision import videofile
from gateway.vision.videofile import Control
from gateway.work.board import Board, Lease

HUB = DIALECTS["hub"]
BLOCK = 1 << 20  # bytes gathered before one write to disk (off the event loop)
DOWNLOADING, ANALYSING = "downloading", "analysing"  # a running job's `stage`
HINTS = {
    BadRequest: "Give the video's address on a public http(s) host (an operator may allow a private host with "
    "GATEWAY_URL_ALLOW_HOSTS), or upload the video as 'file'.",
    PayloadTooLarge: "Send a shorter or smaller video (GATEWAY_MAX_VIDEO_BYTES), or split it.",
    BadGateway: "Check that the URL answers 200 with the video (e.g. curl -I) from the gateway's network, then submit "
    "the job again, or upload the video as 'file'.",
}


async def probe(services: Services, path: str, container: str, vid_stride: int) -> int:
    """The frames a stored video declares (0: it does not say), after the checks a video gets before it is analysed
    (it opens; its duration and frames within the job's limits: 413, 415, 422), so that a video that can't be
    analysed is refused now rather than in an hour."""
    settings = services.settings
    pool = services.video_workers or services.workers
    control = Control(time.monotonic() + settings.video_timeout_s, settings.video_timeout_s,
                      "GATEWAY_VIDEO_TIMEOUT_S")  # fmt: skip
    cap, meta, _ = await pool.run(videofile.open_video, path, container, vid_stride, run.limits(settings), control)
    cap.release()
    return meta.frames


async def download(
    services: Services, board: Board, lease: Lease, record: dict[str, str], resolve: Resolver
) -> dict[str, str] | None:
    """Download the video of `record`'s `url` into GATEWAY_JOBS_DIR; the record's new fields (written, fenced:
    `video`, `container`, `frames_total`, stage analysing), or None when the run ended without a verdict (the
    lease was lost, or the job was cancelled). A GatewayError when the download failed (see the module)."""
    settings = services.settings
    part = settings.jobs_dir / f"{lease.id}.{lease.token}.download.part"
    if await run.going_on(board, lease, {"stage": DOWNLOADING, "downloaded": "0", "download_total": ""}):
        return None
    kept = ""
    fetched = Fetched()
    try:
        try:
            async with asyncio.timeout(settings.job_download_timeout_s):
                going = await _watched(board, lease, _stream(services, record["url"], part, resolve, fetched), fetched)
        except TimeoutError:
            raise BadGateway(
                f"The video was not downloaded within {settings.job_download_timeout_s:g} s "
                "(GATEWAY_JOB_DOWNLOAD_TIMEOUT_S)."
            ) from None
        if not going:  # cancelled, or the lease lost: a new owner downloads again
            await asyncio.to_thread(_remove, part, "")
            return None
        container = videofile.sniff(await asyncio.to_thread(_head, part))
        if container is None:
            raise UnsupportedMediaType(
                "Its bytes are not a video this gateway reads (MP4/MOV, AVI or WebM/MKV): give the URL of the video "
                "file itself, not of a page that shows it."
            )
        kept = str(settings.jobs_dir / f"{lease.id}.{lease.token}{videofile.SUFFIX[container]}")
        await asyncio.to_thread(os.replace, part, kept)
        info = await services.model(record["model"])
        args = HUB.parse(orjson.loads(record["args"]), info.imgsz)
        frames = await probe(services, kept, container, args.vid_stride)
    except GatewayError as exc:
        await asyncio.to_thread(_remove, part, kept)
        await board.write(lease, fetched.fields())  # the bytes it got, beside the error (fenced: if still the owner)
        shown = record.get("url_shown")
        if kept:  # downloaded, but it does not open or is over a limit: its own message says what is wrong
            exc.message = f"The job's video downloaded from {shown} can't be analysed: {exc.message}"
            raise
        hint = next((text for kind, text in HINTS.items() if isinstance(exc, kind)), "")
        exc.message = f"The job's video could not be downloaded from {shown}: {exc.message} {hint}".rstrip()
        raise
    except BaseException:
        await asyncio.to_thread(_remove, part, kept)
        raise
    fields = {"video": kept, "container": container, "frames_total": str(frames), "stage": ANALYSING}
    if not await board.write(lease, fields | fetched.fields()):
        await asyncio.to_thread(_remove, part, kept)
        return None
    return fields


@dataclasses.dataclass
class Fetched:
    """A download so far: bytes written, and the length the server declared ("": it did not)."""

    size: int = 0
    total: str = ""

    def fields(self) -> dict[str, str]:
        return {"downloaded": str(self.size), "download_total": self.total}


async def _watched(board: Board, lease: Lease, download: Coroutine[Any, Any, None], fetched: Fetched) -> bool:
    """Run `download`, writing its progress (fenced) every PROGRESS_S whether bytes arrive or not; False when it
    was stopped because the run must end (cancelled, lease lost)."""
    task = asyncio.ensure_future(download)
    try:
        while not (await asyncio.wait({task}, timeout=run.PROGRESS_S))[0]:
            if await run.going_on(board, lease, fetched.fields()):
                return False
        task.result()  # its error, if it failed
        return True
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _stream(services: Services, url: str, part: Path, resolve: Resolver, fetched: Fetched) -> None:
    """`url`'s body written to `part` (flushed and fsynced: another replica may run the job from it), counted in
    `fetched` as it arrives."""
    settings = services.settings
    limit = settings.max_video_bytes
    too_large = f"The file is larger than the {limit // 2**20} MiB video limit (GATEWAY_MAX_VIDEO_BYTES)."
    async with opened(url, settings.url_max_redirects, settings.url_allow_hosts, resolve, what="video") as response:
        declared = response.headers.get("content-length")
        fetched.total = declared if declared is not None and declared.isdigit() else ""
        out: IO[bytes] = await asyncio.to_thread(open, part, "wb")
        try:
            block: list[bytes] = []
            buffered = 0
            async for chunk in capped(response.aiter_bytes(), limit, too_large, declared):
                block.append(chunk)
                buffered += len(chunk)
                fetched.size += len(chunk)
                if buffered >= BLOCK:
                    await asyncio.to_thread(out.writelines, block)
                    block, buffered = [], 0
            await asyncio.to_thread(_durable, out, block)
        finally:
            await asyncio.to_thread(out.close)


def _durable(out: IO[bytes], block: list[bytes]) -> None:
    out.writelines(block)
    out.flush()
    os.fsync(out.fileno())


def _head(path: Path) -> bytes:
    with open(path, "rb") as found:
        return found.read(videofile.SNIFF_BYTES)


def _remove(part: Path, kept: str) -> None:
    videofile.remove(str(part))
    if kept:
        videofile.remove(kept)


def stage(record: dict[str, str]) -> str | None:
    """A job resource's `stage`: while it runs, downloading (its `url`) then analysing; null otherwise."""
    if record.get("state") != "running":
        return None
    return DOWNLOADING if record.get("stage") == DOWNLOADING else ANALYSING


def public_progress(record: dict[str, str]) -> dict[str, Any]:
    """The `progress` object's download fields: the bytes downloaded so far and those the server declared (null: an
    uploaded video, not started yet, or a server that does not say)."""
    return {
        "downloaded_bytes": int(record["downloaded"]) if record.get("downloaded") else None,
        "download_bytes_total": int(record["download_total"]) if record.get("download_total") else None,
    }
