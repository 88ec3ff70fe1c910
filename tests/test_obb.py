"""Oriented boxes (gateway/vision/obb.py and rotated NMS) against Ultralytics' own torch functions on random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from export.onnx_graph import compact_reference
from gateway.vision import obb, postprocess
from gateway.vision.preprocess import Letterbox

torch = pytest.importorskip("torch")


def _rboxes(rng: np.random.Generator, n: int, spread: float = 640.0) -> NDArray[np.float32]:
    """(n, 5) xywhr boxes in a few clusters, so that many overlap; angles in the OBB head's [-pi/4, 3pi/4)."""
    centres = rng.uniform(0, spread, (max(n // 8, 1), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 12, (n, 2))
    wh = rng.uniform(4, 160, (n, 2))
    angle = rng.uniform(-math.pi / 4, 3 * math.pi / 4, (n, 1))
    return np.concatenate([xy, wh, angle], axis=1).astype(np.float32)


def test_probiou_matches_ultralytics_batch_probiou() -> None:
    from ultralytics.utils.metrics import batch_probiou

    rng = np.random.default_rng(0)
    a, b = _rboxes(rng, 300), _rboxes(rng, 200)
    b[:20] = a[:20]  # identical pairs
    b[20:25] = a[20:25][:, [0, 1, 3, 2, 4]]  # sides swapped …
    b[20:25, 4] += math.pi / 2  # … and turned a quarter: the same rectangle
    b[25:30, :2] += 20000  # far away
    got = obb.probiou(a, b)
    want = batch_probiou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape == (300, 200)
    # float32 log/exp may differ in the last bit between NumPy and torch; that only shows where the IoU is ~1, in
    # 1 - sqrt(1 - exp(-bd)) with bd near zero, far above any NMS threshold.
    near_one = want > 0.99
    assert np.abs(got - want)[~near_one].max() <= 2e-6 and np.abs(got - want)[near_one].max() <= 1e-3
    assert np.all(np.diag(got[:20, :20]) > 0.999), "a box overlaps itself fully"
    assert np.all(np.diag(got[20:25, 20:25]) > 0.999), "the same rectangle described the other way round"
    assert np.all(got[:, 25:30] < 1e-6), "far boxes don't overlap"


@pytest.mark.parametrize("iou", [0.1, 0.45, 0.7])
@pytest.mark.parametrize("block_elements", [obb.BLOCK_ELEMENTS, 1000])
def test_fast_nms_keeps_what_ultralytics_keeps(iou: float, block_elements: int) -> None:
    from ultralytics.utils.metrics import batch_probiou
    from ultralytics.utils.nms import TorchNMS

    rng = np.random.default_rng(int(iou * 100) + block_elements)
    boxes = _rboxes(rng, 700)
    scores = rng.uniform(0.25, 1, 700).astype(np.float32)
    got = obb.fast_nms(boxes, scores, iou, block_elements=block_elements)
    want = TorchNMS.fast_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou, iou_func=batch_probiou).numpy()
    assert 20 < len(got) < 650, "the clusters make NMS drop some boxes and keep others"
    assert got.tolist() == want.tolist()


def test_fast_nms_drops_boxes_overlapped_by_dropped_ones() -> None:
    """Fast-NMS (not greedy): C overlaps only B, B overlaps A; A drops B, and B still drops C."""
    boxes = np.array([[100, 100, 100, 40, 0], [150, 100, 100, 40, 0], [200, 100, 100, 40, 0]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    iou = obb.probiou(boxes, boxes)
    assert iou[0, 1] > 0.3 and iou[1, 2] > 0.3 and iou[0, 2] <= 0.3, "greedy NMS would keep C"
    assert obb.fast_nms(boxes, scores, 0.3).tolist() == [0]


@pytest.mark.parametrize(
    "conf,iou,classes,agnostic,max_det",
    [(0.25, 0.45, None, False, 300), (0.05, 0.3, None, False, 300), (0.25, 0.7, (1, 3), False, 300),
     (0.1, 0.45, None, True, 300), (0.1, 0.45, None, False, 17)],
)  # fmt: skip
def test_rotated_non_max_suppression_matches_ultralytics(
    conf: float, iou: float, classes: tuple[int, ...] | None, agnostic: bool, max_det: int
) -> None:
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(7)
    nc, anchors = 5, 3000
    boxes = _rboxes(rng, anchors, spread=600)
    scores = rng.uniform(0, 1, (nc, anchors)) ** 6
    raw = np.concatenate([boxes[:, :4].T, scores, boxes[:, 4:].T]).astype(np.float32)  # (4 + nc + 1, anchors)
    want = non_max_suppression(
        torch.from_numpy(raw[None]), conf, iou, list(classes) if classes else None, agnostic, max_det=max_det, nc=nc,
        rotated=True,
    )[0].numpy()  # fmt: skip
    got = postprocess.non_max_suppression(raw, conf, iou, nc, max_det, classes, agnostic, rotated=True)
    assert len(want) > 5
    assert np.array_equal(got, want)
    compact = compact_reference(raw[None], nc)[0]
    assert np.array_equal(
        postprocess.non_max_suppression(compact, conf, iou, nc, max_det, classes, agnostic, True, True), want
    )


def test_corners_match_xywhr2xyxyxyxy() -> None:
    from ultralytics.utils.ops import xywhr2xyxyxyxy

    boxes = _rboxes(np.random.default_rng(3), 500)
    got = obb.corners(boxes)
    want = xywhr2xyxyxyxy(torch.from_numpy(boxes)).numpy()
    assert got.shape == (500, 4, 2) and np.abs(got - want).max() <= 1e-4
    # the corners span a rectangle with the box's sides
    assert np.allclose(np.linalg.norm(got[:, 0] - got[:, 3], axis=1), boxes[:, 2], rtol=1e-4)
    assert np.allclose(np.linalg.norm(got[:, 0] - got[:, 1], axis=1), boxes[:, 3], rtol=1e-4)


@pytest.mark.parametrize("orig,inp", [((1080, 810), (640, 480)), ((720, 1280), (640, 640)), ((90, 1500), (64, 640))])
def test_scale_rboxes_matches_scale_boxes_xywh(orig: tuple[int, int], inp: tuple[int, int]) -> None:
    from ultralytics.utils.ops import scale_boxes

    boxes = _rboxes(np.random.default_rng(4), 50, spread=min(inp))
    boxes[:5, :2] = -30  # past the edge: oriented boxes are not clipped
    got = postprocess.scale_rboxes(boxes, Letterbox.between(orig, inp))
    want = scale_boxes(inp, torch.from_numpy(boxes[:, :4].copy()), orig, xywh=True).numpy()
    assert np.abs(got[:, :4] - want).max() <= 1e-3 and np.array_equal(got[:, 4], boxes[:, 4])
    assert (got[:5, :2] < 0).all()


def test_summary_of_oriented_boxes_has_four_corners_unclipped() -> None:
    dets = np.array([[50, 40, 80, 20, 0.75, 2, 0.3]], np.float32)
    rboxes = postprocess.scale_rboxes(dets[:, [0, 1, 2, 3, 6]], Letterbox.between((100, 200), (100, 200)))
    rboxes[0, :2] = [5, 5]  # near the corner: part of the box lies outside the image
    plain = postprocess.summary(
        dets, Letterbox.between((100, 200), (100, 200)), {2: "storage tank"}, False, corners=obb.corners(rboxes)
    )
    box = plain[0]["box"]
    assert list(box) == ["x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"]
    assert min(box.values()) < 0 and plain[0]["name"] == "storage tank" and plain[0]["confidence"] == 0.75
    norm = postprocess.summary(
        dets, Letterbox.between((100, 200), (100, 200)), {2: "storage tank"}, True, corners=obb.corners(rboxes)
    )
    assert norm[0]["box"]["x2"] == pytest.approx(box["x2"] / 200, abs=1e-5) and norm[0]["box"]["y2"] == pytest.approx(
        box["y2"] / 100, abs=1e-5
    )


def test_no_candidates_give_no_rows() -> None:
    raw = np.zeros((4 + 3 + 1, 50), np.float32)  # every score 0: nothing passes the confidence threshold
    dets = postprocess.non_max_suppression(raw, 0.25, 0.45, 3, rotated=True)
    box = Letterbox.between((100, 200), (128, 224))
    rboxes = postprocess.scale_rboxes(dets[:, [0, 1, 2, 3, -1]], box)
    assert dets.shape == (0, 7) and obb.corners(rboxes).shape == (0, 4, 2)
    assert postprocess.summary(dets, box, {}, False, corners=obb.corners(rboxes)) == []
