"""`Client` and `AsyncClient`: the same calls, over one pooled httpx connection each, with retries.

Usage: `with Client("http://127.0.0.1:8000", "yk_...") as client: client.predict("yolov8n", "bus.jpg")`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Literal, Self, TypeAlias, overload
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

USER_AGENT = "yolo-triton-client/0.1"
BATCH_SIZE = 8  # the server's default limit of `file` parts per batch request
# A batch whose every image failed is answered with the first image's error instead of one entry per image; these
# statuses can be one image's fault (or the images' total size), so such a batch is resent one image at a time.
IMAGE_STATUSES = frozenset({413, 415, 422})
Files: TypeAlias = list[tuple[str, tuple[str, bytes, str]]]


def _v1_fields(
    size: int | None,
    confidence: float | None,
    iou: float | None,
    max_det: int | None,
    classes: Sequence[int] | None,
    agnostic: bool | None,
    normalize: bool | None,
) -> dict[str, str]:
    """The HUB v1 form fields; None leaves the server's default."""
    values: dict[str, object] = {
        "size": size, "confidence": confidence, "iou": iou, "max_det": max_det,
        "agnostic": agnostic, "normalize": normalize,
    }  # fmt: skip
    fields = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items() if v is not None}
    if classes is not None:
        fields["classes"] = ",".join(str(int(c)) for c in classes)
    return fields


def _batch_fields(v1: dict[str, str]) -> dict[str, str]:
    """The batch route's names for the same arguments (imgsz, conf; the extras keep their names)."""
    renamed = {"size": "imgsz", "confidence": "conf"}
    return {renamed.get(k, k): v for k, v in v1.items()}


def _batch_sources(sources: Iterable[Source]) -> list[Source]:
    out = list(sources)
    if any(is_url(s) for s in out):
        raise ValueError("predict_many uploads files; send URLs one at a time with predict(model, url).")
    return out


def _v1_body(fields: dict[str, str], source: Source, upload: Upload | None) -> tuple[dict[str, str], Files | None]:
    """One `image` file part, or the `url` field for the server to fetch."""
    if upload is None:
        return {**fields, "url": str(source)}, None
    return fields, _files([upload], "image")


def _video_request(
    model: str, source: Source, v1: dict[str, str], vid_stride: int | None, stream: bool
) -> tuple[str, dict[str, str], Files]:
    """The newer API's route (it answers each frame with its shape and speed), its fields and the one `file` part."""
    if is_url(source) or hasattr(source, "__array_interface__"):
        raise ValueError("predict_video uploads a video file: pass a path, bytes or a binary file object.")
    fields = _batch_fields(v1)
    if vid_stride is not None:
        fields["vid_stride"] = str(int(vid_stride))
    if stream:
        fields["stream"] = "true"
    return f"/api/models/{quote(model, safe='')}/predict", fields, _files([load(source)], "file")


def _frame_or_end(model: str, line: dict[str, Any], normalized: bool) -> FramePrediction | None:
    """A streamed line as a frame; None for the last line of a video read whole; raises the error that ended it."""
    if not line.get("done"):
        return frame_from_entry(model, line, normalized)
    if not line.get("success"):
        raise api_error(int(line.get("status") or 0), str(line.get("message") or "The video stream failed."), body=line)
    return None


STREAM_CUT = "The video stream ended before its last line (connection closed)."


def _load_all(sources: Sequence[Source]) -> list[Upload]:
    return [load(s) for s in sources]


def _files(uploads: Sequence[Upload], part: str) -> Files:
    return [(part, (u.filename, u.content, u.content_type)) for u in uploads]


class _Base:
    def __init__(
        self, base_url: str, api_key: str, timeout: float, retries: int, max_retry_wait: float, backoff: float
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"x-api-key": api_key, "user-agent": USER_AGENT}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._retry = RetryPolicy(retries, max_retry_wait, backoff)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._base_url!r})"  # never the key


