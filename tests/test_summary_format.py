"""Exact values of the summary format, against Ultralytics' own `Results.summary()` built from the same tensors.

No tolerance here: the parity tests allow ±1e-3 on confidences and a pixel on boxes (a GPU or another runtime may
differ that much), which would hide a format change such as rounding to 3 decimals instead of 5, normalising by the
wrong side or normalising keypoint visibility. Every expected value comes from Ultralytics' code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.vision import obb, pipeline, postprocess, preprocess
from gateway.vision.preprocess import Letterbox
from gateway.arguments import PredictArgs
from gateway.modelcard import ModelInfo
from tests.reference import mask_polygon

torch = pytest.importorskip("torch")
from ultralytics.engine.results import Results  # noqa: E402
from ultralytics.utils import nms as ul_nms  # noqa: E402
from ultralytics.utils import ops  # noqa: E402

NAMES = {i: f"class {i}" for i in range(80)}
H, W = 427, 641  # not square, odd: normalising by the wrong side or rounding a half pixel shows


def _results(**kwargs: Any) -> Results:
    return Results(np.zeros((H, W, 3), np.uint8), path="image.jpg", names=NAMES, **kwargs)


def _dets(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 6) xyxy, confidence, class in original pixels, with many decimals."""
    xy = rng.uniform(0, [W - 2, H - 2], (n, 2))
    wh = rng.uniform(1, 300, (n, 2))
    xyxy = np.concatenate([xy, np.minimum(xy + wh, [W, H])], axis=1)
    conf = rng.uniform(0.25, 1, (n, 1))
    cls = rng.integers(0, 80, (n, 1))
    return np.concatenate([xyxy, conf, cls], axis=1).astype(np.float32)


def _has_digits_past_3(summary: list[dict[str, Any]]) -> bool:
    """The rows hold values that 3-decimal rounding would change (so the test can tell 3 from 5)."""
    values = [row["confidence"] for row in summary] + [v for row in summary for v in row["box"].values()]
    return any(round(v, 3) != v for v in values)


@pytest.mark.parametrize("normalize", [False, True])
def test_box_rows_equal_ultralytics_summary(normalize: bool) -> None:
    dets = _dets(np.random.default_rng(1), 25)
    want = _results(boxes=torch.from_numpy(dets)).summary(normalize=normalize)
    got = postprocess.summary(dets, Letterbox.between((H, W), (H, W)), NAMES, normalize)
    assert len(want) == 25 and _has_digits_past_3(want)
    assert got == want
    if normalize:
        assert all(0 <= v <= 1 for row in got for v in row["box"].values())


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dims", [3, 2])
def test_keypoint_rows_equal_ultralytics_summary(normalize: bool, dims: int) -> None:
    """x and y are normalised, visibility (the third value) never is; without it there is no 'visible'."""
    rng = np.random.default_rng(2 + dims)
    dets = _dets(rng, 9)
    kpts = np.concatenate([rng.uniform(0, [W, H], (9, 17, 2)), rng.uniform(0, 1, (9, 17, 1))], axis=2)
    kpts = kpts[..., :dims].astype(np.float32)
    want = _results(boxes=torch.from_numpy(dets), keypoints=torch.from_numpy(kpts.copy())).summary(normalize=normalize)
    got = postprocess.summary(dets, Letterbox.between((H, W), (H, W)), NAMES, normalize, keypoints=kpts.copy())
    assert got == want
    assert ("visible" in got[0]["keypoints"]) == (dims == 3)
    if dims == 3:
        assert got[0]["keypoints"]["visible"] == [round(float(v), 5) for v in kpts[0, :, 2]]


