"""The Starlette application: routes, lifespan, and the request flow of one prediction."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
from gateway.errors import HANDLERS, BadRequest, GatewayError, PayloadTooLarge, ServiceUnavailable
from gateway.fetch import fetch_image
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import Metrics
from gateway.openapi import SPEC
from gateway.observability import RequestContext, configure_logging
from gateway.ratelimit import RateLimiter
from gateway.schemas import PredictArgs, images_body, parse_args, success
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


async def parse_form(request: Request, body: bytes, max_files: int) -> FormData:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        if content_type == "multipart/form-data":
            parser = MultiPartParser(
                request.headers, stream(), max_files=max_files, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
            )
            return await parser.parse()
        if content_type == "application/x-www-form-urlencoded":
            return await FormParser(request.headers, stream(), max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES).parse()
    except MultiPartException as exc:
        message = exc.message
        if "Too many files" in message:
            message = f"At most {max_files} image(s) may be sent per request"
        raise BadRequest(f"Malformed form data: {message}. Send multipart/form-data with 'image' file part(s).") from None
    if body.strip():
        raise BadRequest("Unsupported request body: send multipart/form-data (an 'image' file part) or form fields.")
    return FormData()


def api_key(request: Request) -> str | None:
    """The key from `x-api-key`, or from `Authorization: Bearer <key>` (the newer Ultralytics API's header)."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def model_from_slug(slug: str) -> str:
    """`alice/project/yolov8n` or `https://hub.ultralytics.com/models/yolov8n` → `yolov8n` (the last segment)."""
    return slug.strip().rstrip("/").rsplit("/", 1)[-1]


async def predict(request: Request) -> Response:
    """HUB v1: POST /v1/predict/{model_id}."""
    return await _handle(request, request.path_params["model_id"], "v1")


async def predict_platform(request: Request) -> Response:
    """The newer Ultralytics API: POST /api/models/{owner/project/model}/predict, answered in the `images` format."""
    return await _handle(request, model_from_slug(request.path_params["slug"]), "v2")


async def predict_dedicated(request: Request) -> Response:
    """POST / with the model in a `model` form field (a HUB model URL or an id), answered in the `images` format."""
    return await _handle(request, None, "v2")


async def _handle(request: Request, model_id: str | None, style: str) -> Response:
    state: State = request.app.state.gateway
    settings = state.settings
    started = time.perf_counter()
    context = request.scope.get("state", {}).get("context", {})
    context["predict"] = True
    if model_id is not None:
        context["model"] = model_id[:64]
    # the key is checked before the body is read; its model scope as soon as the model is known
    entry = state.keys.authenticate(api_key(request), model_id)
    context["key_id"] = entry.id
    state.limiter.check(entry.id, entry.rate)
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
            images, fields = _collect(request, form, style)
            state.limiter.charge(entry.id, entry.rate, len(images) - 1)  # each image costs one token
            if model_id is None:
                model_id = model_from_slug(fields.get("model", ""))
                if not model_id:
                    raise BadRequest("Missing 'model': send the model id (or its HUB URL) in the 'model' field.")
                context["model"] = model_id[:64]
                state.keys.authenticate(api_key(request), model_id)
                info = await state.triton.model(model_id)
            state.metrics.models.add(info.name)
            context["task"] = info.task
            return await _predict(state, info, images, fields, style, started, context)
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


def _collect(request: Request, form: FormData, style: str) -> tuple[list[UploadFile], dict[str, str]]:
    """The image parts in order, and the arguments (a form field wins over the query parameter of the same name)."""
    part = "image" if style == "v1" else "file"
    images: list[UploadFile] = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in ("image", "file"):
                raise BadRequest(f"Unexpected file part '{key[:32]}': send images as '{part}' file parts.")
            images.append(value)
    texts = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    fields = {**_once(request.query_params.multi_items(), "query string"), **_once(texts, "form")}
    for name in ("image", "file"):
        if not images and isinstance(form.get(name), str) and form.get(name):
            raise BadRequest(f"'{name}' must be a file part (curl: -F \"{name}=@photo.jpg\"), not a text field.")
    return images, fields


@dataclass
class Outcome:
    """One image's result: the summary rows and its shape, or the error that stopped it."""

    rows: list[dict[str, Any]] | None = None
    shape: tuple[int, int] | None = None
    image: Any = None  # the decoded image, kept only when an annotated image is asked for
    error: GatewayError | None = None
    speed: dict[str, float] = field(default_factory=dict)


async def _predict(
    state: State, info: ModelInfo, uploads: list[UploadFile], fields: dict[str, str], style: str, started: float,
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
    outcomes = await _run(state, info, datas, args, timings)
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
        )
        media_type = f"image/{args.format}"
        timings["render"] = (time.perf_counter() - t3) * 1000
    else:
        body, media_type = orjson.dumps(_body(info, args, outcomes, style)), "application/json"
    timings["total"] = (time.perf_counter() - started) * 1000
    server_timing = ", ".join(f"{k};dur={v:.2f}" for k, v in timings.items())
    return Response(body, media_type=media_type, headers={"Server-Timing": server_timing})


async def _run(
    state: State, info: ModelInfo, datas: list[bytes], args: PredictArgs, timings: dict[str, float]
) -> list[Outcome]:
    """Decode and letterbox every image, run same-shaped ones through Triton as one batch, post-process each."""
    settings = state.settings
    rect = settings.letterbox == "rect"
    outcomes = [Outcome() for _ in datas]
    prepared: list[tuple[Any, Any, Any] | None] = [None] * len(datas)
    stage_ms: list[dict[str, float]] = [{} for _ in datas]

    async def prepare(i: int) -> None:
        if len(datas[i]) > settings.max_upload_bytes:
            limit = settings.max_upload_bytes // 2**20
            outcomes[i].error = PayloadTooLarge(f"The image is larger than the {limit} MiB upload limit.")
            return
        try:
            prepared[i] = await anyio.to_thread.run_sync(
                pipeline.prepare, datas[i], info, args.size, rect, settings.max_pixels, stage_ms[i], settings.fast_jpeg,
                limiter=state.limiter_threads,
            )
        except GatewayError as exc:
            outcomes[i].error = exc

    async with anyio.create_task_group() as group:
        for i in range(len(datas)):
            group.start_soon(prepare, i)
    for ms in stage_ms:
        for stage, value in ms.items():
            timings[stage] = timings.get(stage, 0.0) + value

    # same input shape → one Triton request (at most max_batch_size images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(prepared):
        if item is not None:
            groups.setdefault(item[1].shape, []).append(i)
    batch = max(info.max_batch_size, 1)
    chunks = [ids[j : j + batch] for ids in groups.values() for j in range(0, len(ids), batch)]
    chunk_ms = [0.0] * len(chunks)

    async def infer(k: int) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return await state.triton.infer_batch(info, [prepared[i][1] for i in chunks[k]])  # type: ignore[index]
        finally:
            chunk_ms[k] = (time.perf_counter() - start) * 1000

    t1 = time.perf_counter()
    results = await _gather([infer(k) for k in range(len(chunks))])
    timings["triton"] = (time.perf_counter() - t1) * 1000
    for ids, result, ms in zip(chunks, results, chunk_ms):
        per_image = ms / len(ids)  # a batch's inference time, split evenly over its images (as Ultralytics does)
        if isinstance(result, GatewayError):
            for i in ids:
                outcomes[i].error = result
            continue
        for k, i in enumerate(ids):
            image, _, box = prepared[i]  # type: ignore[misc]
            start = time.perf_counter()
            outcomes[i].rows = await anyio.to_thread.run_sync(
                pipeline.finish, info, {name: out[k] for name, out in result.items()}, box, args,
                limiter=state.limiter_threads,
            )
            post = (time.perf_counter() - start) * 1000
            outcomes[i].shape = (int(image.shape[0]), int(image.shape[1]))
            outcomes[i].image = image if args.format != "json" else None
            outcomes[i].speed = {
                "preprocess": stage_ms[i].get("decode", 0.0) + stage_ms[i].get("letterbox", 0.0),
                "inference": per_image,
                "postprocess": post,
            }
            timings["postprocess"] = timings.get("postprocess", 0.0) + post
    return outcomes


async def _gather(calls: list[Any]) -> list[Any]:
    """Await the calls concurrently; a GatewayError becomes that call's result instead of failing the others."""
    results: list[Any] = [None] * len(calls)

    async def one(k: int) -> None:
        try:
            results[k] = await calls[k]
        except GatewayError as exc:
            results[k] = exc

    async with anyio.create_task_group() as group:
        for k in range(len(calls)):
            group.start_soon(one, k)
    return results


def _body(info: ModelInfo, args: PredictArgs, outcomes: list[Outcome], style: str) -> dict[str, Any]:
    if style == "v2":
        return images_body(info.name, info.task, args, [_image_entry(o) for o in outcomes])
    if len(outcomes) == 1:
        return success(outcomes[0].rows or [])
    entries = [
        {"success": True, "message": "Inference complete.", "data": o.rows}
        if o.error is None
        else {"success": False, "message": o.error.message, "status": o.error.status, "data": []}
        for o in outcomes
    ]
    done = sum(o.error is None for o in outcomes)
    return {"success": True, "message": f"Inference complete for {done} of {len(outcomes)} images.", "data": entries}


def _image_entry(o: Outcome) -> dict[str, Any]:
    if o.error is not None:
        return {"results": [], "shape": None, "speed": None, "error": {"status": o.error.status, "message": o.error.message}}
    speed = {k: round(v, 3) for k, v in o.speed.items()}
    return {"results": o.rows, "shape": list(o.shape or ()), "speed": speed}


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
    """200 while this gateway can serve: Triton up now or within GATEWAY_READY_GRACE_S (a Triton rollout or blip must
    not take every gateway out of the Service at once, which turns JSON 503s into the ingress' HTML 503s)."""
    state: State = request.app.state.gateway
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
        Route("/api/models/{slug:path}/predict", predict_platform, methods=["POST"]),
        Route("/", predict_dedicated, methods=["POST"]),
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
