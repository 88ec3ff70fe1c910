"""The models API (issue #27): your own models, uploaded, replaced, rolled back and deleted by keys with the `admin`
scope; and the model listings, which show uploaded models beside the built-in ones (no key, as before).

    POST   /v1/models                 multipart `file` (.pt), `id`, `imgsz`?, `half`? -> 202 + Location (or 422)
    PUT    /v1/models/{id}            a new version of an uploaded model -> 202 + Location (or 422)
    GET    /v1/models/{id}            its status resource (a built-in model: its card)
    POST   /v1/models/{id}/rollback   `version`? (JSON body or query) -> 202
    DELETE /v1/models/{id}            -> 200; predictions answer 404 at once
    GET    /v1/models                 built-in models Triton has ready, and every uploaded model

The body of an upload is written to disk as it arrives (gateway/api/upload.py), then the version is recorded
`queued`, and the answer waits up to GATEWAY_MODEL_CHECK_WAIT_S for the export worker's `checking` stage, so a file
it refuses gets 422 with the reason while the uploader waits (README, "Your own models: the API").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.api.forms import Body, Pace, api_key, is_multipart
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    UnprocessableImage,
    json_response,
    ok_response,
)
from gateway.keys.auth import KeyEntry
from gateway.models import (
    InvalidModelId,
    ModelConflict,
    ModelNotFound,
    ModelRecord,
    Registry,
    RegistryError,
    check_model_id,
    parse_triton_name,
    upload_path,
)
from gateway.models.aliases import Aliases
from gateway.models.record import expected
from gateway.models.redis_backend import RegistryUnavailable
from gateway.models.resource import model_json, summary
from gateway.models.upload import BATCH_BYTES, Upload, too_large
from gateway.observability import record_of
from gateway.services import Services, services_of
from gateway.settings import FORM_OVERHEAD
from gateway.streams import read_capped
from gateway.triton.client import VersionInfo

CHECK_POLL_S = 0.25  # how often an upload's answer looks whether the worker's checking stage decided
MAX_JSON = 4096  # a rollback's JSON body
BOOLEAN = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


@contextlib.contextmanager
def registry_errors() -> Iterator[None]:
    """The registry's refusals as API errors (one place for the mapping)."""
    try:
        yield
    except InvalidModelId as exc:
        raise BadRequest(str(exc)) from None
    except ModelNotFound as exc:
        raise NotFound(str(exc)) from None
    except ModelConflict as exc:
        raise Conflict(str(exc)) from None
    except RegistryUnavailable as exc:
        raise ServiceUnavailable(f"The model registry is unreachable; retry shortly ({exc}).", 2) from None
    except RegistryError as exc:  # a value it refused (an empty upload, an imgsz out of range)
        raise BadRequest(str(exc)) from None


def _aliases(services: Services) -> Aliases:
    assert services.models is not None  # opened in the lifespan with the other services
    return services.models


def _registry(services: Services) -> Registry:
    return _aliases(services).registry


async def _admin(request: Request, model_id: str | None) -> tuple[KeyEntry, str | None, str]:
    """The caller's key, which must have the admin scope, and may use `model_id` (when known): (entry, key, header)."""
    key, header = api_key(request)
    entry = await services_of(request).store.authenticate(key, model_id, header)
    record_of(request).key_id = entry.id
    if not entry.admin:
        raise Forbidden("This API key may not manage models: it needs the admin scope (`make key ADMIN=1`).")
    return entry, key, header


def _model_id(raw: str) -> str:
    with registry_errors():
        return check_model_id(raw)


async def _refuse_builtin(services: Services, model_id: str, doing: str) -> None:
    """Conflict when `model_id` is a built-in model (in the repository by `make export`, not uploaded)."""
    try:
        await services.triton.model(model_id)
    except NotFound:
        return
    raise Conflict(
        f"'{model_id}' is a built-in model (exported into the model repository, not uploaded): it can't be {doing} "
        "through the API. Upload your model under another id."
    )


def _accepted(record: ModelRecord, number: int, message: str | None = None) -> Response:
    """202: the model's status, and the version this request added (an upload) or asked to serve (a rollback)."""
    data = {**model_json(record), "requested_version": number}
    body = {"success": True, "message": message or summary(record, number), "data": data}
    return json_response(body, 202, {"Location": f"/v1/models/{record.id}"})


# --- upload: POST /v1/models, PUT /v1/models/{id} ----------------------------------------------------------------


async def create(request: Request) -> Response:
    return await _upload(request, None)


async def replace(request: Request) -> Response:
    return await _upload(request, _model_id(request.path_params["model_id"]))


