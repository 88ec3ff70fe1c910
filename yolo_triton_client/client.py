"""`Client` and `AsyncClient`: the same calls, over one pooled httpx connection each, with retries.

Usage: `with Client("http://127.0.0.1:8000", "yk_...") as client: client.predict("yolov8n", "bus.jpg")`.

What a call sends and how its answer is read is written once, as a plan: a generator that yields each request
(`_Call`) and is sent the response (or, refused, has the `ApiError` raised inside it), then returns the result. The
two classes only run plans: `Client` in the calling thread, `AsyncClient` with each step of the plan (reading and
encoding the sources, parsing the answers) in a worker thread and the requests on the event loop.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeAlias, TypedDict, TypeVar, Unpack, overload
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx

from yolo_triton_client.errors import ApiError, TransportError, api_error
from yolo_triton_client.results import (
    FramePrediction,
    Prediction,
    VideoPrediction,
    frame_from_entry,
    prediction_from_v1,
    predictions_from_batch,
    video_from_body,
)
from yolo_triton_client.retry import RetryPolicy
from yolo_triton_client.sources import Source, Upload, is_url, load

if TYPE_CHECKING:
    from yolo_triton_client.models import AsyncModels, Models
    from yolo_triton_client.jobs import AsyncJobs, Jobs

USER_AGENT = "yolo-triton-client/0.1"
BATCH_SIZE = 8  # the server's default limit of `file` parts per batch request
# A batch whose every image failed is answered with the first image's error instead of one entry per image; these
# statuses can be one image's fault (or the images' total size), so such a batch is resent one image at a time.
IMAGE_STATUSES = frozenset({413, 415, 422})
# The Platform's route answers 415 and 422 with 400: a batch's 400 is an image's fault when the gateway names the image
IMAGE_PREFIX = "Image 1 of "
STREAM_CUT = "The video stream ended before its last line (connection closed)."
Files: TypeAlias = list[tuple[str, tuple[str, bytes, str]]]
T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class Options(TypedDict, total=False):
    """The prediction arguments every call takes, as keywords; left out (or None), the server's default applies."""

    size: int | None
    confidence: float | None
    iou: float | None
    max_det: int | None
    classes: Sequence[int] | None
    agnostic: bool | None
    normalize: bool | None


class VideoOptions(Options, total=False):
    """A video's arguments: those of an image, and every `vid_stride`-th frame (the server's default: every one)."""

    vid_stride: int | None


IMAGE_OPTIONS = frozenset(Options.__annotations__)
VIDEO_OPTIONS = frozenset(VideoOptions.__annotations__)


@dataclass(frozen=True)
class _Call:
    """One HTTP request, as both clients send it."""

    method: str
    path: str
    data: dict[str, str] | None = None
    files: Files | None = None
    content: bytes | None = None  # a raw body (JSON), sent as application/json
    stream: Any = None  # a body sent as it is read (`_Checkpoint` of models.py: .headers, .chunks(), .achunks())
    resend: bool = True  # False: never sent again once it may have reached the server (an upload)

    def body(self, asynchronous: bool) -> dict[str, Any]:
        """httpx's keyword arguments for the body."""
        if self.stream is not None:
            return {"content": self.stream.achunks() if asynchronous else self.stream.chunks(), **self._headers}
        if self.content is not None:
            return {"content": self.content, "headers": {"content-type": "application/json"}}
        return {"data": self.data, "files": self.files}

    @property
    def _headers(self) -> dict[str, Any]:
        return {"headers": self.stream.headers}


@dataclass(frozen=True)
class _Done(Generic[T]):
    value: T


Plan: TypeAlias = Generator[_Call, httpx.Response, T]


def _step(plan: Plan[T], outcome: httpx.Response | ApiError | None) -> _Call | _Done[T]:
    """Advance `plan` with the outcome of its last request (None: its start): its next request, or its result."""
    try:
        if outcome is None:
            return next(plan)
        if isinstance(outcome, ApiError):
            return plan.throw(outcome)
        return plan.send(outcome)
    except StopIteration as done:
        return _Done(done.value)