class Client(_Base):
    """Synchronous client. Reuse one instance (it keeps connections open); close it, or use it in `with`."""

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
        super().__init__(base_url, api_key, timeout, retries, max_retry_wait, backoff)
        self._http = httpx.Client(base_url=self._base_url, headers=self._headers, timeout=self._timeout)

    def predict(
        self,
        model: str,
        source: Source,
        *,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> Prediction:
        """Predict one image: a path, bytes, a binary file, a BGR uint8 array, or an http(s) URL the server fetches."""
        fields = _v1_fields(size, confidence, iou, max_det, classes, agnostic, normalize)
        upload = None if is_url(source) else load(source)
        response = self._send("POST", f"/v1/predict/{quote(model, safe='')}", *_v1_body(fields, source, upload))
        return prediction_from_v1(model, response.json(), upload.shape if upload else None, bool(normalize))

    def predict_many(
        self,
        model: str,
        sources: Iterable[Source],
        *,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> list[Prediction | ApiError]:
        """One Prediction, or the ApiError for an image the server refused, per source, in order.

        Sources go `batch_size` at a time to `POST /api/models/{model}/predict` as repeated `file` parts. That route's
        defaults are Ultralytics' `YOLO.predict` ones (iou 0.7, where v1's is 0.45): pass `iou` to pin it."""
        fields = _batch_fields(_v1_fields(size, confidence, iou, max_det, classes, agnostic, normalize))
        items = _batch_sources(sources)
        out: list[Prediction | ApiError] = []
        for start in range(0, len(items), batch_size):
            out += self._batch(model, fields, _load_all(items[start : start + batch_size]), bool(normalize))
        return out

    def _batch(
        self, model: str, fields: dict[str, str], uploads: list[Upload], normalized: bool
    ) -> list[Prediction | ApiError]:
        try:
            response = self._send(
                "POST", f"/api/models/{quote(model, safe='')}/predict", fields, _files(uploads, "file")
            )
        except ApiError as error:
            if error.status not in IMAGE_STATUSES:
                raise
            if len(uploads) == 1:
                return [error]
            return [r for u in uploads for r in self._batch(model, fields, [u], normalized)]
        return predictions_from_batch(model, response.json(), normalized)

    @overload
    def predict_video(
        self,
        model: str,
        source: Source,
        *,
        stream: Literal[False] = False,
        vid_stride: int | None = None,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> VideoPrediction: ...
    @overload
    def predict_video(
        self,
        model: str,
        source: Source,
        *,
        stream: Literal[True],
        vid_stride: int | None = None,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> Iterator[FramePrediction]: ...
    def predict_video(
        self,
        model: str,
        source: Source,
        *,
        stream: bool = False,
        vid_stride: int | None = None,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> VideoPrediction | Iterator[FramePrediction]:
        """Predict every `vid_stride`-th frame of a video file (MP4, WebM, MOV, AVI, MKV): a path, bytes or a binary
        file object. `stream=True` returns an iterator that sends the request when first advanced and gives each
        frame as the server finishes it; the error that ended a video partway is raised after the frames before it.
        Defaults are Ultralytics' `YOLO.predict` ones (the newer API's route: iou 0.7)."""
        v1 = _v1_fields(size, confidence, iou, max_det, classes, agnostic, normalize)
        path, fields, files = _video_request(model, source, v1, vid_stride, stream)
        if not stream:
            return video_from_body(model, self._send("POST", path, fields, files).json(), bool(normalize))
        return self._frames(model, path, fields, files, bool(normalize))

    def _frames(
        self, model: str, path: str, fields: dict[str, str], files: Files, normalized: bool
    ) -> Iterator[FramePrediction]:
        attempt, started = 0, False
        while True:
            try:
                with self._http.stream("POST", path, data=fields, files=files) as response:
                    if response.is_success:
                        for text in response.iter_lines():
                            if text.strip():
                                started = True
                                frame = _frame_or_end(model, json.loads(text), normalized)
                                if frame is None:
                                    return
                                yield frame
                        raise TransportError(STREAM_CUT)
                    response.read()
                    wait = self._retry.after_response(attempt, response)
            except httpx.HTTPError as exc:
                if started:  # frames were given already: sending the video again would repeat them
                    raise TransportError(f"{STREAM_CUT} {type(exc).__name__}: {exc}") from exc
                wait = self._retry.after_exception(attempt, exc)
            time.sleep(wait)
            attempt += 1

    def models(self) -> list[dict[str, Any]]:
        """The models the server has ready, as `GET /v1/models` lists them: id, task, names, default_size, ..."""
        data = self._send("GET", "/v1/models").json().get("data")
        return data if isinstance(data, list) else []

    def _send(
        self, method: str, path: str, data: dict[str, str] | None = None, files: Files | None = None
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, data=data, files=files)
            except httpx.HTTPError as exc:
                wait = self._retry.after_exception(attempt, exc)
            else:
                if response.is_success:
                    return response
                wait = self._retry.after_response(attempt, response)
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client with the same calls as `Client` (awaited). Close it, or use it in `async with`."""

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
        super().__init__(base_url, api_key, timeout, retries, max_retry_wait, backoff)
        self._http = httpx.AsyncClient(base_url=self._base_url, headers=self._headers, timeout=self._timeout)

    async def predict(
        self,
        model: str,
        source: Source,
        *,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> Prediction:
        """As `Client.predict`; reading and encoding the source run in a worker thread."""
        fields = _v1_fields(size, confidence, iou, max_det, classes, agnostic, normalize)
        upload = None if is_url(source) else await anyio.to_thread.run_sync(load, source)
        response = await self._send("POST", f"/v1/predict/{quote(model, safe='')}", *_v1_body(fields, source, upload))
        return prediction_from_v1(model, response.json(), upload.shape if upload else None, bool(normalize))

    async def predict_many(
        self,
        model: str,
        sources: Iterable[Source],
        *,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> list[Prediction | ApiError]:
        """As `Client.predict_many`."""
        fields = _batch_fields(_v1_fields(size, confidence, iou, max_det, classes, agnostic, normalize))
        items = _batch_sources(sources)
        out: list[Prediction | ApiError] = []
        for start in range(0, len(items), batch_size):
            uploads = await anyio.to_thread.run_sync(_load_all, items[start : start + batch_size])
            out += await self._batch(model, fields, uploads, bool(normalize))
        return out

    async def _batch(
        self, model: str, fields: dict[str, str], uploads: list[Upload], normalized: bool
    ) -> list[Prediction | ApiError]:
        try:
            response = await self._send(
                "POST", f"/api/models/{quote(model, safe='')}/predict", fields, _files(uploads, "file")
            )
        except ApiError as error:
            if error.status not in IMAGE_STATUSES:
                raise
            if len(uploads) == 1:
                return [error]
            return [r for u in uploads for r in await self._batch(model, fields, [u], normalized)]
        return predictions_from_batch(model, response.json(), normalized)

    @overload
    async def predict_video(
        self,
        model: str,
        source: Source,
        *,
        stream: Literal[False] = False,
        vid_stride: int | None = None,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> VideoPrediction: ...
    @overload
    async def predict_video(
        self,
        model: str,
        source: Source,
        *,
        stream: Literal[True],
        vid_stride: int | None = None,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> AsyncIterator[FramePrediction]: ...
    async def predict_video(
        self,
        model: str,
        source: Source,
        *,
        stream: bool = False,
        vid_stride: int | None = None,
        size: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[int] | None = None,
        agnostic: bool | None = None,
        normalize: bool | None = None,
    ) -> VideoPrediction | AsyncIterator[FramePrediction]:
        """As `Client.predict_video`; with `stream=True`, `async for frame in await client.predict_video(...)`."""
        v1 = _v1_fields(size, confidence, iou, max_det, classes, agnostic, normalize)
        path, fields, files = await anyio.to_thread.run_sync(_video_request, model, source, v1, vid_stride, stream)
        if not stream:
            return video_from_body(model, (await self._send("POST", path, fields, files)).json(), bool(normalize))
        return self._frames(model, path, fields, files, bool(normalize))

    async def _frames(
        self, model: str, path: str, fields: dict[str, str], files: Files, normalized: bool
    ) -> AsyncIterator[FramePrediction]:
        attempt, started = 0, False
        while True:
            try:
                async with self._http.stream("POST", path, data=fields, files=files) as response:
                    if response.is_success:
                        async for text in response.aiter_lines():
                            if text.strip():
                                started = True
                                frame = _frame_or_end(model, json.loads(text), normalized)
                                if frame is None:
                                    return
                                yield frame
                        raise TransportError(STREAM_CUT)
                    await response.aread()
                    wait = self._retry.after_response(attempt, response)
            except httpx.HTTPError as exc:
                if started:
                    raise TransportError(f"{STREAM_CUT} {type(exc).__name__}: {exc}") from exc
                wait = self._retry.after_exception(attempt, exc)
            await anyio.sleep(wait)
            attempt += 1

    async def models(self) -> list[dict[str, Any]]:
        data = (await self._send("GET", "/v1/models")).json().get("data")
        return data if isinstance(data, list) else []

    async def _send(
        self, method: str, path: str, data: dict[str, str] | None = None, files: Files | None = None
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, data=data, files=files)
            except httpx.HTTPError as exc:
                wait = self._retry.after_exception(attempt, exc)
            else:
                if response.is_success:
                    return response
                wait = self._retry.after_response(attempt, response)
            await anyio.sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
