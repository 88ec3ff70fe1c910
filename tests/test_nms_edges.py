"""NMS at the IoU threshold itself, against torchvision (what Ultralytics' predict runs) and Ultralytics' Fast-NMS.

torchvision suppresses a box when IoU > threshold, comparing the float32 IoU with the threshold as a double: a box at
exactly the threshold is kept. Ultralytics' own fallback (TorchNMS.nms, used only when torchvision was never
imported; a YOLO predict imports it) compares in float32, which differs where float32(threshold) rounds up.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.vision import obb, postprocess

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from ultralytics.utils.metrics import batch_probiou  # noqa: E402
from ultralytics.utils.nms import TorchNMS, non_max_suppression  # noqa: E402

SCORES = np.array([0.9, 0.8], np.float32)
HALF = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)  # IoU 100 / 200 = 0.5 exactly, in any precision
# IoU 30 / 100: float32(0.3) = 0.30000001192..., above the double 0.3 but equal to float32(0.3)
THIRTY = np.array([[0, 0, 10, 10], [0, 0, 3, 10]], np.float32)


def _torchvision(boxes: np.ndarray, iou: float) -> list[int]:
    return [int(i) for i in torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(SCORES), iou)]


@pytest.mark.parametrize(
    "boxes,iou,kept",
    [(HALF, 0.5, [0, 1]),  # IoU == threshold: kept
     (HALF, float(np.nextafter(0.5, 0)), [0]),  # a hair above the threshold: suppressed
     (THIRTY, 0.3, [0]),  # float32 IoU 0.30000001 > 0.3 as a double: suppressed
     (THIRTY, float(np.float32(0.3)), [0, 1])],  # == the threshold as a double: kept
)  # fmt: skip
def test_box_at_the_iou_threshold_is_treated_as_torchvision_does(
    boxes: np.ndarray, iou: float, kept: list[int]
) -> None:
    assert _torchvision(boxes, iou) == kept
    assert postprocess.nms(boxes, SCORES, iou).tolist() == kept


@pytest.mark.parametrize("boxes,iou", [(HALF, 0.5), (THIRTY, 0.3), (THIRTY, float(np.float32(0.3)))])
def test_non_max_suppression_at_the_threshold_equals_ultralytics(boxes: np.ndarray, iou: float) -> None:
    """The whole step (raw xywh layout, class offsets) against Ultralytics' non_max_suppression with torchvision."""
    xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
    raw = np.concatenate([xywh.T, SCORES[None, :], np.zeros((1, 2), np.float32)]).astype(np.float32)  # nc = 2
    want = non_max_suppression(torch.from_numpy(raw[None].copy()), 0.25, iou, nc=2)[0].numpy()
    got = postprocess.non_max_suppression(raw, 0.25, iou, 2)
    assert np.array_equal(got, want)
    assert len(got) == len(_torchvision(boxes, iou))


def test_rotated_box_at_the_iou_threshold_is_kept_like_ultralytics_fast_nms() -> None:
    """Fast-NMS drops a box when probiou > threshold, in float32: at exactly the threshold it stays, a hair below it
    goes, in ours and in Ultralytics'. Each is given its own probiou value: float32 exp differs by an ulp between
    NumPy and torch, so the two IoUs of one pair may differ in the last bit."""
    boxes = np.array([[50, 50, 40, 20, 0.3], [55, 52, 40, 20, 0.5]], np.float32)
    ours = obb.probiou(boxes[:1], boxes[1:])[0, 0]
    theirs = batch_probiou(torch.from_numpy(boxes[:1]), torch.from_numpy(boxes[1:]))[0, 0].numpy()
    assert 0.1 < ours < 0.9 and abs(ours - theirs) < 1e-6
    boxes_t, scores_t = torch.from_numpy(boxes), torch.from_numpy(SCORES)
    below = float(np.nextafter(ours, np.float32(0))), float(np.nextafter(theirs, np.float32(0)))
    assert obb.fast_nms(boxes, SCORES, float(ours)).tolist() == [0, 1]
    assert obb.fast_nms(boxes, SCORES, below[0]).tolist() == [0]
    assert TorchNMS.fast_nms(boxes_t, scores_t, float(theirs), iou_func=batch_probiou).tolist() == [0, 1]
    assert TorchNMS.fast_nms(boxes_t, scores_t, below[1], iou_func=batch_probiou).tolist() == [0]