def _fields(
    options: Options | VideoOptions, allowed: frozenset[str], route: Literal["hub", "platform"]
) -> dict[str, str]:
    """The form fields of `options` (left out or None: the server's default), named as `route` names them (the newer
    API's route says imgsz and conf); TypeError for a name not `allowed`, as for any unknown keyword."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"got an unexpected keyword argument {unknown[0]!r}")
    renamed = {"size": "imgsz", "confidence": "conf"} if route == "platform" else {}
    fields = {}
    for name, value in options.items():
        if value is not None and name != "classes":
            fields[renamed.get(name, name)] = str(value).lower() if isinstance(value, bool) else str(value)
    if (classes := options.get("classes")) is not None:
        fields["classes"] = ",".join(str(int(c)) for c in classes)
    return fields


def _files(uploads: Sequence[Upload], part: str) -> Files:
    return [(part, (u.filename, u.content, u.content_type)) for u in uploads]


def _platform_path(model: str) -> str:
    return f"/api/models/{quote(model, safe='')}/predict"


def _predict(model: str, source: Source, options: Options) -> Plan[Prediction]:
    """One image: an `image` file part, or the `url` field for the server to fetch."""
    fields = _fields(options, IMAGE_OPTIONS, "hub")
    upload = None if is_url(source) else load(source)
    data, files = ({**fields, "url": str(source)}, None) if upload is None else (fields, _files([upload], "image"))
    response = yield _Call("POST", f"/v1/predict/{quote(model, safe='')}", data, files)
    return prediction_from_v1(model, response.json(), upload.shape if upload else None, bool(options.get("normalize")))


def _predict_many(
    model: str, sources: Iterable[Source], batch_size: int, options: Options
) -> Plan[list[Prediction | ApiError]]:
    """`batch_size` images per request to the newer API's route, as repeated `file` parts."""
    fields = _fields(options, IMAGE_OPTIONS, "platform")
    items = list(sources)
    if any(is_url(s) for s in items):
        raise ValueError("predict_many uploads files; send URLs one at a time with predict(model, url).")
    out: list[Prediction | ApiError] = []
    for start in range(0, len(items), batch_size):
        uploads = [load(s) for s in items[start : start + batch_size]]
        out += yield from _batch(model, fields, uploads, bool(options.get("normalize")))
    return out


def _batch(
    model: str, fields: dict[str, str], uploads: list[Upload], normalized: bool, alone: bool = False
) -> Plan[list[Prediction | ApiError]]:
    """A Prediction or the ApiError per upload; a batch refused for what may be one image's fault is sent again one
    image at a time (`alone`: such a re-send, whose fields the batch showed to be good: any 400 is the image's)."""
    try:
        response = yield _Call("POST", _platform_path(model), fields, _files(uploads, "file"))
    except ApiError as error:
        named = error.status == 400 and (alone or error.message.startswith(IMAGE_PREFIX))
        if error.status not in IMAGE_STATUSES and not named:
            raise
        if len(uploads) == 1:
            return [error]
        out: list[Prediction | ApiError] = []
        for upload in uploads:
            out += yield from _batch(model, fields, [upload], normalized, alone=True)
        return out
    return predictions_from_batch(model, response.json(), normalized)


def _video_call(model: str, source: Source, stream: bool, options: VideoOptions) -> _Call:
    """The newer API's route (it answers each frame with its shape and speed), its fields and the one `file` part."""
    if is_url(source) or hasattr(source, "__array_interface__"):
        raise ValueError("predict_video uploads a video file: pass a path, bytes or a binary file object.")
    fields = _fields(options, VIDEO_OPTIONS, "platform")
    if (vid_stride := options.get("vid_stride")) is not None:
        fields["vid_stride"] = str(int(vid_stride))
    if stream:
        fields["stream"] = "true"
    fields["details"] = "true"  # each frame's index and time, and metadata.video: the gateway's own fields
    return _Call("POST", _platform_path(model), fields, _files([load(source)], "file"))


def _predict_video(model: str, source: Source, options: VideoOptions) -> Plan[VideoPrediction]:
    response = yield _video_call(model, source, False, options)
    return video_from_body(model, response.json(), bool(options.get("normalize")))


def _models() -> Plan[list[dict[str, Any]]]:
    response = yield _Call("GET", "/v1/models")
    data = response.json().get("data")
    return data if isinstance(data, list) else []


