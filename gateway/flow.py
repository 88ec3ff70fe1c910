"""The asynchronous flow of one prediction request: decode and letterbox every image in worker threads, send
same-shaped images to Triton as one batch, post-process each. Errors of one image don't fail the others."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from gateway import pipeline
from gateway.budget import Hold
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.pipeline import Prepared
from gateway.preprocess import decode_cost
from gateway.schemas import PredictArgs
from gateway.modelcard import ModelInfo

from gateway.services import Services


@dataclass
class Outcome:
    """One image's result: the summary rows and its shape, or the error that stopped it."""

    rows: list[dict[str, Any]] | None = None
    shape: tuple[int, int] | None = None
    image: NDArray[np.uint8] | None = None  # the decoded image, kept only when an annotated image is asked for
    error: GatewayError | None = None
    speed: dict[str, float] = field(default_factory=dict)


async def run(
    state: Services, info: ModelInfo, datas: list[bytes], args: PredictArgs, timings: dict[str, float], hold: Hold
) -> list[Outcome]:
    """Decode and letterbox every image, run same-shaped ones through Triton as one batch, post-process each.

    Each image's decoded size is reserved in `hold` before it is decoded; its bytes in `datas` are dropped as soon
    as it is decoded, and the decoded image itself once letterboxed (unless an annotated image is asked for)."""
    settings = state.settings
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
            await hold.take(await state.workers.run(decode_cost, datas[i], settings.max_pixels))
            prepared[i] = await state.workers.run(
                pipeline.prepare, datas[i], info, args.size, rect, settings.max_pixels, stage_ms[i],
                settings.fast_jpeg, args.format != "json"
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
            async with state.triton.infer(info, [_ready(prepared[i]).tensor for i in ids]) as result:
                chunk_ms[k] = (time.perf_counter() - start) * 1000
                per_image = chunk_ms[k] / len(ids)  # a batch's inference time, split evenly (as Ultralytics does)
                for n, i in enumerate(ids):
                    item = _ready(prepared[i])
                    begin = time.perf_counter()
                    outcomes[i].rows = await state.workers.run(
                        pipeline.finish, info, {name: out[n] for name, out in result.items()}, item.box, args
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
