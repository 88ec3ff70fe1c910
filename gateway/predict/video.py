"""The asynchronous flow of a video request: spool the upload to a temporary file, open it, then read, infer and
post-process frames a chunk at a time (up to the model's max_batch_size frames of equal shape per Triton request),
answering with one JSON body or, with `stream=true`, one NDJSON line per frame as soon as it is done.

Everything the request holds (temporary file, capture, in-flight slot, memory reservations) lives in one
AsyncExitStack, which the answer takes with it and closes when it is sent, fails or the client leaves. Both answers
do their work inside the response, watching the connection: a client that leaves stops the decoding within a frame.
Videos are read in their own worker threads (GATEWAY_VIDEO_WORKERS), so they queue behind each other, not in front
of images, and within a time budget (GATEWAY_VIDEO_TIMEOUT_S, or GATEWAY_VIDEO_STREAM_TIMEOUT_S when streamed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
import numpy as np
import orjson
from numpy.typing import NDArray
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.arguments import PredictArgs
from gateway.budget import Hold
from gateway.dialects import Call, Dialect
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, UnprocessableImage, error_response, json_response
from gateway.modelcard import ModelInfo
from gateway.predict import responses, tracked
from gateway.predict.responses import FrameOutcome
from gateway.services import Prediction, Services
from gateway.settings import Settings
from gateway.vision import pipeline, videofile, videoreader
from gateway.vision.videofile import Control, Scan
from gateway.vision.videoreader import Frame, Reader

NDJSON = "application/x-ndjson"
T = TypeVar("T")


async def container_of(uploads: list[UploadFile]) -> str | None:
    """The video container among the file parts (sniffed from the first bytes, not the name), or None when there
    is no video. A video must be the only file part of its request."""
    found = None
    for upload in uploads:
        head = await upload.read(videofile.SNIFF_BYTES)
        await upload.seek(0)
        kind = videofile.sniff(head)
        if kind is not None and len(uploads) > 1:
            raise BadRequest("A video must be the only file in its request: send the video alone, one per request.")
        found = found or kind
    return found


async def respond(
    prediction: Prediction, info: ModelInfo, upload: UploadFile, container: str, fields: dict[str, str]
) -> Response:
    """The answer to a request whose only file part is a video (see the module docstring)."""
    services, stack, dialect, started = prediction.services, prediction.held, prediction.dialect, prediction.started
    settings = services.settings
    args = dialect.parse(fields, info.imgsz)
    call = Call(info, args, started, fields.get("model", "").strip())
    if args.url or args.source:
        raise BadRequest("Send one of: a video file, 'url' or 'source' (a URL or base64 image), not several.")
    if args.format != "json":
        raise BadRequest("An annotated image (format=image/png) is made for one image; a video is answered in JSON.")
    tracked.check(info, args)
    if args.sequence:
        raise BadRequest(
            "'sequence' continues tracks across image requests; a video is tracked within itself: send it with "
            "track=true and without 'sequence'."
        )
    size = upload.size if upload.size is not None else settings.max_video_bytes + 1
    if size > settings.max_video_bytes:
        raise video_too_large(settings.max_video_bytes)
    prediction.record.video = container
    # the time budget starts once the upload is here (the body's own deadline covers the upload)
    seconds = settings.video_stream_timeout_s if args.stream else settings.video_timeout_s
    setting = "GATEWAY_VIDEO_STREAM_TIMEOUT_S" if args.stream else "GATEWAY_VIDEO_TIMEOUT_S"
    control = Control(time.monotonic() + seconds, seconds, setting)
    stack.callback(setattr, control, "cancelled", True)  # whatever ends the request stops the thread's work
    pool = services.video_workers or services.workers
    path = await pool.run(videofile.spool, upload.file, container)
    stack.callback(videofile.remove, path)
    await upload.close()  # the form's copy (in memory or in TMPDIR) is not needed once spooled
    reader, found = await open_reader(services, path, container, args, control, stack, prediction.entry.id)
    tracker = tracked.Tracker.start(info, args) if args.track else None
    frames = analysed_frames(
        services, info, reader, found, args, prediction.charge_frames, prediction.entry.id, tracker
    )
    stack.push_async_callback(frames.aclose)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    if args.stream:
        return NdjsonStream(frames, reader, dialect, call, control, stack.pop_all(), headers)

    async def answer() -> Response:
        outcomes: list[FrameOutcome] = []
        error: GatewayError | None = None
        try:
            async for outcome in frames:
                outcomes.append(outcome)
        except (UnprocessableImage, PayloadTooLarge) as exc:  # broken partway or a limit: with what was read
            error = exc
        prediction.record.frames = len(outcomes)
        body = responses.video_body(dialect, call, outcomes, reader, error)
        if error is not None:
            return json_response(body, dialect.status(error))
        timings = {"total": (time.perf_counter() - started) * 1000}
        headers = {"Server-Timing": responses.server_timing(timings)}
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    return WholeAnswer(answer, control, stack.pop_all())


def video_too_large(limit: int) -> GatewayError:
    return PayloadTooLarge(
        f"The video is larger than the {limit // 2**20} MiB video upload limit (GATEWAY_MAX_VIDEO_BYTES). Trim it, "
        "lower its resolution or bitrate, or send it in parts."
    )


async def open_reader(
    services: Services,
    path: str,
    container: str,
    args: PredictArgs,
    control: Control,
    stack: contextlib.AsyncExitStack,
    key: str,
    limits: Settings | None = None,
    resume: int = 0,
) -> tuple[Reader, Scan]:
    """The video at `path` opened for reading (its capture and the decoder's memory, reserved for `key`, released by
    `stack`), and what its scan found; `limits`: the settings its limits come from (the service's by default);
    `resume`: frames to analyse that a job's earlier run analysed (decoded, not analysed again: `Reader.resume`)."""
    settings = limits or services.settings
    pool = services.video_workers or services.workers
    cap, meta, found = await pool.run(videofile.open_video, path, container, args.vid_stride, settings, control)
    stack.callback(cap.release)
    decoder = Hold(services.budget, key)  # the decoder's frames, held from the first frame to the last
    stack.callback(decoder.release)
    await decoder.reserve(found.decoder_bytes(settings.max_pixels))
    reader = Reader(
        cap, meta, control, seek=found.seekable and args.vid_stride >= videoreader.SEEK_STRIDE, resume=resume
    )
    return reader, found


def _chunk_bytes(found: Scan, info: ModelInfo, size: int, count: int, max_pixels: int, keep: bool = False) -> int:
    """Memory one chunk holds at its peak besides the decoder's frames (`Scan.decoder_bytes`): the decoded frame in
    BGR and its copy, and `count` model inputs (and, `keep`, the `count` decoded frames BoT-SORT needs). The largest
    frame any packet declares, not the container's size."""
    pixels = found.largest.pixels or max_pixels
    side = size + info.stride  # the letterboxed input is at most size², rounded up to the stride
    item = 4 if info.input_format == "float32_nchw_rgb" else 1
    return pixels * 3 * 2 + count * side * side * 3 * item + (count * pixels * 3 if keep else 0)


async def analysed_frames(
    services: Services,
    info: ModelInfo,
    reader: Reader,
    found: Scan,
    args: PredictArgs,
    charge: Callable[[int], Awaitable[None]],
    key: str,
    tracker: tracked.Tracker | None = None,
    limits: Settings | None = None,
) -> AsyncGenerator[FrameOutcome, None]:
    """Each analysed frame's outcome in order (its memory reserved for `key`; tracked by `tracker`, frame after
    frame, when given); raises at the end when a limit stopped reading (PayloadTooLarge) or the video broke off
    (UnprocessableImage). `charge(n)` takes n more tokens (the first frame is paid for by the request's own);
    `limits`: the settings the frame limits come from (the service's by default: a job's are larger)."""
    settings = limits or services.settings
    pool = services.video_workers or services.workers
    rect = settings.letterbox == "rect"
    batch = max(info.max_batch_size, 1)
    paid = 1  # the request's own token (taken by the rate limiter's check) pays for the first frame
    keep = tracked.needs_frames(args)  # BoT-SORT's camera motion reads each frame's pixels
    delivered = reader.resume  # a resumed job's earlier frames are in its result already
    while not reader.ended:
        hold = Hold(services.budget, key)
        outcomes: list[FrameOutcome] = []
        try:
            await hold.reserve(_chunk_bytes(found, info, args.size, batch, settings.max_pixels, keep))
            chunk = await pool.run(videoreader.read_chunk, reader, batch, info, args.size, rect, settings, keep)
            # each analysed frame costs one token, like an image; frames decoded only to be skipped, one per ten
            owed = reader.analysed + reader.skipped // videoreader.SKIPPED_PER_TOKEN
            await charge(owed - paid)
            paid = max(paid, owed)
            for group in _same_shape(chunk):
                if reader.control.expired():  # checked between batches too: inference is most of a frame's time
                    reader.out_of_time = reader.ended = True
                    break
                t0 = time.perf_counter()
                async with services.triton.infer(info, [f.item.tensor for f in group]) as result:
                    per_frame = (time.perf_counter() - t0) * 1000 / len(group)
                    outcomes += await pool.run(_finish, info, result, group, args, per_frame, tracker)
        finally:
            hold.release()
        delivered += len(outcomes)
        for outcome in outcomes:
            yield outcome
    if reader.out_of_time:
        reader.analysed = delivered  # frames read but not inferred when the time ran out are not in the answer
        raise reader.control.time_limit(delivered, reader.decoded)
    error = reader.stopped or videoreader.broken(reader)
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
    info: ModelInfo,
    result: dict[str, NDArray[np.float32]],
    group: list[Frame],
    args: PredictArgs,
    infer_ms: float,
    tracker: tracked.Tracker | None = None,
) -> list[FrameOutcome]:
    out = []
    for k, frame in enumerate(group):
        t0 = time.perf_counter()
        box = frame.item.box
        then = tracker.then(box.orig_shape, frame.item.image) if tracker else None
        rows = pipeline.finish(info, {name: value[k] for name, value in result.items()}, box, args, then)
        speed = {
            "preprocess": frame.prepare_ms,
            "inference": infer_ms,
            "postprocess": (time.perf_counter() - t0) * 1000,
        }
        out.append(FrameOutcome(frame.index, frame.time, rows, frame.item.box.orig_shape, speed))
    return out