@pytest.mark.parametrize("normalize", [False, True])
def test_segment_rows_equal_ultralytics_summary(normalize: bool) -> None:
    """Polygons from full-size masks (our outline of each mask against Ultralytics' masks2segments), then the format."""
    rng = np.random.default_rng(3)
    dets = _dets(rng, 6)
    yy, xx = np.mgrid[:H, :W]
    masks = np.zeros((6, H, W), np.uint8)
    for m in masks:
        for _ in range(rng.integers(1, 4)):  # one to three blobs: merged outlines too
            cx, cy, r = rng.uniform(40, W - 40), rng.uniform(40, H - 40), rng.uniform(8, 40)
            m[(xx - cx) ** 2 + ((yy - cy) * 1.3) ** 2 < r * r] = 1
    want = _results(boxes=torch.from_numpy(dets), masks=torch.from_numpy(masks.astype(np.float32))).summary(normalize)
    box = Letterbox.between((H, W), (H, W))
    polygons = [postprocess.scale_xy(mask_polygon(m, 0, 0), box) for m in masks]
    got = postprocess.summary(dets, box, NAMES, normalize, polygons=polygons)
    assert all(len(row["segments"]["x"]) > 8 for row in got)
    assert got == want


@pytest.mark.parametrize("normalize", [False, True])
def test_oriented_box_rows_equal_ultralytics_summary(normalize: bool) -> None:
    rng = np.random.default_rng(4)
    n = 12
    xywhr = np.concatenate(
        [rng.uniform(50, [W - 50, H - 50], (n, 2)), rng.uniform(5, 120, (n, 2)), rng.uniform(-0.7, 1.5, (n, 1))], axis=1
    ).astype(np.float32)
    conf = rng.uniform(0.25, 1, (n, 1)).astype(np.float32)
    cls = rng.integers(0, 15, (n, 1)).astype(np.float32)
    want = _results(obb=torch.from_numpy(np.concatenate([xywhr, conf, cls], axis=1))).summary(normalize=normalize)
    dets = np.concatenate([xywhr[:, :4], conf, cls, xywhr[:, 4:]], axis=1)  # our rows: xywh, conf, class, angle
    got = postprocess.summary(dets, Letterbox.between((H, W), (H, W)), NAMES, normalize, corners=obb.corners(xywhr))
    assert set(got[0]["box"]) == {f"{a}{i}" for a in "xy" for i in range(1, 5)}
    assert got == want


def test_top5_rows_equal_ultralytics_summary() -> None:
    probs = np.random.default_rng(5).dirichlet(np.ones(80) * 0.3).astype(np.float32)
    want = _results(probs=torch.from_numpy(probs)).summary()
    assert postprocess.top5(probs, NAMES) == want
    assert any(round(row["confidence"], 3) != row["confidence"] for row in want)


# --- pipeline.finish: raw model output → summary, against Ultralytics' predictors' own post-processing -------------


def _raw(rng: np.random.Generator, input_shape: tuple[int, int], nc: int, extra: np.ndarray) -> np.ndarray:
    """(4 + nc + extra rows, anchors) raw output: clustered xywh boxes in input pixels, sparse scores."""
    anchors = extra.shape[1]
    h, w = input_shape
    centres = rng.uniform(0, [w, h], (30, 2))[rng.integers(0, 30, anchors)] + rng.normal(0, 10, (anchors, 2))
    sizes = rng.uniform(10, min(h, w) / 2, (anchors, 2))
    # distinct scores: for equal ones the order of NMS's sort is the library's own choice (torch's sort isn't stable)
    scores = (rng.permutation(nc * anchors).reshape(nc, anchors) / (nc * anchors)) ** 6
    return np.concatenate([centres.T, sizes.T, scores, extra]).astype(np.float32)


def _ultralytics(task: str, raw: np.ndarray, protos: np.ndarray | None, box: Letterbox, args: PredictArgs, nc: int,
                 kpt_shape: tuple[int, int] | None) -> list[dict[str, Any]]:  # fmt: skip
    """DetectionPredictor.postprocess + construct_result (detect, pose, segment) in Ultralytics' code."""
    pred = ul_nms.non_max_suppression(
        torch.from_numpy(raw[None].copy()), args.confidence, args.iou, max_det=args.max_det,
        nc=0 if task == "detect" else nc,
    )[0]  # fmt: skip
    img_shape, orig = box.input_shape, (*box.orig_shape, 3)
    kwargs: dict[str, Any] = {}
    if task == "segment":
        assert protos is not None
        masks = ops.process_mask(torch.from_numpy(protos), pred[:, 6:], pred[:, :4], img_shape, upsample=True)
        keep = masks.amax((-2, -1)) > 0
        pred, kwargs["masks"] = pred[keep], masks[keep]
    if task == "pose":
        assert kpt_shape is not None
        kwargs["keypoints"] = ops.scale_coords(img_shape, pred[:, 6:].view(len(pred), *kpt_shape), orig)
    pred[:, :4] = ops.scale_boxes(img_shape, pred[:, :4], orig)
    results = Results(np.zeros(orig, np.uint8), path="image.jpg", names=NAMES, boxes=pred[:, :6], **kwargs)
    return results.summary(normalize=args.normalize)


