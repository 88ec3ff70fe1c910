"""The asynchronous flow of a prediction request for images: read them (uploaded, inline in base64, or fetched from
a URL), decode and letterbox every image in worker threads, send same-shaped images to Triton as one batch,
post-process each, and answer (JSON, or an annotated image). Errors of one image don't fail the others."""

from __future__ import annotations

import time

import anyio
import orjson
from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.arguments import PredictArgs, check_classes
from gateway.dialects import Call
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge
from gateway.modelcard import ModelInfo
from gateway.predict import responses, tracked
from gateway.predict.fetch import decode_source, fetch_image, is_url
from gateway.predict.responses import Outcome
from gateway.services import Prediction
from gateway.vision import pipeline, render
from gateway.vision.pipeline import Prepared
from gateway.vision.preprocess import decode_cost


async def respond(
    prediction: Prediction, info: ModelInfo, uploads: list[UploadFile], fields: dict[str, str]
) -> Response:
    """The answer to a request for images (uploaded, or the `url` or `source` argument)."""
    services = prediction.services
    settings = services.settings
    timings = prediction.record.timings
    dialect = prediction.dialect
    args = dialect.parse(fields, info.imgsz)
    if args.stream:
        raise BadRequest("'stream=true' applies to a video upload; an image is answered in one response.")
    if info.task != "classify":  # classifiers ignore `classes`, as Ultralytics' do
        check_classes(args.classes, info.name, len(info.names))
    if args.source and (uploads or args.url):
        raise BadRequest("Send one of: image file(s), 'url' or 'source' (a URL or base64 image), not several.")
    url = args.source if args.source and is_url(args.source) else args.url
    inline = None
    if args.source and not url:  # base64 of up to the upload limit: decoded off the event loop
        inline = await services.workers.run(decode_source, args.source, settings.max_upload_bytes)
    if uploads and url:
        raise BadRequest("Send either image file(s) or a URL, not both.")
    if not uploads and not url and inline is None:
        raise BadRequest(dialect.missing)
    if len(uploads) > 1 and args.format != "json":
        raise BadRequest("An annotated image (format=image/png) is made for one image per request; send one image.")
    tracked.check(info, args)
    sequence = await tracked.open_sequence(prediction, info, args, len(uploads) or 1) if args.sequence else None

    t0 = time.perf_counter()
    if uploads:  # one byte more than the limit is enough for `run` to refuse an image that is too large
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
                record=prediction.record,
            )
        ]
        timings["fetch"] = (time.perf_counter() - t0) * 1000
    outcomes = await run(prediction, info, datas, args, sequence.tracker if sequence else None)
    failed = [o for o in outcomes if o.error is not None]
    if len(failed) == len(outcomes):  # nothing succeeded: the request fails with the (first) image's own error
        error = failed[0].error
        assert error is not None
        if len(outcomes) > 1:
            error.message = f"Image 1 of {len(outcomes)}: {error.message}"
        raise error
    extra = await tracked.close_sequence(prediction, sequence) if sequence else {}

    t3 = time.perf_counter()
    if args.format != "json":
        only = outcomes[0]
        assert only.image is not None and only.rows is not None  # kept for format=image, and it succeeded
        body = await services.workers.run(
            render.encode_annotated, only.image, only.rows, info.task, args.format, args.normalize
        )  # fmt: skip
        media_type = f"image/{args.format}"
        timings["render"] = (time.perf_counter() - t3) * 1000
    else:
        answer = dialect.answer(Call(info, args, prediction.started, fields.get("model", "").strip()), outcomes)
        body, media_type = orjson.dumps(answer), "application/json"
    timings["total"] = (time.perf_counter() - prediction.started) * 1000
    return Response(body, media_type=media_type, headers=responses.headers(info, timings) | extra)


