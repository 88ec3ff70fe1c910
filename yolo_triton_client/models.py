"""`client.models`: your own models through the models API (an admin key): upload, replace, get, roll back, delete.

As everywhere in this package, what a call sends and how its answer is read is written once, as a plan
(client.py): `Models` runs the plans in the calling thread, `AsyncModels` on the event loop. A checkpoint is
streamed from its file as a multipart body (`_Checkpoint`: never read whole into memory), reporting the bytes sent;
with `wait=True` the call then polls `GET /v1/models/{id}` (`_Waiting` decides when it is done, and what to report).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as _replace  # `replace` is also a method of Models
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import anyio.to_thread

from yolo_triton_client.client import Plan, _Call, _models
from yolo_triton_client.errors import ApiError, InvalidRequest

if TYPE_CHECKING:
    from yolo_triton_client.client import AsyncClient, Client

CHUNK_BYTES = 1024 * 1024  # read from the file and sent at a time
POLL_S = 1.0  # how often `wait=True` asks for the model's status
WAIT_S = 900.0  # how long `wait=True` waits for a version to serve (an export is ~15 s on 2 cores; a big model more)
DONE = frozenset({"ready", "failed", "retired"})  # a version's states after which nothing more happens to it


@dataclass(frozen=True)
class Progress:
    """What `progress` is told: the upload's bytes (`phase` "upload", `done` of `total` bytes), then the version's
    status (`phase` "queued", "checking", "exporting", "verifying", "loading", "ready", "failed": `done` of `total`
    = 1.0 is the stage's progress), with the server's `message`."""

    phase: str
    done: float
    total: float
    message: str = ""


@dataclass(frozen=True)
class ModelVersion:
    """One uploaded version (README, "Your own models: the API")."""

    number: int
    status: str
    stage: str
    progress: float
    message: str
    reason: str
    serving: bool
    sha256: str
    size: int
    task: str | None
    names: dict[int, str]
    imgsz: int | None
    created: str | None
    timings: dict[str, float]


@dataclass(frozen=True)
class ModelStatus:
    """An uploaded model's status resource (a built-in model: `source` "builtin", `status` "ready", no versions)."""

    id: str
    source: str
    status: str
    version: int | None
    stage: str | None
    progress: float
    message: str
    reason: str
    serving: int | None
    task: str | None
    names: dict[int, str]
    versions: list[ModelVersion] = field(default_factory=list)
    requested_version: int | None = None  # the version an upload added or a rollback asked for
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def version_info(self, number: int) -> ModelVersion | None:
        return next((v for v in self.versions if v.number == number), None)


class ModelFailed(InvalidRequest):
    """A version the call waited for failed (`reason`: why, for the uploader; `model`: the status then)."""

    def __init__(self, model: ModelStatus, number: int) -> None:
        v = model.version_info(number)
        reason = v.reason if v is not None else model.reason
        stage = v.stage if v is not None else model.stage
        super().__init__(422, f"Version {number} of '{model.id}' failed during {stage}: {reason}", body=model.raw)
        self.model, self.reason = model, reason


def _names(raw: Any) -> dict[int, str]:
    return {int(k): str(v) for k, v in (raw or {}).items()}


def status_from(data: dict[str, Any]) -> ModelStatus:
    """The status resource (`data` of the answer) as a ModelStatus."""
    versions = [
        ModelVersion(
            number=int(v["number"]),
            status=str(v["status"]),
            stage=str(v.get("stage") or ""),
            progress=float(v.get("progress") or 0.0),
            message=str(v.get("message") or ""),
            reason=str(v.get("reason") or ""),
            serving=bool(v.get("serving")),
            sha256=str(v.get("sha256") or ""),
            size=int(v.get("size") or 0),
            task=v.get("task"),
            names=_names(v.get("names")),
            imgsz=v.get("imgsz"),
            created=v.get("created"),
            timings={str(k): float(t) for k, t in (v.get("timings") or {}).items()},
        )
        for v in data.get("versions") or []
    ]
    builtin = data.get("source", "builtin") == "builtin"
    return ModelStatus(
        id=str(data["id"]),
        source="builtin" if builtin else str(data["source"]),
        status="ready" if builtin else str(data.get("status")),
        version=data.get("version"),
        stage=data.get("stage"),
        progress=float(data.get("progress") or (1.0 if builtin else 0.0)),
        message=str(data.get("message") or ""),
        reason=str(data.get("reason") or ""),
        serving=data.get("serving"),
        task=data.get("task"),
        names=_names(data.get("names")),
        versions=versions,
        requested_version=data.get("requested_version"),
        raw=data,
    )


# --- the body of an upload ---------------------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    """A multipart body of one `file` part (the checkpoint, read from its file as it is sent) and text fields."""

    path: Path
    fields: dict[str, str]
    progress: Callable[[Progress], None] | None = None
    boundary: str = field(default_factory=lambda: f"yolo-triton-{secrets.token_hex(16)}")

    def __post_init__(self) -> None:
        self.size = os.stat(self.path).st_size
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in self.fields.items()
        ]
        filename = self.path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        self.head = "".join(parts).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def headers(self) -> dict[str, str]:
        length = len(self.head) + self.size + len(self.tail)
        return {"content-type": f"multipart/form-data; boundary={self.boundary}", "content-length": str(length)}

    def _report(self, sent: int) -> None:
        if self.progress is not None:
            self.progress(Progress("upload", sent, self.size, f"{sent} of {self.size} bytes sent"))

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        sent = 0
        self._report(0)
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk
                sent += len(chunk)
                self._report(sent)
        yield self.tail

    async def achunks(self) -> AsyncIterator[bytes]:
        yield self.head
        sent = 0
        self._report(0)
        f: IO[bytes] = await anyio.to_thread.run_sync(open, self.path, "rb")
        try:
            while chunk := await anyio.to_thread.run_sync(f.read, CHUNK_BYTES):
                yield chunk
                sent += len(chunk)
                self._report(sent)
        finally:
            f.close()
        yield self.tail


