"""Pure array functions: letterbox geometry, NMS, masks, polygons — properties, not copied outputs."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.vision import masks, postprocess, preprocess
from gateway.vision.preprocess import Letterbox
from tests.reference import mask_polygon


@pytest.mark.parametrize("h,w", [(1080, 810), (720, 1280), (90, 1500), (20, 20), (1, 3000), (640, 640)])
@pytest.mark.parametrize("size,rect", [(640, True), (640, False), (320, True), (512, False)])
def test_letterbox_then_unletterbox_is_identity(h: int, w: int, size: int, rect: bool) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    out, box = preprocess.letterbox(image, size, 32, rect)
    assert out.shape[2] == 3 and box.input_shape == out.shape[:2]
    if rect:
        assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0 and max(out.shape[:2]) == size
    else:
        assert out.shape[:2] == (size, size)
    # the image corners map back to themselves
    (gain_x, gain_y), (pad_x, pad_y) = box.gain, box.pad
    corners = np.array([[pad_x, pad_y, pad_x + w * gain_x, pad_y + h * gain_y]], np.float32)
    back = postprocess.scale_boxes(corners, box)
    assert np.allclose(back, [[0, 0, w, h]], atol=1e-3)


@pytest.mark.parametrize("h,w", [(1080, 810), (720, 1280), (90, 1500), (1001, 2000), (333, 1)])
def test_letterbox_pad_is_where_the_image_starts(h: int, w: int) -> None:
    out, box = preprocess.letterbox(np.full((h, w, 3), 7, np.uint8), 640, 32, rect=True)
    rows, cols = np.nonzero(out[..., 0] != 114)
    assert (int(cols.min()), int(rows.min())) == box.pad
    assert box.gain[0] * w == pytest.approx(cols.max() + 1 - cols.min(), abs=1)


def test_letterbox_pads_with_114_and_keeps_content_centred() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    out, _ = preprocess.letterbox(image, 64, 32, rect=False)
    assert out.shape == (64, 64, 3)
    assert (out[0] == 114).all() and (out[-1] == 114).all() and (out[32] == 7).all()


def test_target_size_rounds_up_to_stride() -> None:
    assert [preprocess.target_size(s, 32) for s in (32, 33, 500, 640, 1280)] == [32, 64, 512, 640, 1280]


def test_nms_keeps_the_higher_score_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.6, 0.9, 0.5], np.float32)
    assert postprocess.nms(boxes, scores, 0.45).tolist() == [1, 2]
    assert postprocess.nms(boxes, scores, 0.95).tolist() == [1, 0, 2]


def test_nms_is_class_aware_and_caps_detections() -> None:
    # two identical boxes of different classes both survive; raw layout (4 + nc, anchors), xywh boxes
    nc = 3
    pred = np.zeros((4 + nc, 400), np.float32)
    pred[:4] = np.array([[50], [50], [20], [20]], np.float32)
    pred[4, :200] = np.linspace(0.3, 0.9, 200)
    pred[5, 200:] = np.linspace(0.3, 0.9, 200)
    dets = postprocess.non_max_suppression(pred, 0.25, 0.45, nc)
    assert sorted(dets[:, 5].tolist()) == [0.0, 1.0]
    spread = pred.copy()
    spread[0] = np.arange(400) * 100  # no overlaps: the 300 cap applies
    dets = postprocess.non_max_suppression(spread, 0.25, 0.45, nc)
    assert len(dets) == 300 and np.all(np.diff(dets[:, 4]) <= 0)


def test_confidence_threshold_is_strict() -> None:
    pred = np.zeros((5, 2), np.float32)
    pred[:4] = [[10, 40], [10, 40], [4, 4], [4, 4]]
    pred[4] = [np.float32(0.25), np.float32(0.2500001)]
    assert len(postprocess.non_max_suppression(pred, 0.25, 0.45, 1)) == 1


def test_mask_lies_inside_its_box() -> None:
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(32, 40, 40)).astype(np.float32)
    coef = rng.normal(size=32).astype(np.float32)
    xyxy = np.array([17.3, 20.6, 90.2, 121.9], np.float32)
    mask, x0, y0 = masks.mask_in_box(coef, protos, xyxy, (160, 160))
    assert mask.any()
    ys, xs = np.nonzero(mask)
    assert xs.min() + x0 >= xyxy[0] and xs.max() + x0 < xyxy[2]
    assert ys.min() + y0 >= xyxy[1] and ys.max() + y0 < xyxy[3]


def test_mask_equals_full_upsample_then_crop() -> None:
    """Computing only the box's pixels gives the same mask as upsampling the whole map first."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    protos = rng.normal(size=(32, 24, 40)).astype(np.float32)
    coef = rng.normal(size=32).astype(np.float32)
    xyxy = np.array([5.5, 9.1, 133.7, 80.2], np.float32)
    full = torch.nn.functional.interpolate(
        torch.from_numpy(coef @ protos.reshape(32, -1)).view(1, 1, 24, 40), (96, 160), mode="bilinear"
    )[0, 0].numpy()
    cols, rows = np.arange(160), np.arange(96)
    want = (
        (full > 0) & ((cols >= xyxy[0]) & (cols < xyxy[2]))[None, :] & ((rows >= xyxy[1]) & (rows < xyxy[3]))[:, None]
    )
    mask, x0, y0 = masks.mask_in_box(coef, protos, xyxy, (96, 160))
    got = np.zeros_like(want)
    got[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask.astype(bool)
    assert (got != want).sum() <= 2  # float summation order may flip a value sitting exactly at 0


def test_polygon_of_two_blobs_is_one_merged_outline() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 2:6] = 1
    mask[10:15, 20:28] = 1
    poly = mask_polygon(mask, 100, 200)
    assert poly.dtype == np.float32 and len(poly) >= 8
    assert poly[:, 0].min() >= 100 and poly[:, 1].min() >= 200 and poly[:, 0].max() <= 128