async def run(
    prediction: Prediction,
    info: ModelInfo,
    datas: list[bytes],
    args: PredictArgs,
    tracker: tracked.Tracker | None = None,
) -> list[Outcome]:
    """Decode and letterbox every image, run same-shaped ones through Triton as one batch, post-process each.

    Each image's decoded size is reserved in the request's hold before it is decoded; its bytes in `datas` are
    dropped as soon as it is decoded, and the decoded image itself once letterboxed (unless an annotated image is
    asked for, or BoT-SORT needs its pixels). Stage times add up in the request's record. With `track`, each image
    is tracked by `tracker` (a sequence's frame) or by a tracker of its own."""
    services = prediction.services
    timings = prediction.record.timings
    settings = services.settings
    rect = settings.letterbox == "rect"
    outcomes = [Outcome() for _ in datas]
    prepared: list[Prepared | None] = [None] * len(datas)
    stage_ms: list[dict[str, float]] = [{} for _ in datas]

    async def prepare(i: int) -> None:
        if len(datas[i]) > settings.max_upload_bytes:
            limit = settings.max_upload_bytes // 2**20
            outcomes[i].error = PayloadTooLarge(f"The image is larger than the {limit} MiB upload limit.")
            return
        try:
            await prediction.hold.reserve(await services.workers.run(decode_cost, datas[i], settings.max_pixels))
            prepared[i] = await services.workers.run(
                pipeline.prepare, datas[i], info, args.size, rect, settings.max_pixels, stage_ms[i],
                settings.fast_jpeg, args.format != "json" or tracked.needs_frames(args)
            )  # fmt: skip
        except GatewayError as exc:
            outcomes[i].error = exc
        finally:
            datas[i] = b""  # the upload is not needed once decoded (the caller's list is this list)

    if len(datas) == 1:  # the usual request: no task group to run one task
        await prepare(0)
    else:
        async with anyio.create_task_group() as group:
            for i in range(len(datas)):
                group.start_soon(prepare, i)
    for one in stage_ms:
        for stage, value in one.items():
            timings[stage] = timings.get(stage, 0.0) + value

    # same input shape → one Triton request (at most max_batch_size images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(prepared):
        if item is not None:
            groups.setdefault(item.tensor.shape, []).append(i)
    batch = max(info.max_batch_size, 1)
    chunks = [ids[j : j + batch] for ids in groups.values() for j in range(0, len(ids), batch)]
    chunk_ms = [0.0] * len(chunks)

    async def infer_and_finish(k: int) -> None:
        """One chunk through Triton, then each of its images post-processed while its outputs are valid."""
        ids = chunks[k]
        start = time.perf_counter()
        try:
            async with services.triton.infer(info, [_ready(prepared[i]).tensor for i in ids]) as result:
                chunk_ms[k] = (time.perf_counter() - start) * 1000
                per_image = chunk_ms[k] / len(ids)  # a batch's inference time, split evenly (as Ultralytics does)
                for n, i in enumerate(ids):
                    item = _ready(prepared[i])
                    begin = time.perf_counter()
                    track = tracker or (tracked.Tracker.start(info, args) if args.track else None)
                    then = track.then(item.box.orig_shape, item.image) if track else None
                    outcomes[i].rows = await services.workers.run(
                        pipeline.finish, info, {name: out[n] for name, out in result.items()}, item.box, args, then
                    )  # fmt: skip
                    post = (time.perf_counter() - begin) * 1000
                    outcomes[i].shape = item.box.orig_shape
                    outcomes[i].image = item.image
                    outcomes[i].speed = {
                        "preprocess": stage_ms[i].get("decode", 0.0) + stage_ms[i].get("letterbox", 0.0),
                        "inference": per_image,
                        "postprocess": post,
                    }
                    timings["postprocess"] = timings.get("postprocess", 0.0) + post
        except GatewayError as exc:
            chunk_ms[k] = chunk_ms[k] or (time.perf_counter() - start) * 1000
            for i in ids:
                if outcomes[i].rows is None:
                    outcomes[i].error = exc

    if len(chunks) == 1:
        await infer_and_finish(0)
    elif chunks:
        async with anyio.create_task_group() as group:
            for k in range(len(chunks)):
                group.start_soon(infer_and_finish, k)
    if chunks:
        timings["triton"] = max(chunk_ms)  # the chunks run concurrently
    return outcomes


def _ready(item: Prepared | None) -> Prepared:
    assert item is not None  # only prepared images are grouped into batches
    return item