async def _upload(request: Request, path_id: str | None) -> Response:
    services = services_of(request)
    settings = services.settings
    early = path_id or request.query_params.get("id") or None
    if early is not None:
        early = _model_id(early)
        record_of(request).model = early
    entry, key, header = await _admin(request, early)
    if not is_multipart(request):
        raise BadRequest("Send multipart/form-data: the checkpoint as the 'file' part and the model's 'id' field.")
    if early is not None:  # refused before a body of up to 512 MiB is read
        await _refuse_builtin(services, early, "replaced" if path_id else "uploaded over")
        with registry_errors():
            expected(await _registry(services).get(early), early, "existing" if path_id else "new")
    services.key_slots.claim(entry.id)  # one key's requests in progress are capped, uploads too (429)
    try:
        upload, fields = await _receive(request, services)
    finally:
        services.key_slots.release(entry.id)
    placed = False
    try:
        fields = {**dict(request.query_params), **fields}
        model_id = path_id or _model_id(fields.get("id", ""))
        record_of(request).model = model_id
        if path_id is None and early is None:  # the id came in the form: its scope is checked now
            await services.store.authenticate(key, model_id, header)
            await _refuse_builtin(services, model_id, "uploaded over")
        imgsz, half = _options(fields)
        relative = upload_path(model_id, upload.sha256)
        registry = _registry(services)
        placed = await asyncio.to_thread(upload.keep, settings.models_dir / relative)
        with registry_errors():
            _, version = await registry.add_version(
                model_id,
                sha256=upload.sha256,
                size=upload.size,
                filename=upload.filename,
                upload=relative,
                imgsz=imgsz,
                half=half,
                expect="existing" if path_id else "new",
            )
    except BaseException:
        await asyncio.to_thread(upload.discard)
        if placed:  # recorded nowhere: its file goes too (never another version's: `placed` says it is new)
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread((settings.models_dir / relative).unlink)
        raise
    _aliases(services).forget(model_id)
    record = await _checked(registry, model_id, version.number, settings.model_check_wait_s)
    v = record.version(version.number)
    if v.status == "failed":
        raise UnprocessableImage(
            f"The checkpoint was refused during {v.stage}: {v.reason}. (Version {v.number} of '{model_id}' is "
            f"recorded as failed; GET /v1/models/{model_id} shows it.)"
        )
    return _accepted(record, v.number)


async def _receive(request: Request, services: Services) -> tuple[Upload, dict[str, str]]:
    """The body written to disk (module docstring of gateway/api/upload.py), under the body's pace and size limit."""
    settings = services.settings
    limit = settings.max_model_bytes + FORM_OVERHEAD
    body = Body(request, Pace(settings.body_timeout_s, settings.body_min_rate, settings.body_grace_s))
    upload = Upload(request.headers.get("content-type", ""), settings.models_dir, settings.max_model_bytes)
    try:
        batch: list[bytes] = []
        held = 0
        async for chunk in body.chunks(limit, too_large(settings.max_model_bytes).message):
            batch.append(chunk)
            held += len(chunk)
            if held >= BATCH_BYTES:
                await asyncio.to_thread(upload.write, b"".join(batch))
                batch, held = [], 0
        await asyncio.to_thread(upload.finish, b"".join(batch))
    except BaseException:
        await asyncio.to_thread(upload.discard)
        raise
    finally:
        record_of(request).body_bytes = body.received
    return upload, upload.fields


def _options(fields: dict[str, str]) -> tuple[int | None, bool]:
    """`imgsz` and `half`, or BadRequest naming the field."""
    imgsz = None
    raw = fields.get("imgsz", "").strip()
    if raw:
        if not raw.isdigit() or not 32 <= int(raw) <= 1280:
            raise BadRequest(
                f"'imgsz' must be a whole number from 32 to 1280 (the input size), not {raw[:32]!r}; leave it out "
                "to use the size the checkpoint was trained at."
            )
        imgsz = int(raw)
    text = fields.get("half", "").strip().lower()
    if text and text not in BOOLEAN:
        raise BadRequest(f"'half' must be true or false, not {text[:32]!r}.")
    return imgsz, BOOLEAN.get(text, False)


async def _checked(registry: Registry, model_id: str, number: int, wait_s: float) -> ModelRecord:
    """The record once the worker's checking stage decided on version `number` (it went on, or failed), or as it is
    after `wait_s` (the worker is busy, or not running)."""
    deadline = time.monotonic() + wait_s
    while True:
        with registry_errors():
            record = await registry.get(model_id)
        if record is None:
            raise NotFound(f"Model '{model_id}' was deleted while it was uploaded.")
        v = record.version(number)
        if v.status not in ("queued", "checking") or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(min(CHECK_POLL_S, max(0.0, deadline - time.monotonic())))