def test_keypoints_and_boxes_are_clipped_to_the_image() -> None:
    box = Letterbox.between((100, 200), (320, 640))
    pts = np.array([[[-50.0, -50.0, 0.9], [700.0, 400.0, 0.1]]], np.float32)
    out = postprocess.scale_xy(pts, box)
    assert out[0, 0, :2].tolist() == [0.0, 0.0] and out[0, 1, :2].tolist() == [200.0, 100.0]
    assert out[0, :, 2].tolist() == pytest.approx([0.9, 0.1])


def test_summary_normalizes_by_image_size() -> None:
    dets = np.array([[20, 10, 200, 100, 0.5, 1]], np.float32)
    box = Letterbox.between((100, 200), (320, 640))
    plain = postprocess.summary(dets, box, {1: "bicycle"}, normalize=False)
    norm = postprocess.summary(dets, box, {1: "bicycle"}, normalize=True)
    assert plain[0]["box"] == {"x1": 20.0, "y1": 10.0, "x2": 200.0, "y2": 100.0}
    assert norm[0]["box"] == {"x1": 0.1, "y1": 0.1, "x2": 1.0, "y2": 1.0}
    assert norm[0]["name"] == "bicycle" and norm[0]["class"] == 1 and norm[0]["confidence"] == 0.5


def test_compact_layout_gives_the_same_detections_as_raw() -> None:
    from export.onnx_graph import compact_reference

    rng = np.random.default_rng(5)
    nc, anchors = 80, 3000
    raw = np.concatenate(
        [
            rng.uniform(0, 640, (2, anchors)),
            rng.uniform(5, 200, (2, anchors)),
            rng.uniform(0, 1, (nc, anchors)) ** 8,
            rng.normal(size=(32, anchors)),
        ]
    ).astype(np.float32)
    compact = compact_reference(raw[None], nc)[0]
    for args in [(0.25, 0.45), (0.5, 0.7), (0.05, 0.3)]:
        want = postprocess.non_max_suppression(raw, *args, nc)
        got = postprocess.non_max_suppression(compact, *args, nc, compact=True)
        assert len(want) > 0 and np.array_equal(got, want)