class _Frames:
    """One streamed video's lines, whichever client reads them: each line's frame, the last line, and whether
    sending the video again is still safe."""

    def __init__(self, model: str, normalized: bool) -> None:
        self.model, self.normalized = model, normalized
        self.started = False  # a line arrived: sending the video again would repeat its frames
        self.ended = False  # the last line arrived, the video read whole

    def frame(self, text: str) -> FramePrediction | None:
        """The frame a line carries; None for a blank line or the last one (`ended`); raises the error that ended
        the video."""
        if not text.strip():
            return None
        self.started = True
        line = json.loads(text)
        if not line.get("done"):
            return frame_from_entry(self.model, line, self.normalized)
        if not line.get("success"):
            raise api_error(
                int(line.get("status") or 0), str(line.get("message") or "The video stream failed."), body=line
            )
        self.ended = True
        return None

    def broken(self, exc: httpx.HTTPError) -> httpx.HTTPError:
        """A transport error to retry, unless frames were given already (TransportError)."""
        if self.started:
            raise TransportError(f"{STREAM_CUT} {type(exc).__name__}: {exc}") from exc
        return exc


class _Base(Generic[H]):
    """What both clients hold: the server's address, the key's headers, the retry policy, one pooled connection."""

    _connection: type[H]

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        backoff: float = 0.5,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        headers = {"x-api-key": api_key, "user-agent": USER_AGENT}
        self._retry = RetryPolicy(retries, max_retry_wait, backoff)
        self._http: H = self._connection(
            base_url=self._base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._base_url!r})"  # never the key