# --- plans -------------------------------------------------------------------------------------------------------


def _path(model_id: str, tail: str = "") -> str:
    return f"/v1/models/{quote(model_id, safe='')}{tail}"


def _options(imgsz: int | None, half: bool | None) -> dict[str, str]:
    fields = {}
    if imgsz is not None:
        fields["imgsz"] = str(int(imgsz))
    if half is not None:
        fields["half"] = "true" if half else "false"
    return fields


def _upload(body: _Checkpoint, model_id: str, new: bool) -> Plan[ModelStatus]:
    """POST (a new model: the id in the body) or PUT (a new version); never sent again once the body went out."""
    method, path = ("POST", "/v1/models") if new else ("PUT", _path(model_id))
    response = yield _Call(method, path, stream=body, resend=False)
    return status_from(response.json()["data"])


def _get(model_id: str) -> Plan[ModelStatus]:
    response = yield _Call("GET", _path(model_id))
    return status_from(response.json()["data"])


def _rollback(model_id: str, version: int | None) -> Plan[ModelStatus]:
    body = json.dumps({} if version is None else {"version": int(version)}).encode()
    response = yield _Call("POST", _path(model_id, "/rollback"), content=body)
    return status_from(response.json()["data"])


def _delete(model_id: str) -> Plan[dict[str, Any]]:
    response = yield _Call("DELETE", _path(model_id))
    data = response.json().get("data")
    return data if isinstance(data, dict) else {}


@dataclass
class _Waiting:
    """`wait=True`: when the awaited version is done, and what to tell `progress` meanwhile (both clients)."""

    number: int
    timeout_s: float
    progress: Callable[[Progress], None] | None
    started: float = field(default_factory=time.monotonic)
    said: tuple[str, float] | None = None

    def done(self, model: ModelStatus) -> bool:
        """Whether version `number` serves (True); raises ModelFailed when it failed (a rollback that failed goes
        back to `retired`), TimeoutError past the time."""
        v = model.version_info(self.number)
        if v is None:
            raise ApiError(404, f"Model '{model.id}' has no version {self.number} any more (deleted?)")
        if self.progress is not None and (v.status, v.progress) != self.said:
            self.said = (v.status, v.progress)
            self.progress(Progress(v.status, v.progress, 1.0, v.message))
        if v.status == "ready" and model.serving == self.number:
            return True
        if v.status in DONE and v.status != "ready":
            raise ModelFailed(model, self.number)
        if time.monotonic() - self.started > self.timeout_s:
            raise TimeoutError(f"Version {self.number} of '{model.id}' is {v.status} after {self.timeout_s:g} s")
        return False


def _checkpoint(path: str | os.PathLike[str], fields: dict[str, str], progress: Any) -> _Checkpoint:
    return _Checkpoint(Path(path), fields, progress)