@pytest.mark.parametrize("h,w", [(1080, 810), (720, 1280), (90, 1500), (20, 20), (5, 700), (224, 224), (333, 1)])
@pytest.mark.parametrize("size", [224, 160, 500, 33])
def test_resize_center_crop_is_ultralytics_classify_transform_bit_for_bit(h: int, w: int, size: int) -> None:
    """Ultralytics' classify_transforms (torchvision Resize + CenterCrop on a PIL image) give the same bytes."""
    pytest.importorskip("torchvision")
    from PIL import Image
    from ultralytics.data.augment import classify_transforms

    rng = np.random.default_rng(h * w + size)
    ramp = np.linspace(0, 255, w)[None, :, None] + np.linspace(0, 120, h)[:, None, None]
    image = np.clip(ramp + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)  # texture and a gradient
    resize, crop = classify_transforms(size).transforms[:2]
    want = np.asarray(crop(resize(Image.fromarray(image))))
    got, box = preprocess.resize_center_crop(image, size, max_pixels=40_000_000)
    assert got.shape == (size, size, 3) and got.flags.c_contiguous
    assert np.array_equal(got, want)
    assert box == Letterbox.between((h, w), (size, size))
    # past the pixel budget only the cropped part is resampled: the same picture up to rounding
    bounded, _ = preprocess.resize_center_crop(image, size, max_pixels=0)
    assert bounded.shape == want.shape and np.abs(bounded.astype(int) - want).max() <= 1


def test_resize_center_crop_of_an_extreme_aspect_ratio_stays_small() -> None:
    image = np.full((2, 200_000, 3), 90, np.uint8)  # resized whole it would be 224 × 22,400,000
    out, _ = preprocess.resize_center_crop(image, 224, max_pixels=40_000_000)
    assert out.shape == (224, 224, 3) and (out == 90).all()


def test_top5_is_the_five_most_probable_classes_best_first() -> None:
    probs = np.array([0.05, 0.3, 0.01, 0.2, 0.04, 0.25, 0.15], np.float32)
    names = {i: f"c{i}" for i in range(7)}
    top = postprocess.top5(probs, names)
    assert [d["class"] for d in top] == [1, 5, 3, 6, 0] and [d["name"] for d in top] == ["c1", "c5", "c3", "c6", "c0"]
    assert [d["confidence"] for d in top] == [0.3, 0.25, 0.2, 0.15, 0.05]
    assert set(top[0]) == {"name", "class", "confidence"}
    assert len(postprocess.top5(probs[:3], names)) == 3, "fewer than five classes: all of them"


@pytest.mark.parametrize(
    "anchors,conf,iou,classes,agnostic,max_det",
    [(1500, 0.25, 0.45, None, False, 300), (1500, 0.05, 0.7, None, False, 300), (1500, 0.25, 0.7, (1, 3), False, 300),
     (1500, 0.1, 0.45, None, True, 300), (1500, 0.1, 0.45, None, False, 17), (12000, 0.02, 0.45, None, False, 300)],
)  # fmt: skip
def test_non_max_suppression_matches_ultralytics(
    anchors: int, conf: float, iou: float, classes: tuple[int, ...] | None, agnostic: bool, max_det: int
) -> None:
    """Against Ultralytics' own non_max_suppression (torchvision NMS) on clustered random boxes, with few and with
    many candidates, class filters, class-agnostic NMS and a detection cap."""
    torch = pytest.importorskip("torch")
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(anchors + int(conf * 100))
    nc = 5
    centres = rng.uniform(0, 640, (40, 2))[rng.integers(0, 40, anchors)] + rng.normal(0, 12, (anchors, 2))
    sizes = rng.uniform(20, 160, (anchors, 2))
    scores = rng.uniform(0, 1, (nc, anchors)) ** 4
    raw = np.concatenate([centres.T, sizes.T, scores]).astype(np.float32)  # (4 + nc, anchors)
    want = non_max_suppression(
        torch.from_numpy(raw[None]), conf, iou, list(classes) if classes else None, agnostic, max_det=max_det, nc=nc
    )[0].numpy()
    candidates = int((raw[4:].max(axis=0) > conf).sum())
    got = postprocess.non_max_suppression(raw, conf, iou, nc, max_det, classes, agnostic)
    assert len(want) > 10 and candidates > len(want), "some boxes kept, some suppressed"
    assert np.array_equal(got, want)


def test_nms_of_no_boxes_is_empty() -> None:
    empty = np.zeros((0, 4), np.float32)
    assert postprocess.nms(empty, np.zeros(0, np.float32), 0.45).tolist() == []