class Client(_Base[httpx.Client]):
    """Synchronous client. Reuse one instance (it keeps connections open); close it, or use it in `with`."""

    _connection = httpx.Client

    def predict(self, model: str, source: Source, **options: Unpack[Options]) -> Prediction:
        """Predict one image: a path, bytes, a binary file, a BGR uint8 array, or an http(s) URL the server fetches."""
        return self._run(_predict(model, source, options))

    def predict_many(
        self, model: str, sources: Iterable[Source], *, batch_size: int = BATCH_SIZE, **options: Unpack[Options]
    ) -> list[Prediction | ApiError]:
        """One Prediction, or the ApiError for an image the server refused, per source, in order.

        Sources go `batch_size` at a time to `POST /api/models/{model}/predict` as repeated `file` parts. That route's
        defaults are Ultralytics' `YOLO.predict` ones (iou 0.7, where v1's is 0.45): pass `iou` to pin it."""
        return self._run(_predict_many(model, sources, batch_size, options))

    @overload
    def predict_video(
        self, model: str, source: Source, *, stream: Literal[False] = False, **options: Unpack[VideoOptions]
    ) -> VideoPrediction: ...
    @overload
    def predict_video(
        self, model: str, source: Source, *, stream: Literal[True], **options: Unpack[VideoOptions]
    ) -> Iterator[FramePrediction]: ...
    def predict_video(
        self, model: str, source: Source, *, stream: bool = False, **options: Unpack[VideoOptions]
    ) -> VideoPrediction | Iterator[FramePrediction]:
        """Predict every `vid_stride`-th frame of a video file (MP4, WebM, MOV, AVI, MKV): a path, bytes or a binary
        file object. `stream=True` returns an iterator that sends the request when first advanced and gives each
        frame as the server finishes it; the error that ended a video partway is raised after the frames before it.
        Defaults are Ultralytics' `YOLO.predict` ones (the newer API's route: iou 0.7)."""
        if not stream:
            return self._run(_predict_video(model, source, options))
        call = _video_call(model, source, True, options)
        return self._frames(call, _Frames(model, bool(options.get("normalize"))))

    @functools.cached_property
    def models(self) -> Models:
        """`client.models()`: the models the server has ready, as `GET /v1/models` lists them (id, task, names,
        default_size, ...); `client.models.upload(...)` etc.: your own models (yolo_triton_client/models.py)."""
        from yolo_triton_client.models import Models

        return Models(self)

    @functools.cached_property
    def jobs(self) -> Jobs:
        """`client.jobs()`: the key's video jobs; `client.jobs.submit(...)`, `.wait(id, progress=...)`, `.result(id)`,
        `.cancel(id)`: long videos with no open connection (yolo_triton_client/jobs.py)."""
        from yolo_triton_client.jobs import Jobs

        return Jobs(self)

    def _run(self, plan: Plan[T]) -> T:
        outcome: httpx.Response | ApiError | None = None
        while not isinstance(step := _step(plan, outcome), _Done):
            outcome = self._send(step)
        return step.value

    def _send(self, call: _Call) -> httpx.Response | ApiError:
        """The successful response, or the ApiError of the last refusal, after the retries the policy allows."""
        retrying = self._retry.start(call.resend)
        while isinstance(outcome := retrying.after(self._try(call)), float):
            time.sleep(outcome)
        return outcome

    def _try(self, call: _Call) -> httpx.Response | httpx.HTTPError:
        try:
            return self._http.request(call.method, call.path, **call.body(asynchronous=False))
        except httpx.HTTPError as exc:
            return exc

    def _frames(self, call: _Call, frames: _Frames) -> Iterator[FramePrediction]:
        retrying = self._retry.start()
        while True:
            try:
                with self._http.stream(call.method, call.path, data=call.data, files=call.files) as response:
                    if response.is_success:
                        for text in response.iter_lines():
                            if (frame := frames.frame(text)) is not None:
                                yield frame
                            elif frames.ended:
                                return
                        raise TransportError(STREAM_CUT)
                    response.read()
                    wait = retrying.wait(response)
            except httpx.HTTPError as exc:
                wait = retrying.wait(frames.broken(exc))
            time.sleep(wait)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base[httpx.AsyncClient]):
    """Asynchronous client with the same calls as `Client` (awaited). Close it, or use it in `async with`."""

    _connection = httpx.AsyncClient

    async def predict(self, model: str, source: Source, **options: Unpack[Options]) -> Prediction:
        """As `Client.predict`; reading and encoding the source run in a worker thread."""
        return await self._run(_predict(model, source, options))

    async def predict_many(
        self, model: str, sources: Iterable[Source], *, batch_size: int = BATCH_SIZE, **options: Unpack[Options]
    ) -> list[Prediction | ApiError]:
        """As `Client.predict_many`."""
        return await self._run(_predict_many(model, sources, batch_size, options))

    @overload
    async def predict_video(
        self, model: str, source: Source, *, stream: Literal[False] = False, **options: Unpack[VideoOptions]
    ) -> VideoPrediction: ...
    @overload
    async def predict_video(
        self, model: str, source: Source, *, stream: Literal[True], **options: Unpack[VideoOptions]
    ) -> AsyncIterator[FramePrediction]: ...
    async def predict_video(
        self, model: str, source: Source, *, stream: bool = False, **options: Unpack[VideoOptions]
    ) -> VideoPrediction | AsyncIterator[FramePrediction]:
        """As `Client.predict_video`; with `stream=True`, `async for frame in await client.predict_video(...)`."""
        if not stream:
            return await self._run(_predict_video(model, source, options))
        call = await anyio.to_thread.run_sync(_video_call, model, source, True, options)
        return self._frames(call, _Frames(model, bool(options.get("normalize"))))

    @functools.cached_property
    def models(self) -> AsyncModels:
        """As `Client.models`: `await client.models()`, `await client.models.upload(...)`."""
        from yolo_triton_client.models import AsyncModels

        return AsyncModels(self)

    @functools.cached_property
    def jobs(self) -> AsyncJobs:
        """As `Client.jobs`: `await client.jobs.submit(...)`, `await client.jobs.wait(id)`."""
        from yolo_triton_client.jobs import AsyncJobs

        return AsyncJobs(self)

    async def _run(self, plan: Plan[T]) -> T:
        outcome: httpx.Response | ApiError | None = None
        while not isinstance(step := await anyio.to_thread.run_sync(_step, plan, outcome), _Done):
            outcome = await self._send(step)
        return step.value

    async def _send(self, call: _Call) -> httpx.Response | ApiError:
        retrying = self._retry.start(call.resend)
        while isinstance(outcome := retrying.after(await self._try(call)), float):
            await anyio.sleep(outcome)
        return outcome

    async def _try(self, call: _Call) -> httpx.Response | httpx.HTTPError:
        try:
            return await self._http.request(call.method, call.path, **call.body(asynchronous=True))
        except httpx.HTTPError as exc:
            return exc

    async def _frames(self, call: _Call, frames: _Frames) -> AsyncIterator[FramePrediction]:
        retrying = self._retry.start()
        while True:
            try:
                async with self._http.stream(call.method, call.path, data=call.data, files=call.files) as response:
                    if response.is_success:
                        async for text in response.aiter_lines():
                            if (frame := frames.frame(text)) is not None:
                                yield frame
                            elif frames.ended:
                                return
                        raise TransportError(STREAM_CUT)
                    await response.aread()
                    wait = retrying.wait(response)
            except httpx.HTTPError as exc:
                wait = retrying.wait(frames.broken(exc))
            await anyio.sleep(wait)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
