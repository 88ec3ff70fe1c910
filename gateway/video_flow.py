"""The asynchronous flow of a video request: spool the upload to a temporary file, open it, then read, infer and
post-process frames a chunk at a time (up to the model's max_batch_size frames of equal shape per Triton request),
answering with one JSON body or, with `stream=true`, one NDJSON line per frame as soon as it is done.

Everything the request holds (temporary file, capture, in-flight slot, memory reservations) lives in one
AsyncExitStack; a streamed answer takes the stack with it and closes it when the stream ends or the client leaves.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import orjson
from numpy.typing import NDArray
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway import pipeline, responses, video
from gateway.budget import Hold
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, UnprocessableImage
from gateway.schemas import PredictArgs, Style, parse_args
from gateway.triton import ModelInfo
from gateway.video import Frame, Meta, Reader

if TYPE_CHECKING:
    from gateway.app import State

NDJSON = "application/x-ndjson"


async def container_of(uploads: list[UploadFile]) -> str | None:
    """The video container among the file parts (sniffed from the first bytes, not the name), or None when there
    is no video. A video must be the only file part of its request."""
    found = None
    for upload in uploads:
        head = await upload.read(video.SNIFF_BYTES)
        await upload.seek(0)
        kind = video.sniff(head)
        if kind is not None and len(uploads) > 1:
            raise BadRequest("A video must be the only file in its request: send the video alone, one per request.")
        found = found or kind
    return found


@dataclass
class FrameOutcome:
    index: int
    time: float | None
    rows: list[dict[str, Any]]
    shape: tuple[int, int]
    speed: dict[str, float]


async def respond(
    state: State,
    info: ModelInfo,
    upload: UploadFile,
    container: str,
    fields: dict[str, str],
    style: Style,
    started: float,
    context: dict[str, Any],
    stack: contextlib.AsyncExitStack,
    charge: Callable[[int], Awaitable[None]],
) -> Response:
    """The answer to a request whose only file part is a video (see the module docstring)."""
    settings = state.settings
    args = parse_args(fields, info.imgsz, style)
    if args.url:
        raise BadRequest("Send either a file or a URL, not both.")
    if args.format != "json":
        raise BadRequest("An annotated image (format=image/png) is made for one image; a video is answered in JSON.")
    size = upload.size if upload.size is not None else settings.max_video_bytes + 1
    if size > settings.max_video_bytes:
        raise video_too_large(settings.max_video_bytes)
    context["video"] = container
    path = await state.workers.run(video.spool, upload.file, container)
    stack.callback(video.remove, path)
    await upload.close()  # the form's copy (in memory or in TMPDIR) is not needed once spooled
    cap, meta = await state.workers.run(video.open_video, path, container, args.vid_stride, settings)
    stack.callback(cap.release)
    reader = Reader(cap, meta)
    frames = _frames(state, info, reader, args, charge)
    stack.push_async_callback(frames.aclose)
    if args.stream:
        first = await _first(frames)  # errors before the first frame (e.g. nothing decodable) keep their status
        lines = _lines(first, frames, reader, info, args, style)
        return NdjsonStream(lines, stack.pop_all(), {"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    outcomes: list[FrameOutcome] = []
    try:
        async for outcome in frames:
            outcomes.append(outcome)
    except UnprocessableImage as exc:  # broken partway: 422 with what could be read
        entries = [frame_entry(o, style) for o in outcomes]
        body = _summary(info, args, style, entries, reader, exc, started)
        return responses.json_response(body, exc.status)
    entries = [frame_entry(o, style) for o in outcomes]
    context["frames"] = len(entries)
    timings = {"total": (time.perf_counter() - started) * 1000}
    body = _summary(info, args, style, entries, reader, None, started)
    headers = {"Server-Timing": responses.server_timing(timings)}
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def video_too_large(limit: int) -> GatewayError:
    return PayloadTooLarge(
        f"The video is larger than the {limit // 2**20} MiB video upload limit (GATEWAY_MAX_VIDEO_BYTES). Trim it, "
        "lower its resolution or bitrate, or send it in parts."
    )


async def _first(frames: AsyncGenerator[FrameOutcome, None]) -> FrameOutcome | None:
    try:
        return await frames.__anext__()
    except StopAsyncIteration:
        return None


def _chunk_bytes(meta: Meta, info: ModelInfo, size: int, count: int, max_pixels: int) -> int:
    """Memory one chunk holds at its peak: the decoded frame and FFmpeg's own copy, and `count` model inputs."""
    pixels = meta.width * meta.height if meta.width and meta.height else max_pixels
    side = size + info.stride  # the letterboxed input is at most size², rounded up to the stride
    item = 4 if info.input_format == "float32_nchw_rgb" else 1
    return pixels * 3 * 2 + count * side * side * 3 * item