class Models:
    """`client.models` (see the module docstring); calling it lists the served models, as `GET /v1/models`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __call__(self) -> list[dict[str, Any]]:
        return self._client._run(_models())

    def upload(
        self,
        path: str | os.PathLike[str],
        model_id: str,
        *,
        imgsz: int | None = None,
        half: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
        wait: bool = False,
        timeout: float = WAIT_S,
    ) -> ModelStatus:
        """Upload a checkpoint (.pt) as a new model `model_id`: its status once the server accepted it (after its
        checks, or `GATEWAY_MODEL_CHECK_WAIT_S`), or, with `wait`, once it serves. InvalidRequest (422) when the
        server refuses the file, ModelFailed when it fails later (`wait`)."""
        body = _checkpoint(path, {"id": model_id, **_options(imgsz, half)}, progress)
        return self._wait(self._client._run(_upload(body, model_id, new=True)), wait, timeout, progress)

    def replace(
        self,
        path: str | os.PathLike[str],
        model_id: str,
        *,
        imgsz: int | None = None,
        half: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
        wait: bool = False,
        timeout: float = WAIT_S,
    ) -> ModelStatus:
        """A new version of `model_id` from a checkpoint; the serving version serves until it is ready."""
        body = _checkpoint(path, _options(imgsz, half), progress)
        return self._wait(self._client._run(_upload(body, model_id, new=False)), wait, timeout, progress)

    def get(self, model_id: str) -> ModelStatus:
        return self._client._run(_get(model_id))

    def rollback(
        self,
        model_id: str,
        version: int | None = None,
        *,
        wait: bool = False,
        timeout: float = WAIT_S,
        progress: Callable[[Progress], None] | None = None,
    ) -> ModelStatus:
        """Serve `version` again (default: the previous one that served)."""
        return self._wait(self._client._run(_rollback(model_id, version)), wait, timeout, progress)

    def delete(self, model_id: str) -> dict[str, Any]:
        return self._client._run(_delete(model_id))

    def _wait(
        self, model: ModelStatus, wait: bool, timeout: float, progress: Callable[[Progress], None] | None
    ) -> ModelStatus:
        if not wait or model.requested_version is None:
            return model
        waiting = _Waiting(model.requested_version, timeout, progress)
        while not waiting.done(model):
            time.sleep(POLL_S)
            model = self.get(model.id)
        return _replace(model, requested_version=waiting.number)  # what this call asked for, as in its 202


class AsyncModels:
    """`AsyncClient.models`: the calls of `Models`, awaited."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def __call__(self) -> list[dict[str, Any]]:
        return await self._client._run(_models())

    async def upload(
        self,
        path: str | os.PathLike[str],
        model_id: str,
        *,
        imgsz: int | None = None,
        half: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
        wait: bool = False,
        timeout: float = WAIT_S,
    ) -> ModelStatus:
        """As `Models.upload`; the file is read in a worker thread, `progress` called in the event loop."""
        body = await anyio.to_thread.run_sync(_checkpoint, path, {"id": model_id, **_options(imgsz, half)}, progress)
        return await self._wait(await self._client._run(_upload(body, model_id, new=True)), wait, timeout, progress)

    async def replace(
        self,
        path: str | os.PathLike[str],
        model_id: str,
        *,
        imgsz: int | None = None,
        half: bool | None = None,
        progress: Callable[[Progress], None] | None = None,
        wait: bool = False,
        timeout: float = WAIT_S,
    ) -> ModelStatus:
        body = await anyio.to_thread.run_sync(_checkpoint, path, _options(imgsz, half), progress)
        return await self._wait(await self._client._run(_upload(body, model_id, new=False)), wait, timeout, progress)

    async def get(self, model_id: str) -> ModelStatus:
        return await self._client._run(_get(model_id))

    async def rollback(
        self,
        model_id: str,
        version: int | None = None,
        *,
        wait: bool = False,
        timeout: float = WAIT_S,
        progress: Callable[[Progress], None] | None = None,
    ) -> ModelStatus:
        return await self._wait(await self._client._run(_rollback(model_id, version)), wait, timeout, progress)

    async def delete(self, model_id: str) -> dict[str, Any]:
        return await self._client._run(_delete(model_id))

    async def _wait(
        self, model: ModelStatus, wait: bool, timeout: float, progress: Callable[[Progress], None] | None
    ) -> ModelStatus:
        if not wait or model.requested_version is None:
            return model
        waiting = _Waiting(model.requested_version, timeout, progress)
        while not waiting.done(model):
            await anyio.sleep(POLL_S)
            model = await self.get(model.id)
        return _replace(model, requested_version=waiting.number)  # what this call asked for, as in its 202