async def _lines(
    first: FrameOutcome | None,
    frames: AsyncIterator[FrameOutcome],
    reader: Reader,
    dialect: Dialect,
    call: Call,
) -> AsyncGenerator[bytes, None]:
    error: GatewayError | None = None
    if first is not None:
        yield orjson.dumps(dialect.frame(call, first)) + b"\n"
        try:
            async for outcome in frames:
                yield orjson.dumps(dialect.frame(call, outcome)) + b"\n"
        except GatewayError as exc:  # the status line is sent: the error is the last line instead
            error = exc
    end = dialect.end_line(call, responses.video_meta(reader), reader.analysed, error)
    yield orjson.dumps(end) + b"\n"


async def _watching(receive: Receive, control: Control, work: Callable[[], Awaitable[T]]) -> T:
    """`work()`, while the connection is watched: a client that disconnects sets `control.cancelled`, and the work
    ends early, within a frame or a Triton batch (the caller then answers `_gone()`). Starlette does not cancel a
    handler whose client left; after the body, the next ASGI message is the disconnect. Cooperative rather than a
    task cancellation: the gRPC client re-raises a cancellation as one of its own, which cancel scopes then take
    for someone else's (and the request would end in a 500)."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        control.cancelled = True

    watcher = asyncio.ensure_future(watch())
    try:
        return await work()
    finally:
        watcher.cancel()


class WholeAnswer(Response):
    """The JSON answer to a video, made inside the response, where the connection can be watched (`_watching`).
    Errors before the answer is sent keep their own status; a client that left gets `_gone()`."""

    def __init__(self, make: Callable[[], Awaitable[Response]], control: Control, held: contextlib.AsyncExitStack):
        super().__init__(media_type="application/json")
        self._make = make
        self._control = control
        self._held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await _watching(receive, self._control, self._make)
            await (_gone() if self._control.cancelled else response)(scope, receive, send)
        finally:
            self._control.cancelled = True
            with anyio.CancelScope(shield=True):
                await self._held.aclose()


class NdjsonStream(StreamingResponse):
    """Newline-delimited JSON, one line per frame. The first frame is awaited before the status line (errors before
    it keep their status); when the stream ends, fails or the client disconnects, the frame generator is closed (no
    more frames are read or inferred) and then everything the request held is released."""

    def __init__(
        self,
        frames: AsyncGenerator[FrameOutcome, None],
        reader: Reader,
        dialect: Dialect,
        call: Call,
        control: Control,
        held: contextlib.AsyncExitStack,
        headers: dict[str, str],
    ) -> None:
        super().__init__(_nothing(), media_type=NDJSON, headers=headers)
        self._frames = frames
        self._lines: AsyncGenerator[bytes, None] | None = None
        self._reader, self._dialect, self._call = reader, dialect, call
        self._control = control
        self._held = held

    async def _first(self) -> FrameOutcome | None:
        try:
            return await self._frames.__anext__()
        except StopAsyncIteration:
            return None

    async def _send_lines(self, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:  # the client left while a line was sent (ASGI 2.4 servers raise)
            self._control.cancelled = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = await _watching(receive, self._control, self._first)
            if self._control.cancelled:
                await _gone()(scope, receive, send)
                return
            self._lines = _lines(first, self._frames, self._reader, self._dialect, self._call)
            self.body_iterator = self._lines
            await _watching(receive, self._control, lambda: self._send_lines(send))
        finally:
            self._control.cancelled = True
            with anyio.CancelScope(shield=True):
                if self._lines is not None:
                    await self._lines.aclose()
                await self._held.aclose()


def _gone() -> Response:
    """What a request whose client left is answered, for the access log and the metrics (nginx's 499): the server
    drops messages to a closed connection."""
    return error_response(499, "The client closed the connection before the answer was ready.")


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield b""
