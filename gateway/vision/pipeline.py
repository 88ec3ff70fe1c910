"""The synchronous steps of one prediction: bytes → model input, and raw outputs → the summary list.

Pure functions, run in a worker thread by the app so the event loop never blocks on pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.arguments import PredictArgs
from gateway.modelcard import COMPACT, FLOAT32_NCHW_RGB, RESIZE_CENTER_CROP, ModelInfo
from gateway.vision import masks, obb, postprocess, preprocess
from gateway.vision.preprocess import Letterbox

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Prepared:
    """One image ready for Triton: the decoded image, its model input and how the one maps to the other."""

    image: NDArray[np.uint8] | None  # (H, W, 3) uint8 BGR as decoded; None unless kept (it is the largest array)
    tensor: NDArray[Any]  # the model input without the batch dimension
    box: Letterbox


def prepare(
    data: bytes,
    info: ModelInfo,
    size: int,
    rect: bool,
    max_pixels: int,
    timings: dict[str, float],
    fast_jpeg: bool = True,
    keep_image: bool = False,
) -> Prepared:
    """The decoded image, its model input tensor and the letterbox; fills decode/letterbox ms.

    Classifiers are resized and centre-cropped instead of letterboxed (`rect` does not apply); the Letterbox then
    only records the shapes.
    """
    t0 = time.perf_counter()
    image = preprocess.decode(data, max_pixels, fast_jpeg)
    t1 = time.perf_counter()
    tensor, box = model_input(image, info, size, rect, max_pixels)
    t2 = time.perf_counter()
    timings["decode"] = (t1 - t0) * 1000
    timings["letterbox"] = (t2 - t1) * 1000
    return Prepared(image if keep_image else None, tensor, box)


def model_input(
    image: NDArray[np.uint8], info: ModelInfo, size: int, rect: bool, max_pixels: int
) -> tuple[NDArray[Any], Letterbox]:
    """The model input for a decoded (H, W, 3) BGR image (an uploaded image or a video frame) and its letterbox."""
    target = preprocess.target_size(size, info.stride)
    tensor: NDArray[Any]
    if info.preprocess == RESIZE_CENTER_CROP:
        tensor, box = preprocess.resize_center_crop(image, target, max_pixels)
    else:
        tensor, box = preprocess.letterbox(image, target, info.stride, rect)
    if info.input_format == FLOAT32_NCHW_RGB:
        tensor = np.ascontiguousarray(tensor[..., ::-1].transpose(2, 0, 1)).astype(np.float32) / np.float32(255)
    return tensor, box


def finish(
    info: ModelInfo,
    outputs: dict[str, NDArray[np.float32]],
    box: Letterbox,
    args: PredictArgs,
    then: Callable[[Found], Found] | None = None,
) -> list[dict[str, Any]]:
    """The summary list for one image from the model's raw outputs.

    Classifiers give their top five classes; confidence, iou, max_det, classes and agnostic don't apply to them
    (Ultralytics' classify predictor ignores them too). `then`: a step between the detections and their summary
    (tracking: gateway/predict/tracked.py), given and returning them in original-image pixels.
    """
    pred = outputs[info.outputs[0]]
    if info.task == "classify":
        return postprocess.top5(pred, info.names, args.decimals)
    found = detect(info, outputs, box, args)
    return summarize(then(found) if then is not None else found, box, info, args)


@dataclass(frozen=True)
class Found:
    """One image's detections in original-image pixels, as Ultralytics' `Results` holds them before `summary()`.

    boxes: (N, 4) xyxy clipped to the image, or (N, 5) xywhr (obb, not clipped); scores, classes: (N,) float32;
    polygons: N mask outlines (K, 2) (segment); keypoints: (N, kpts, 2 or 3) (pose); track_ids: (N,) int64 once
    tracked (None: the rows carry no `track_id`)."""

    boxes: F32
    scores: F32
    classes: F32
    polygons: list[F32] | None = None
    keypoints: F32 | None = None
    track_ids: NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.scores)


def detect(info: ModelInfo, outputs: dict[str, NDArray[np.float32]], box: Letterbox, args: PredictArgs) -> Found:
    """The detections of a detect, segment, pose or obb model from its raw outputs: NMS, masks, scaling."""
    pred = outputs[info.outputs[0]]
    nc = len(info.names)
    compact = info.output_layout == COMPACT
    rotated = info.task == "obb"
    dets = postprocess.non_max_suppression(
        pred, args.confidence, args.iou, nc, args.max_det, args.classes, args.agnostic, compact, rotated
    )
    if rotated:
        rboxes = postprocess.scale_rboxes(dets[:, [0, 1, 2, 3, -1]], box)
        return Found(rboxes, dets[:, 4].copy(), dets[:, 5].copy())
    polygons = keypoints = None
    if info.task == "segment":
        dets, polygons = masks.segments(dets, outputs[info.outputs[1]], box, nc)
    elif info.task == "pose" and info.kpt_shape:
        k = dets[:, 6:].reshape(len(dets), *info.kpt_shape).copy()
        keypoints = postprocess.scale_xy(k, box)
    boxes = postprocess.scale_boxes(dets[:, :4], box)
    return Found(boxes, dets[:, 4].copy(), dets[:, 5].copy(), polygons, keypoints)


def summarize(found: Found, box: Letterbox, info: ModelInfo, args: PredictArgs) -> list[dict[str, Any]]:
    """Ultralytics' `Results.summary()` rows of the detections (a `track_id` after each box once tracked)."""
    scores = np.stack([found.scores, found.classes], axis=1).astype(np.float32)
    decimals, ids = args.decimals, found.track_ids
    if info.task == "obb":
        dets = np.concatenate([np.zeros((len(found), 4), np.float32), scores], axis=1)
        corners = obb.corners(found.boxes)
        return postprocess.summary(dets, box, info.names, args.normalize, corners=corners, decimals=decimals, ids=ids)
    dets = np.concatenate([found.boxes, scores], axis=1)
    polygons, keypoints = found.polygons, found.keypoints
    return postprocess.summary(dets, box, info.names, args.normalize, polygons, keypoints, decimals=decimals, ids=ids)