def _info(task: str, kpt_shape: tuple[int, int] | None = None) -> ModelInfo:
    outputs = ("output0", "output1") if task == "segment" else ("output0",)
    names = {0: NAMES[0]} if task == "pose" else NAMES  # a pose model has one class
    return ModelInfo(
        name=f"test-{task}", task=task, names=names, stride=32, imgsz=640, input_name="images",
        input_format="uint8_nhwc_bgr", outputs=outputs, output_layout="raw", target="python", untrained=False,
        kpt_shape=kpt_shape,
    )  # fmt: skip


CASES = [((427, 641), 640, True), ((333, 517), 320, False), ((1080, 811), 640, True), ((95, 1501), 480, False)]


@pytest.mark.parametrize("orig_shape,size,rect", CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_finish_detect_equals_ultralytics(orig_shape: tuple[int, int], size: int, rect: bool, normalize: bool) -> None:
    _, box = preprocess.letterbox(np.zeros((*orig_shape, 3), np.uint8), size, 32, rect)
    rng = np.random.default_rng(size + orig_shape[0])
    raw = _raw(rng, box.input_shape, 80, np.zeros((0, 2000), np.float32))
    args = PredictArgs(confidence=0.25, iou=0.45, normalize=normalize)
    want = _ultralytics("detect", raw, None, box, args, 80, None)
    got = pipeline.finish(_info("detect"), {"output0": raw}, box, args)
    assert len(want) > 5
    assert got == want


@pytest.mark.parametrize("orig_shape,size,rect", CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_finish_pose_scales_keypoints_back_like_ultralytics(
    orig_shape: tuple[int, int], size: int, rect: bool, normalize: bool
) -> None:
    """Keypoints go from letterboxed-input pixels back to the image (padding off, gain undone, clipped)."""
    _, box = preprocess.letterbox(np.zeros((*orig_shape, 3), np.uint8), size, 32, rect)
    rng = np.random.default_rng(7 + size)
    anchors = 1500
    h, w = box.input_shape
    # (17 keypoints × x, y, visibility, anchors), some outside the input: clipping shows
    x, y = rng.uniform(-20, w + 20, (17, anchors)), rng.uniform(-20, h + 20, (17, anchors))
    v = rng.uniform(0, 1, (17, anchors))
    kpts = np.stack([x, y, v], axis=1).reshape(51, anchors)
    raw = _raw(rng, box.input_shape, 1, kpts)
    args = PredictArgs(confidence=0.25, iou=0.45, normalize=normalize)
    want = _ultralytics("pose", raw, None, box, args, 1, (17, 3))
    got = pipeline.finish(_info("pose", (17, 3)), {"output0": raw}, box, args)
    assert len(want) > 2 and "keypoints" in want[0]
    assert got == want


@pytest.mark.parametrize("orig_shape,size,rect", CASES[:2])
def test_finish_segment_equals_ultralytics(orig_shape: tuple[int, int], size: int, rect: bool) -> None:
    _, box = preprocess.letterbox(np.zeros((*orig_shape, 3), np.uint8), size, 32, rect)
    rng = np.random.default_rng(11 + size)
    h, w = box.input_shape
    protos = rng.normal(size=(32, h // 4, w // 4)).astype(np.float32)
    protos += np.linspace(-2, 2, w // 4, dtype=np.float32)[None, None, :]  # large regions, not speckle
    raw = _raw(rng, box.input_shape, 80, rng.normal(size=(32, 600)).astype(np.float32))
    args = PredictArgs(confidence=0.25, iou=0.45, normalize=True)
    want = _ultralytics("segment", raw, protos, box, args, 80, None)
    got = pipeline.finish(_info("segment"), {"output0": raw, "output1": protos}, box, args)
    assert len(want) > 2 and "segments" in want[0]
    assert got == want
