"""The HTTP routes: the three prediction routes (one flow, two response formats) and the service routes."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import flow, render, responses, video_flow
from gateway.budget import Hold
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.fetch import fetch_image
from gateway.forms import (
    FORM_OVERHEAD,
    Body,
    Pace,
    api_key,
    buffer,
    collect,
    decode_source,
    is_multipart,
    is_url,
    is_urlencoded,
    model_from_slug,
    parse_form,
    parse_urlencoded,
    streamed,
)
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.openapi import SPEC
from gateway.responses import json_response
from gateway.schemas import Style, check_classes, parse_args
from gateway.services import Services, services_of
from gateway.modelcard import ModelInfo

if TYPE_CHECKING:
    from starlette.datastructures import FormData, UploadFile


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
    state = services_of(request)
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
    # everything the request holds is released by this stack; a streamed answer takes it and releases it at its end
    async with contextlib.AsyncExitStack() as held:
        state.key_slots.take(entry.id)  # one key's requests in progress, reading or processed, are capped (429)
        held.callback(state.key_slots.release, entry.id)
        quota = await state.store.take(entry)  # one token now; the request's other images once they are counted
        if quota is not None:
            context["headers"] = quota.headers()  # X-RateLimit-*, added to the response whatever it is
        if model_id is not None:
            info = await state.triton.model(model_id)
        _check_room(state)  # a full gateway refuses before reading a body it could not process
        hold = Hold(state.budget)
        held.callback(hold.release)
        form, spooled = await _read_form(request, state, hold, context, style)
        held.push_async_callback(form.close)
        # the in-flight slot is taken once the body is in: a client sending slowly holds none
        _check_room(state)
        state.inflight += 1
        state.metrics.inflight.inc()
        held.callback(_leave, state)
        images, fields = collect(request, form, style)
        context["images"] = len(images)
        container = await video_flow.container_of(images)

        async def charge(extra: int) -> None:
            """Take `extra` more tokens (the request's other images, or a video's other frames); they may put the
            key in debt, since the request was already admitted."""
            if extra <= 0:
                return
            quota = await state.store.take(entry, extra, force=True)
            if quota is not None:
                context["headers"] = quota.headers()

        if container is None:
            await charge(len(images) - 1)  # each image costs one token
            if spooled:  # the image parts are read into memory below
                await hold.take(sum(min(u.size or 0, settings.max_upload_bytes) for u in images))
        if model_id is None:
            model_id = model_from_slug(fields.get("model", ""))
            if not model_id:
                raise BadRequest("Missing 'model': send the model id (or its HUB URL) in the 'model' field.")
            context["model"] = model_id[:64]
            await state.store.authenticate(key, model_id, header)
            info = await state.triton.model(model_id)
        state.metrics.models.add(info.name)
        context["task"] = info.task
        if container is not None:

            async def charge_frames(frames: int) -> None:
                context["images"] = context.get("images", 0) + frames  # usage counts a video's analysed frames
                await charge(frames)  # each analysed frame costs one token

            return await video_flow.respond(
                state, info, images[0], container, fields, style, started, context, held, charge_frames
            )
        return await _predict(state, info, images, fields, style, started, context, hold)


def _check_room(state: Services) -> None:
    if state.inflight >= state.settings.max_inflight:
        raise ServiceUnavailable("The server is busy (too many requests in flight). Retry shortly.", retry_after=1)


def _leave(state: Services) -> None:
    state.inflight -= 1
    state.metrics.inflight.dec()


async def _read_form(
    request: Request, state: Services, hold: Hold, context: dict[str, Any], style: Style
) -> tuple[FormData, bool]:
    """The parsed form, and whether it was spooled. The body is read under its pace (GATEWAY_BODY_*: 408 when the
    client is too slow), each chunk charged to `hold` as it arrives. A body up to an image's limit is read into
    memory, declared or chunked, and its text fields may be that long (a base64 `source`); a longer multipart body
    (a video) is parsed as it arrives instead, its file parts spooled to TMPDIR, never whole in memory."""
    settings = state.settings
    part = "image" if style == "v1" else "file"
    limit = settings.max_upload_bytes + FORM_OVERHEAD
    body = Body(request, Pace(settings.body_timeout_s, settings.body_min_rate, settings.body_grace_s))
    try:
        if not is_multipart(request):
            too_large = f"The request is larger than the {limit // 2**20} MiB upload limit. Send a smaller image."
            whole_body, _ = await buffer(body.chunks(limit, too_large), limit, hold.take)
            if is_urlencoded(request):
                return await state.workers.run(parse_urlencoded, whole_body, limit, part), False
            return await parse_form(request, whole_body, settings.max_images, part), False
        video_limit = max(settings.max_upload_bytes, settings.max_video_bytes) + FORM_OVERHEAD
        too_large = (
            f"The request is larger than the {video_limit // 2**20} MiB video upload limit. Send a smaller video."
        )
        chunks = body.chunks(video_limit, too_large)
        kept: list[bytes] = []
        declared = request.headers.get("content-length", "")
        if not (declared.isdigit() and int(declared) > limit):  # may be an image: in memory up to an image's limit
            kept, whole = await buffer(chunks, limit, hold.take)
            if whole:
                return await parse_form(request, kept, settings.max_images, part, max_text=limit), False
        return await parse_form(request, streamed(kept, chunks, hold), settings.max_images, part), True
    finally:
        context["bytes"] = body.received


async def _predict(
    state: Services,
    info: ModelInfo,
    uploads: list[UploadFile],
    fields: dict[str, str],
    style: Style,
    started: float,
    context: dict[str, Any],
    hold: Hold,
) -> Response:
    settings = state.settings
    args = parse_args(fields, info.imgsz, style)
    if args.stream:
        raise BadRequest("'stream=true' applies to a video upload; an image is answered in one response.")
    if info.task != "classify":  # classifiers ignore `classes`, as Ultralytics' do
        check_classes(args.classes, info.name, len(info.names))
    if args.source and (uploads or args.url):
        raise BadRequest("Send one of: image file(s), 'url' or 'source' (a URL or base64 image), not several.")
    url = args.source if args.source and is_url(args.source) else args.url
    inline = None
    if args.source and not url:  # base64 of up to the upload limit: decoded off the event loop
        inline = await state.workers.run(decode_source, args.source, settings.max_upload_bytes)
    if uploads and url:
        raise BadRequest("Send either image file(s) or a URL, not both.")
    if not uploads and not url and inline is None:
        raise BadRequest("An image file or URL must be submitted.")
    if len(uploads) > 1 and args.format != "json":
        raise BadRequest("An annotated image (format=image/png) is made for one image per request; send one image.")

    timings: dict[str, float] = {}
    context["timings"] = timings
    t0 = time.perf_counter()
    if uploads:  # one byte more than the limit is enough for flow.run to refuse an image that is too large
        datas = [await upload.read(settings.max_upload_bytes + 1) for upload in uploads]
    elif inline is not None:
        datas = [inline]
    else:
        datas = [
            await fetch_image(
                url,
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.url_timeout_s,
                max_redirects=settings.url_max_redirects,
                allow_hosts=settings.url_allow_hosts,
            )
        ]
        timings["fetch"] = (time.perf_counter() - t0) * 1000
    outcomes = await flow.run(state, info, datas, args, timings, hold)
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
        assert only.image is not None and only.rows is not None  # kept for format=image, and it succeeded
        body = await state.workers.run(
            render.encode_annotated, only.image, only.rows, info.task, args.format, args.normalize
        )  # fmt: skip
        media_type = f"image/{args.format}"
        timings["render"] = (time.perf_counter() - t3) * 1000
    else:
        body, media_type = orjson.dumps(responses.body(info, args, outcomes, style, started)), "application/json"
    timings["total"] = (time.perf_counter() - started) * 1000
    return Response(body, media_type=media_type, headers=responses.headers(info, timings))


async def list_models(request: Request) -> Response:
    models = await services_of(request).triton.ready_models()
    data = [m.public() for m in models]
    return json_response({"success": True, "message": f"{len(models)} model(s) ready.", "data": data})


async def get_model(request: Request) -> Response:
    info = await services_of(request).triton.model(request.path_params["model_id"])
    return json_response({"success": True, "message": "Model ready.", "data": info.public()})


async def metrics(request: Request) -> Response:
    return Response(services_of(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    return json_response(SPEC)


async def healthz(request: Request) -> Response:
    return json_response({"success": True, "message": "alive", "data": {}})


async def readyz(request: Request) -> Response:
    """200 while this gateway can serve: Triton up now or within GATEWAY_READY_GRACE_S (a Triton rollout or blip must
    not take every gateway out of the Service at once, which turns JSON 503s into the ingress' HTML 503s)."""
    state = services_of(request)
    triton = await state.triton.probe()
    state.metrics.triton_up.set(1 if triton.up else 0)
    grace = state.settings.ready_grace_s
    last = None if triton.last_up_s is None else round(triton.last_up_s, 1)
    if not triton.ready(grace):
        since = "since this gateway started" if last is None else f"for {last:.0f} s (grace {grace:g} s)"
        raise ServiceUnavailable(f"Not ready: {triton.problem} {since}.", 5)
    detail = {"ready": triton.up, "models": list(triton.models), "last_ready_s_ago": last, "problem": triton.problem}
    message = "ready" if triton.up else f"ready (inference server not ready for {last:.0f} s: {triton.problem})"
    data = {"models": list(triton.models), "triton": detail}
    return json_response({"success": True, "message": message, "data": data})
