"""The HTTP routes: the three prediction routes (one flow, two response formats) and the service routes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import flow, render, responses
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.fetch import fetch_image
from gateway.forms import FORM_OVERHEAD, api_key, collect, model_from_slug, parse_form, read_body
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.openapi import SPEC
from gateway.responses import json_response
from gateway.schemas import Style, parse_args
from gateway.triton import ModelInfo

if TYPE_CHECKING:
    from starlette.datastructures import UploadFile

    from gateway.app import State


def _state(request: Request) -> State:
    state: State = request.app.state.gateway
    return state


async def predict(request: Request) -> Response:
    """HUB v1: POST /v1/predict/{model_id}."""
    return await _handle(request, request.path_params["model_id"], "v1")


async def predict_platform(request: Request) -> Response:
    """The newer Ultralytics API: POST /api/models/{owner/project/model}/predict, answered in the `images` format."""
    return await _handle(request, model_from_slug(request.path_params["slug"]), "v2")


async def predict_dedicated(request: Request) -> Response:
    """POST / with the model in a `model` form field (a HUB model URL or an id), answered in the `images` format."""
    return await _handle(request, None, "v2")


async def _handle(request: Request, model_id: str | None, style: Style) -> Response:
    state = _state(request)
    settings = state.settings
    started = time.perf_counter()
    context = request.scope.get("state", {}).get("context", {})
    context["predict"] = True
    if model_id is not None:
        context["model"] = model_id[:64]
    # the key is checked before the body is read; its model scope as soon as the model is known
    key, header = api_key(request)
    entry = await state.store.authenticate(key, model_id, header)
    context["key_id"] = entry.id
    quota = await state.store.take(entry)  # one token now; the request's other images once they are counted
    if quota is not None:
        context["headers"] = quota.headers()  # X-RateLimit-*, added to the response whatever it is
    if model_id is not None:
        info = await state.triton.model(model_id)
    if state.inflight >= settings.max_inflight:
        raise ServiceUnavailable("The server is busy (too many requests in flight). Retry shortly.", retry_after=1)
    state.inflight += 1
    state.metrics.inflight.inc()
    try:
        body = await read_body(request, settings.max_upload_bytes + FORM_OVERHEAD)
        context["bytes"] = len(body)
        form = await parse_form(request, body, settings.max_images)
        try:
            images, fields = collect(request, form, style)
            context["images"] = len(images)
            if len(images) > 1:  # each image costs one token: the extra ones may put the key in debt
                quota = await state.store.take(entry, len(images) - 1, force=True)
                if quota is not None:
                    context["headers"] = quota.headers()
            if model_id is None:
                model_id = model_from_slug(fields.get("model", ""))
                if not model_id:
                    raise BadRequest("Missing 'model': send the model id (or its HUB URL) in the 'model' field.")
                context["model"] = model_id[:64]
                await state.store.authenticate(key, model_id, header)
                info = await state.triton.model(model_id)
            state.metrics.models.add(info.name)
            context["task"] = info.task
            return await _predict(state, info, images, fields, style, started, context)
        finally:
            await form.close()
    finally:
        state.inflight -= 1
        state.metrics.inflight.dec()


async def _predict(
    state: State,
    info: ModelInfo,
    uploads: list[UploadFile],
    fields: dict[str, str],
    style: Style,
    started: float,
    context: dict[str, Any],
) -> Response:
    settings = state.settings
    args = parse_args(fields, info.imgsz, style)
    if uploads and args.url:
        raise BadRequest("Send either image file(s) or a URL, not both.")
    if not uploads and not args.url:
        raise BadRequest("An image file or URL must be submitted.")
    if len(uploads) > 1 and args.format != "json":
        raise BadRequest("An annotated image (format=image/png) is made for one image per request; send one image.")

    timings: dict[str, float] = {}
    context["timings"] = timings
    t0 = time.perf_counter()
    if uploads:
        datas = [await upload.read() for upload in uploads]
    else:
        datas = [
            await fetch_image(
                args.url,
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.url_timeout_s,
                max_redirects=settings.url_max_redirects,
                allow_hosts=settings.url_allow_hosts,
            )
        ]
        timings["fetch"] = (time.perf_counter() - t0) * 1000
    outcomes = await flow.run(state, info, datas, args, timings)
    failed = [o for o in outcomes if o.error is not None]
    if len(failed) == len(outcomes):  # nothing succeeded: the request fails with the (first) image's own error
        error = failed[0].error
        assert error is not None
        if len(outcomes) > 1:
            error.message = f"Image 1 of {len(outcomes)}: {error.message}"
        raise error

    t3 = time.perf_counter()
    if args.format != "json":
        only = outcomes[0]
        body = await anyio.to_thread.run_sync(
            render.encode_annotated, only.image, only.rows, info.task, args.format, args.normalize,
            limiter=state.limiter_threads,
        )  # fmt: skip
        media_type = f"image/{args.format}"
        timings["render"] = (time.perf_counter() - t3) * 1000
    else:
        body, media_type = orjson.dumps(responses.body(info, args, outcomes, style)), "application/json"
    timings["total"] = (time.perf_counter() - started) * 1000
    return Response(body, media_type=media_type, headers={"Server-Timing": responses.server_timing(timings)})


async def list_models(request: Request) -> Response:
    models = await _state(request).triton.ready_models()
    data = [m.public() for m in models]
    return json_response({"success": True, "message": f"{len(models)} model(s) ready.", "data": data})


async def get_model(request: Request) -> Response:
    info = await _state(request).triton.model(request.path_params["model_id"])
    return json_response({"success": True, "message": "Model ready.", "data": info.public()})


async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    return json_response(SPEC)


async def healthz(request: Request) -> Response:
    return json_response({"success": True, "message": "alive", "data": {}})


async def readyz(request: Request) -> Response:
    state = _state(request)
    if not await state.triton.server_ready():
        raise ServiceUnavailable("Not ready: the inference server is unreachable or still loading models.", 5)
    models = await state.triton.ready_models()
    if not models:
        raise ServiceUnavailable("Not ready: no model is loaded in the inference server.", 5)
    return json_response({"success": True, "message": "ready", "data": {"models": [m.name for m in models]}})
