"""The HTTP routes: the prediction routes (one admission; the dialect of the route, key or base path shapes the answer,
gateway/dialects/), hub-sdk's login (/v1/auth) and the service routes."""

from __future__ import annotations

import contextlib
import time

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.api.forms import (
    Body,
    Pace,
    api_key,
    buffer,
    collect,
    is_multipart,
    is_urlencoded,
    key_entry,
    model_from_slug,
    names_sent,
    parse_form,
    parse_urlencoded,
    streamed,
)
from gateway.api import models
from gateway.api.failures import set_dialect
from gateway.api.openapi import SPEC
from gateway.budget import Hold
from gateway.dialects import PLATFORM, PREDICT, V1, Door, choose, first, pinned
from gateway.errors import BadRequest, ServiceUnavailable, json_response, ok_response
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.observability import record_of
from gateway.predict import images, video
from gateway.services import Prediction, services_of


async def predict(request: Request) -> Response:
    """HUB v1: POST /v1/predict/{model_id} (hub, hub-xywhn or, by its field names, hub-images)."""
    return await _handle(request, request.path_params["model_id"], V1)


async def predict_platform(request: Request) -> Response:
    """The Ultralytics Platform: POST /api/models/{owner/project/model}/predict."""
    return await _handle(request, model_from_slug(request.path_params["slug"]), PLATFORM)


async def predict_dedicated(request: Request) -> Response:
    """predict.ultralytics.com: POST / with the model in a `model` form field (a HUB model URL or an id); without
    one, the key's one model (a dedicated endpoint)."""
    return await _handle(request, None, PREDICT)


async def predict_bound(request: Request) -> Response:
    """A HUB dedicated endpoint bound to one model by its base URL: POST /dedicated/{model_id}."""
    return await _handle(request, request.path_params["model_id"], PREDICT)


async def predict_bound_platform(request: Request) -> Response:
    """A Platform dedicated endpoint bound to one model by its base URL: POST /dedicated/{model_id}/predict."""
    return await _handle(request, request.path_params["model_id"], PLATFORM)


async def predict_deployment(request: Request) -> Response:
    """The Platform SDK's `deployments.predict`: POST /api/deployments/{owner}/{deployment}/predict, a deployment
    named after the model it serves."""
    return await _handle(request, request.path_params["deployment"], PLATFORM)


async def predict_key_platform(request: Request) -> Response:
    """A Platform dedicated endpoint bound to the key's one model: POST /predict."""
    return await _handle(request, None, PLATFORM)


def _key_model(models: tuple[str, ...] | None, door: Door) -> str:
    """The one model a key may use, which a route without a model id serves; BadRequest saying what to send."""
    if models is not None and len(models) == 1:
        return models[0]
    scope = "every model" if models is None else f"{len(models)} models"
    if door == PREDICT:
        raise BadRequest(
            "Missing 'model': send the model's HUB URL (https://hub.ultralytics.com/models/<id>) or its id in the "
            f"'model' field. (Without one, this route serves the key's one model; this key may use {scope}.)"
        )
    raise BadRequest(
        f"This route serves the key's one model, and this key may use {scope}: POST "
        "/api/models/<owner>/<project>/<model>/predict instead, or use a key created for one model."
    )


async def _handle(request: Request, model_id: str | None, door: Door) -> Response:
    """Admit the request (key, its slots and tokens, room in the gateway, memory for its body), read its form, and
    hand it to the flow for images or for a video, in the dialect chosen once the form is read."""
    services = services_of(request)
    started = time.perf_counter()
    pin = pinned(door, request.path_params.get("dialect"))  # a base path /dialects/<name>/...
    dialect = first(door, pin)
    set_dialect(request, dialect)  # errors from here on are answered in its shape
    record = record_of(request)
    record.predict = True
    if model_id is not None:
        record.model = model_id[:64]
    # the key is checked before the body is read; its model scope as soon as the model is known
    key, header = api_key(request)
    entry = await services.store.authenticate(key, model_id, header)
    record.key_id = entry.id
    # everything the request holds is released by this stack; a streamed answer takes it and releases it at its end
    async with contextlib.AsyncExitStack() as held:
        services.key_slots.claim(entry.id)  # one key's requests in progress, reading or processed, are capped (429)
        held.callback(services.key_slots.release, entry.id)
        quota = await services.store.spend(entry)  # one token now; the request's other images once they are counted
        if quota is not None:
            record.headers = dialect.rate_headers(quota)  # X-RateLimit-*, added to the response whatever it is
        if model_id is not None:
            info = await services.model(model_id)  # an uploaded id: its serving version, kept to the end
        services.check_room()  # a full gateway refuses before reading a body it could not process
        hold = Hold(services.budget, entry.id)
        held.callback(hold.release)
        prediction = Prediction(services, entry, record, hold, held, dialect, started)
        form, spooled = await read_form(request, prediction)
        held.push_async_callback(form.close)
        services.enter()  # the in-flight slot is taken once the body is in: a client sending slowly holds none
        held.callback(services.leave)
        uploads, fields = collect(request, form, dialect.part)
        prediction.dialect = dialect = choose(door, pin, entry.dialect, names_sent(form, fields))
        set_dialect(request, dialect)
        record.images = len(uploads)
        container = await video.container_of(uploads)
        if container is None:
            await prediction.charge(len(uploads) - 1)  # each image costs one token
            if spooled:  # the image parts are read into memory by the flow
                await hold.reserve(sum(min(u.size or 0, services.settings.max_upload_bytes) for u in uploads))
        if model_id is None:
            sent = model_from_slug(fields.get("model", "")) if door == PREDICT else ""
            model_id = sent or _key_model(entry.models, door)
            record.model = model_id[:64]
            await services.store.authenticate(key, model_id, header)
            info = await services.model(model_id)
        services.metrics.models.add(info.name)
        record.task = info.task
        if container is not None:
            return await video.respond(prediction, info, uploads[0], container, fields)
        return await images.respond(prediction, info, uploads, fields)


