"""The Starlette application: routes, lifespan, and the request flow of one prediction."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import pipeline, render, web
from gateway.auth import KeyStore
from gateway.errors import HANDLERS, BadRequest, PayloadTooLarge, ServiceUnavailable
from gateway.fetch import fetch_image
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import Metrics
from gateway.openapi import SPEC
from gateway.observability import RequestContext, configure_logging
from gateway.ratelimit import RateLimiter
from gateway.schemas import parse_args, success
from gateway.settings import Settings
from gateway.triton import ModelInfo, Triton

log = logging.getLogger("gateway")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields around the image
MAX_FIELDS = 16
MAX_FIELD_BYTES = 4096


@dataclass
class State:
    settings: Settings
    triton: Triton
    keys: KeyStore
    limiter: RateLimiter
    limiter_threads: anyio.CapacityLimiter
    metrics: Metrics
    inflight: int = 0


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    too_large = f"The request is larger than the {limit // 2**20} MiB upload limit. Send a smaller image."
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_form(request: Request, body: bytes) -> FormData:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        if content_type == "multipart/form-data":
            parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
            return await parser.parse()
        if content_type == "application/x-www-form-urlencoded":
            return await FormParser(request.headers, stream(), max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES).parse()
    except MultiPartException as exc:
        message = exc.message
        if "Too many files" in message:
            message = "Only one 'image' file may be sent per request"
        raise BadRequest(f"Malformed form data: {message}. Send multipart/form-data with one 'image' file part.") from None
    if body.strip():
        raise BadRequest("Unsupported request body: send multipart/form-data (an 'image' file part) or form fields.")
    return FormData()


async def predict(request: Request) -> Response:
    state: State = request.app.state.gateway
    settings = state.settings
    model_id = request.path_params["model_id"]
    started = time.perf_counter()
    context = request.scope.get("state", {}).get("context", {})
    context["model"] = model_id[:64]
    entry = state.keys.authenticate(request.headers.get("x-api-key"), model_id)
    context["key_id"] = entry.id
    state.limiter.check(entry.id, entry.rate)
    info = await state.triton.model(model_id)
    state.metrics.models.add(info.name)
    context["task"] = info.task
    if state.inflight >= settings.max_inflight:
        raise ServiceUnavailable("The server is busy (too many requests in flight). Retry shortly.", retry_after=1)
    state.inflight += 1
    state.metrics.inflight.inc()
    try:
        body = await read_body(request, settings.max_upload_bytes + FORM_OVERHEAD)
        context["bytes"] = len(body)
        form = await parse_form(request, body)
        try:
            return await _predict(state, info, request, form, started, context)
        finally:
            await form.close()
    finally:
        state.inflight -= 1
        state.metrics.inflight.dec()


def _once(items: list[tuple[str, str]], where: str) -> dict[str, str]:
    """The arguments as a dict; BadRequest when one is given twice."""
    out: dict[str, str] = {}
    for key, value in items:
        if key in out:
            raise BadRequest(f"Argument '{key[:32]}' was given more than once in the {where}; send it once.")
        out[key] = value
    return out


async def _predict(
    state: State, info: ModelInfo, request: Request, form: FormData, started: float, context: dict[str, Any]
) -> Response:
    settings = state.settings
    image: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in ("image", "file"):
                raise BadRequest(f"Unexpected file part '{key[:32]}': send the image as the 'image' file part.")
            image = value
    texts = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    # a form field wins over the query parameter of the same name
    fields = {**_once(request.query_params.multi_items(), "query string"), **_once(texts, "form")}
    if image is None and isinstance(form.get("image"), str) and form.get("image"):
        raise BadRequest("'image' must be a file part (curl: -F \"image=@photo.jpg\"), not a text field.")
    args = parse_args(fields, info.imgsz)
    if image is not None and args.url:
        raise BadRequest("Send either an image file or a URL, not both.")
    if image is None and not args.url:
        raise BadRequest("An image file or URL must be submitted.")

    timings: dict[str, float] = {}
    context["timings"] = timings
    t0 = time.perf_counter()
    if image is not None:
        data = await image.read()
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"The image is larger than the {settings.max_upload_bytes // 2**20} MiB upload limit.")
    else:
        data = await fetch_image(
            args.url,
            max_bytes=settings.max_upload_bytes,
            timeout_s=settings.url_timeout_s,
            max_redirects=settings.url_max_redirects,
            allow_hosts=settings.url_allow_hosts,
        )
        timings["fetch"] = (time.perf_counter() - t0) * 1000

    rect = settings.letterbox == "rect"
    image_bgr, tensor, box = await anyio.to_thread.run_sync(
        pipeline.prepare, data, info, args.size, rect, settings.max_pixels, timings, limiter=state.limiter_threads
    )
    t1 = time.perf_counter()
    outputs = await state.triton.infer(info, tensor)
    t2 = time.perf_counter()
    data_out = await anyio.to_thread.run_sync(
        pipeline.finish, info, outputs, box, args, limiter=state.limiter_threads
    )
    t3 = time.perf_counter()
    timings["triton"] = (t2 - t1) * 1000
    timings["postprocess"] = (t3 - t2) * 1000
    if args.format == "json":
        body, media_type = orjson.dumps(success(data_out)), "application/json"
    else:
        body = await anyio.to_thread.run_sync(
            render.encode_annotated, image_bgr, data_out, info.task, args.format, args.normalize, limiter=state.limiter_threads
        )
        media_type = f"image/{args.format}"
        timings["render"] = (time.perf_counter() - t3) * 1000
    timings["total"] = (time.perf_counter() - started) * 1000
    server_timing = ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())
    return Response(body, media_type=media_type, headers={"Server-Timing": server_timing})


async def list_models(request: Request) -> Response:
    state: State = request.app.state.gateway
    models = await state.triton.ready_models()
    return json_response({"success": True, "message": f"{len(models)} model(s) ready.", "data": [m.public() for m in models]})


async def get_model(request: Request) -> Response:
    state: State = request.app.state.gateway
    info = await state.triton.model(request.path_params["model_id"])
    return json_response({"success": True, "message": "Model ready.", "data": info.public()})


async def metrics(request: Request) -> Response:
    state: State = request.app.state.gateway
    return Response(state.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    return json_response(SPEC)


async def healthz(request: Request) -> Response:
    return json_response({"success": True, "message": "alive", "data": {}})


async def readyz(request: Request) -> Response:
    state: State = request.app.state.gateway
    if not await state.triton.server_ready():
        raise ServiceUnavailable("Not ready: the inference server is unreachable or still loading models.", 5)
    models = await state.triton.ready_models()
    if not models:
        raise ServiceUnavailable("Not ready: no model is loaded in the inference server.", 5)
    return json_response({"success": True, "message": "ready", "data": {"models": [m.name for m in models]}})


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    configure_logging()
    meters = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        triton = Triton(settings.triton_url, settings.triton_timeout_s, settings.model_cache_s)
        app.state.gateway = State(
            settings, triton, KeyStore(settings.keys_file), RateLimiter(), anyio.CapacityLimiter(settings.workers), meters
        )
        try:
            for model in await triton.ready_models():
                if model.untrained:
                    log.warning("model %s serves UNTRAINED fixture weights: results are not real detections", model.name)
        except Exception as exc:  # Triton may still be starting; /readyz reports it
            log.warning("inference server not reachable at start-up (%s): %s", settings.triton_url, exc)
        yield
        await triton.close()

    routes = [
        Route("/v1/predict/{model_id:path}", predict, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        *web.routes(),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        middleware=[Middleware(RequestContext, metrics=meters)],
        lifespan=lifespan,
    )