async def _frames(
    state: State, info: ModelInfo, reader: Reader, args: PredictArgs, charge: Callable[[int], Awaitable[None]]
) -> AsyncGenerator[FrameOutcome, None]:
    """Each analysed frame's outcome in order; raises at the end when the video broke off (UnprocessableImage)."""
    settings = state.settings
    rect = settings.letterbox == "rect"
    batch = max(info.max_batch_size, 1)
    paid = 1  # the request's own token (taken by the rate limiter's check) pays for the first frame
    while not reader.ended:
        hold = Hold(state.budget)
        try:
            await hold.take(_chunk_bytes(reader.meta, info, args.size, batch, settings.max_pixels))
            chunk = await state.workers.run(video.read_chunk, reader, batch, info, args.size, rect, settings)
            if not chunk:
                break
            await charge(len(chunk) - paid)  # each analysed frame costs one token, like an image
            paid = 0
            outcomes: list[FrameOutcome] = []
            for group in _same_shape(chunk):
                t0 = time.perf_counter()
                async with state.triton.infer(info, [f.item.tensor for f in group]) as result:
                    per_frame = (time.perf_counter() - t0) * 1000 / len(group)
                    outcomes += await state.workers.run(_finish, info, result, group, args, per_frame)
        finally:
            hold.release()
        for outcome in outcomes:
            yield outcome
    error = video.broken(reader)
    if error is not None:
        raise error


def _same_shape(chunk: list[Frame]) -> list[list[Frame]]:
    """Consecutive frames of equal input shape (a video may change resolution midway), in order."""
    groups: list[list[Frame]] = []
    for frame in chunk:
        if groups and groups[-1][0].item.tensor.shape == frame.item.tensor.shape:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return groups


def _finish(
    info: ModelInfo, result: dict[str, NDArray[np.float32]], group: list[Frame], args: PredictArgs, infer_ms: float
) -> list[FrameOutcome]:
    out = []
    for k, frame in enumerate(group):
        t0 = time.perf_counter()
        rows = pipeline.finish(info, {name: value[k] for name, value in result.items()}, frame.item.box, args)
        speed = {
            "preprocess": frame.prepare_ms,
            "inference": infer_ms,
            "postprocess": (time.perf_counter() - t0) * 1000,
        }
        out.append(FrameOutcome(frame.index, frame.time, rows, frame.item.box.orig_shape, speed))
    return out


def frame_entry(o: FrameOutcome, style: Style) -> dict[str, Any]:
    """One frame's entry: v1 `{"frame", "time", "data"}`; v2 an `images` entry with `frame` and `time`."""
    if style == "v1":
        return {"frame": o.index, "time": o.time, "data": o.rows}
    speed = {k: round(v, 3) for k, v in o.speed.items()}
    return {"frame": o.index, "time": o.time, "results": o.rows, "shape": list(o.shape), "speed": speed}


def _video(reader: Reader) -> dict[str, Any]:
    return {**reader.meta.public(), "frames": reader.analysed}


def _summary(
    info: ModelInfo,
    args: PredictArgs,
    style: Style,
    entries: list[dict[str, Any]],
    reader: Reader,
    error: GatewayError | None,
    started: float | None = None,
) -> dict[str, Any]:
    """The whole answer: v1 `{"success", "message", "data": frames, "video"}`; v2 `{"images": frames, "metadata"}`
    with `metadata.video`. A video that broke off gets `"success": false` and the error's message, frames kept."""
    message = error.message if error else f"Inference complete for {len(entries)} frame(s)."
    if style == "v1":
        return {"success": error is None, "message": message, "data": entries, "video": _video(reader)}
    body = responses.images_body(info.name, info.task, args, entries, info.stride, started)
    body["metadata"]["video"] = _video(reader)
    if error is not None:
        body = {"success": False, "message": message, **body}
    return body


def _end_line(
    info: ModelInfo, args: PredictArgs, style: Style, reader: Reader, error: GatewayError | None
) -> dict[str, Any]:
    """The stream's last line: `done`, and whether the video was read whole (`success`) or the error that ended it."""
    line: dict[str, Any] = {"done": True, "success": error is None}
    if error is not None:
        line["status"] = error.status
    line["message"] = error.message if error else f"Inference complete for {reader.analysed} frame(s)."
    if style == "v1":
        line["video"] = _video(reader)
    else:
        line["metadata"] = {
            **responses.images_body(info.name, info.task, args, [], info.stride)["metadata"],
            "imageCount": reader.analysed,
            "video": _video(reader),
        }
    return line


async def _lines(
    first: FrameOutcome | None,
    frames: AsyncIterator[FrameOutcome],
    reader: Reader,
    info: ModelInfo,
    args: PredictArgs,
    style: Style,
) -> AsyncGenerator[bytes, None]:
    error: GatewayError | None = None
    if first is not None:
        yield orjson.dumps(frame_entry(first, style)) + b"\n"
        try:
            async for outcome in frames:
                yield orjson.dumps(frame_entry(outcome, style)) + b"\n"
        except GatewayError as exc:  # the status line is sent: the error is the last line instead
            error = exc
    yield orjson.dumps(_end_line(info, args, style, reader, error)) + b"\n"


class NdjsonStream(StreamingResponse):
    """Newline-delimited JSON; when the stream ends, fails or the client disconnects, the frame generator is closed
    (no more frames are read or inferred) and then everything the request held is released."""

    def __init__(
        self, lines: AsyncGenerator[bytes, None], held: contextlib.AsyncExitStack, headers: dict[str, str]
    ) -> None:
        super().__init__(lines, media_type=NDJSON, headers=headers)
        self._lines = lines
        self._held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._lines.aclose()
                await self._held.aclose()
