"""`client.jobs`: long videos as jobs (`/v1/jobs`): submit, get, wait (with progress), result, cancel, list.

A job needs no open connection: `submit` uploads the video (or gives its http(s) URL, which the server downloads)
and returns at once (`202`, state `queued`); the server analyses it, and `wait` polls `GET /v1/jobs/{id}` until it
is done, calling `progress` with each change. The result
is the v1 video route's streamed answer: one dict per analysed frame (`{"frame", "time", "data"}`, rows as the v1
route writes them), then the end line (`done`, `success`, `message`, `video`). As everywhere in this package, each
call is written once as a plan (client.py); `Jobs` runs the plans in the calling thread, `AsyncJobs` on the loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack
from urllib.parse import quote

import anyio

from yolo_triton_client.client import VIDEO_OPTIONS, Plan, VideoOptions, _Call, _fields, _files
from yolo_triton_client.errors import ApiError
from yolo_triton_client.sources import Source, is_url, load

if TYPE_CHECKING:
    from yolo_triton_client.client import AsyncClient, Client

POLL_S = 1.0  # how often `wait` asks for the job's state
WAIT_S = 3600.0  # how long `wait` waits by default
FINISHED = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class Job:
    """A job as `GET /v1/jobs/{id}` shows it. frames_total: None when the container does not say; percent: None
    then too; fps: frames analysed per second so far."""

    id: str
    state: str  # queued, running, done, failed, cancelled
    frames_done: int
    frames_total: int | None
    percent: float | None
    fps: float
    error: str | None
    raw: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobFailed(ApiError):
    """`wait` on a job that failed or was cancelled; `job` says why (its `error`)."""

    def __init__(self, job: Job) -> None:
        super().__init__(int(job.raw.get("error_status") or 500), f"Job {job.id} {job.state}: {job.error or ''}")
        self.job = job


def job_from(data: dict[str, Any]) -> Job:
    progress = data.get("progress") or {}
    return Job(str(data["id"]), str(data["state"]), int(progress.get("frames_done") or 0),
               progress.get("frames_total"), progress.get("percent"), float(progress.get("fps") or 0),
               data.get("error"), data)  # fmt: skip


def _path(id: str, tail: str = "") -> str:
    return f"/v1/jobs/{quote(id, safe='')}{tail}"


def _submit(model: str, source: Source, fields: dict[str, str]) -> Plan[Job]:
    """The video as a `file` part, or an http(s) URL as the `url` field (the server downloads it in the job)."""
    fields = {"model": model, **fields}
    if is_url(source):
        call = _Call("POST", "/v1/jobs", {**fields, "url": str(source)}, resend=False)
    else:
        call = _Call("POST", "/v1/jobs", fields, _files([load(source)], "file"), resend=False)
    response = yield call
    return job_from(response.json()["data"])


def _get(id: str) -> Plan[Job]:
    response = yield _Call("GET", _path(id))
    return job_from(response.json()["data"])


def _list() -> Plan[list[Job]]:
    response = yield _Call("GET", "/v1/jobs")
    return [job_from(item) for item in response.json().get("data") or []]


def _result(id: str) -> Plan[list[dict[str, Any]]]:
    response = yield _Call("GET", _path(id, "/result"))
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _cancel(id: str) -> Plan[Job]:
    response = yield _Call("DELETE", _path(id))
    return job_from(response.json()["data"])


def _form(options: VideoOptions, webhook: str | None, track: bool | None, tracker: str | None) -> dict[str, str]:
    """The form fields beside the video: the v1 route's names (size, confidence; its defaults, iou 0.45)."""
    fields = _fields(options, VIDEO_OPTIONS, "hub")
    extra = {"webhook": webhook, "track": None if track is None else str(track).lower(), "tracker": tracker}
    return fields | {name: value for name, value in extra.items() if value is not None}


@dataclass
class _Waiting:
    """`wait`: when the job is finished, and what to tell `progress` meanwhile (both clients)."""

    timeout_s: float
    progress: Callable[[Job], None] | None
    started: float = 0.0
    said: tuple[str, int] | None = None

    def done(self, job: Job) -> bool:
        """True once done; JobFailed when it failed or was cancelled, TimeoutError past the time."""
        if self.progress is not None and (job.state, job.frames_done) != self.said:
            self.said = (job.state, job.frames_done)
            self.progress(job)
        if job.state == "done":
            return True
        if job.finished:
            raise JobFailed(job)
        if time.monotonic() - self.started > self.timeout_s:
            raise TimeoutError(f"Job {job.id} is {job.state} after {self.timeout_s:g} s")
        return False


class Jobs:
    """`client.jobs` (see the module docstring); calling it lists the key's jobs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __call__(self) -> list[Job]:
        return self._client._run(_list())

    def submit(
        self,
        model: str,
        source: Source,
        *,
        webhook: str | None = None,
        track: bool | None = None,
        tracker: str | None = None,
        **options: Unpack[VideoOptions],
    ) -> Job:
        """Queue a video (a path, bytes, a binary file object, or an http(s) URL the server downloads) for `model`;
        returns at once (state `queued`)."""
        return self._client._run(_submit(model, source, _form(options, webhook, track, tracker)))

    def get(self, id: str) -> Job:
        return self._client._run(_get(id))

    def wait(self, id: str, *, progress: Callable[[Job], None] | None = None, timeout: float = WAIT_S) -> Job:
        """The job once done (`progress(job)` on every change meanwhile); JobFailed when it failed or was
        cancelled."""
        waiting = _Waiting(timeout, progress, time.monotonic())
        while not waiting.done(job := self.get(id)):
            time.sleep(POLL_S)
        return job

    def result(self, id: str) -> list[dict[str, Any]]:
        """A finished job's result: one dict per analysed frame, then the end line."""
        return self._client._run(_result(id))

    def cancel(self, id: str) -> Job:
        """Cancel a queued or running job (or delete a finished one: its state is then `deleted`)."""
        return self._client._run(_cancel(id))


class AsyncJobs:
    """`AsyncClient.jobs`: the calls of `Jobs`, awaited."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def __call__(self) -> list[Job]:
        return await self._client._run(_list())

    async def submit(
        self,
        model: str,
        source: Source,
        *,
        webhook: str | None = None,
        track: bool | None = None,
        tracker: str | None = None,
        **options: Unpack[VideoOptions],
    ) -> Job:
        fields = _form(options, webhook, track, tracker)
        return await self._client._run(_submit(model, source, fields))

    async def get(self, id: str) -> Job:
        return await self._client._run(_get(id))

    async def wait(self, id: str, *, progress: Callable[[Job], None] | None = None, timeout: float = WAIT_S) -> Job:
        waiting = _Waiting(timeout, progress, time.monotonic())
        while not waiting.done(job := await self.get(id)):
            await anyio.sleep(POLL_S)
        return job

    async def result(self, id: str) -> list[dict[str, Any]]:
        return await self._client._run(_result(id))

    async def cancel(self, id: str) -> Job:
        return await self._client._run(_cancel(id))