async def read_form(request: Request, prediction: Prediction) -> tuple[FormData, bool]:
    """The parsed form, and whether it was spooled. The body is read under its pace (GATEWAY_BODY_*: 408 when the
    client is too slow), each chunk charged to the request's hold as it arrives. A body up to an image's limit is
    read into memory, declared or chunked, and its text fields may be that long (a base64 `source`); a longer
    multipart body (a video) is parsed as it arrives instead, its file parts spooled to TMPDIR, never whole in
    memory."""
    services, hold = prediction.services, prediction.hold
    settings = services.settings
    part = prediction.dialect.part
    limit = settings.body_limit
    body = Body(request, Pace(settings.body_timeout_s, settings.body_min_rate, settings.body_grace_s))
    try:
        if not is_multipart(request):
            too_large = f"The request is larger than the {limit // 2**20} MiB upload limit. Send a smaller image."
            whole_body, _ = await buffer(body.chunks(limit, too_large), limit, hold.reserve)
            if is_urlencoded(request):
                return await services.workers.run(parse_urlencoded, whole_body, limit, part), False
            return await parse_form(request, whole_body, settings.max_images, part), False
        video_limit = settings.largest_body
        too_large = (
            f"The request is larger than the {video_limit // 2**20} MiB video upload limit. Send a smaller video."
        )
        chunks = body.chunks(video_limit, too_large)
        kept: list[bytes] = []
        declared = request.headers.get("content-length", "")
        if not (declared.isdigit() and int(declared) > limit):  # may be an image: in memory up to an image's limit
            kept, whole = await buffer(chunks, limit, hold.reserve)
            if whole:
                return await parse_form(request, kept, settings.max_images, part, max_text=limit), False
        return await parse_form(request, streamed(kept, chunks, hold), settings.max_images, part), True
    finally:
        prediction.record.body_bytes = body.received


async def auth(request: Request) -> Response:
    """HUB v1: POST /v1/auth, hub-sdk's login. `{"success": true}` for a valid key (hub-sdk drops a key that gets
    anything else, and then sends its predictions with no key at all); the key's id, name, models and dialect."""
    entry = await key_entry(request)
    about = {k: v for k, v in entry.public().items() if k in ("id", "name", "models", "rate", "dialect")}
    return ok_response(about, "Authenticated.")


async def list_models(request: Request) -> Response:
    """The built-in models Triton has ready and the uploaded ones (gateway/api/models.py)."""
    return await models.list_models(request)


async def get_model(request: Request) -> Response:
    """A built-in model's card, or an uploaded model's status resource (gateway/api/models.py)."""
    return await models.get_model(request)


async def metrics(request: Request) -> Response:
    return Response(services_of(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    return json_response(SPEC)


async def healthz(request: Request) -> Response:
    return ok_response({}, "alive")


async def readyz(request: Request) -> Response:
    """200 while this gateway can serve: Triton up now or within GATEWAY_READY_GRACE_S (a Triton rollout or blip must
    not take every gateway out of the Service at once, which turns JSON 503s into the ingress' HTML 503s)."""
    services = services_of(request)
    triton = await services.triton.probe()
    services.metrics.triton_up.set(1 if triton.up else 0)
    grace = services.settings.ready_grace_s
    last = None if triton.last_up_s is None else round(triton.last_up_s, 1)
    if not triton.ready(grace):
        since = "since this gateway started" if last is None else f"for {last:.0f} s (grace {grace:g} s)"
        raise ServiceUnavailable(f"Not ready: {triton.problem} {since}.", 5)
    detail = {"ready": triton.up, "models": list(triton.models), "last_ready_s_ago": last, "problem": triton.problem}
    message = "ready" if triton.up else f"ready (inference server not ready for {last:.0f} s: {triton.problem})"
    return ok_response({"models": list(triton.models), "triton": detail}, message)


def dialect_routes() -> list[BaseRoute]:
    """What a dialect's base path (`/dialects/<name>`) serves: the paths its clients call, each answered in that
    dialect (or 404 for a path it does not speak)."""
    return [
        Route("/", predict_dedicated, methods=["POST"]),
        Route("/v1/auth", auth, methods=["POST"]),
        Route("/v1/predict/{model_id:path}", predict, methods=["POST"]),
        Route("/api/models/{slug:path}/predict", predict_platform, methods=["POST"]),
        Route("/api/deployments/{owner}/{deployment}/predict", predict_deployment, methods=["POST"]),
        Route("/predict", predict_key_platform, methods=["POST"]),
        Route("/dedicated/{model_id}/predict", predict_bound_platform, methods=["POST"]),
        Route("/dedicated/{model_id}", predict_bound, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    ]