# --- rollback, delete --------------------------------------------------------------------------------------------


async def rollback(request: Request) -> Response:
    services = services_of(request)
    model_id = _model_id(request.path_params["model_id"])
    record_of(request).model = model_id
    await _admin(request, model_id)
    raw = await read_capped(request.stream(), MAX_JSON, 'A rollback\'s body is {"version": N} at most.', None)
    number = _version_asked(request.query_params.get("version"), raw)
    try:
        with registry_errors():
            record, v = await _registry(services).rollback(model_id, number)
    except NotFound:
        await _refuse_builtin(services, model_id, "rolled back")
        raise
    _aliases(services).forget(model_id)
    return _accepted(record, v.number, f"Rollback to version {v.number}: {summary(record, v.number)}")


def _version_asked(query: str | None, raw: bytes) -> int | None:
    value: Any = query
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest('The body must be JSON: {"version": N}, or empty for the previous version.') from None
        if not isinstance(body, dict) or set(body) - {"version"}:
            raise BadRequest('The body must be {"version": N}, or empty for the previous version.')
        value = body.get("version", value)
    if value is None or value == "":
        return None
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise BadRequest(f"'version' must be a version number (1, 2, ...), not {text[:32]!r}.")
    return int(text)


async def delete(request: Request) -> Response:
    services = services_of(request)
    model_id = _model_id(request.path_params["model_id"])
    record_of(request).model = model_id
    await _admin(request, model_id)
    try:
        with registry_errors():
            record = await _registry(services).delete(model_id)
    except NotFound:
        await _refuse_builtin(services, model_id, "deleted")
        raise
    _aliases(services).forget(model_id)
    return ok_response(
        {"id": model_id, "source": "upload", "deleted": True, "versions": len(record.versions)},
        f"Model '{model_id}' deleted: predictions answer 404 from now on; its files are removed within seconds.",
    )


# --- listings (no key) -------------------------------------------------------------------------------------------


async def get_model(request: Request) -> Response:
    """An uploaded model's status resource, else a built-in model's card."""
    services = services_of(request)
    model_id = str(request.path_params["model_id"])
    if parse_triton_name(model_id) is not None:
        raise NotFound(f"Model '{model_id[:80]}' not found: versions are shown under their model's id.")
    unsure = False
    try:
        with registry_errors():
            record = await _registry(services).get(model_id)
    except ServiceUnavailable:
        record, unsure = None, True
    if record is not None and not record.deleted:
        return ok_response(model_json(record, card=await _card(services, record)), summary(record))
    try:
        info = await services.triton.model(model_id)
    except NotFound:
        if unsure:
            raise ServiceUnavailable("The model registry is unreachable; retry shortly.", 2) from None
        raise
    return ok_response({**info.public(), "source": "builtin"}, "Model ready.")


async def _card(services: Services, record: ModelRecord) -> dict[str, Any] | None:
    """The serving version's card from Triton (stride, backend, ...), when it is loaded."""
    if record.serving_name is None:
        return None
    try:
        info = await services.triton.model(record.serving_name)
    except GatewayError:
        return None
    return VersionInfo.of(info, record.id).public()


async def list_models(request: Request) -> Response:
    """The built-in models Triton has ready, then every uploaded model (without its versions)."""
    services = services_of(request)
    loaded = await services.triton.ready_models()
    cards = {m.name: m for m in loaded}
    data: list[dict[str, Any]] = [
        {**m.public(), "source": "builtin"} for m in loaded if parse_triton_name(m.name) is None
    ]
    note = ""
    try:
        with registry_errors():
            records = await _registry(services).list()
    except ServiceUnavailable:
        records, note = [], " (the model registry is unreachable: uploaded models are not listed)"
    uploads = 0
    for record in records:
        if record.deleted:
            continue
        uploads += 1
        info = cards.get(record.serving_name or "")
        card = VersionInfo.of(info, record.id).public() if info is not None else None
        data.append(model_json(record, versions=False, card=card))
    ready = sum(1 for m in data if m.get("status", "ready") == "ready")
    return ok_response(data, f"{ready} model(s) ready ({uploads} uploaded model(s) in all){note}.")


def routes() -> list[BaseRoute]:
    """The models API's routes; `GET /v1/models` and `GET /v1/models/{id}` are the service routes' (routes.py)."""
    return [
        Route("/v1/models", create, methods=["POST"]),
        Route("/v1/models/{model_id}/rollback", rollback, methods=["POST"]),
        Route("/v1/models/{model_id}", replace, methods=["PUT"]),
        Route("/v1/models/{model_id}", delete, methods=["DELETE"]),
    ]
