"""The annotated-image drawing (gateway/vision/render.py): pure functions on synthetic images, no server."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.vision import render

H, W = 240, 320


def _image() -> NDArray[np.uint8]:
    """A mid-grey image with a gentle gradient, so any drawing shows up and nothing is accidentally equal."""
    ramp = np.linspace(90, 150, W, dtype=np.float64)[None, :, None].repeat(H, 0).repeat(3, 2)
    return ramp.astype(np.uint8)


def _det(x1: float, y1: float, x2: float, y2: float, cls: int = 0, conf: float = 0.9, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"class{cls}",
        "class": cls,
        "confidence": conf,
        "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
        **extra,
    }


def _changed(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> NDArray[np.bool_]:
    return np.asarray((a != b).any(axis=2))


def _decode(buf: bytes) -> NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image, np.uint8)


def _pose(x0: float, y0: float, visible: float = 0.9) -> dict[str, Any]:
    """17 COCO keypoints of a standing figure whose shoulders are at (x0 ± 20, y0)."""
    offsets = [
        (0, -40), (-5, -45), (5, -45), (-10, -42), (10, -42),  # face
        (-20, 0), (20, 0), (-25, 30), (25, 30), (-28, 55), (28, 55),  # shoulders, elbows, wrists
        (-12, 60), (12, 60), (-12, 95), (12, 95), (-12, 125), (12, 125),  # hips, knees, ankles
    ]  # fmt: skip
    return {
        "x": [x0 + dx for dx, _ in offsets],
        "y": [y0 + dy for _, dy in offsets],
        "visible": [visible] * 17,
    }


def test_boxes_change_pixels_on_the_box_and_leave_far_pixels_untouched() -> None:
    image = _image()
    original = image.copy()
    out = render.annotate(image, [_det(60, 80, 160, 200)], "detect")
    changed = _changed(out, image)
    assert np.array_equal(image, original), "the input must not be modified"
    assert out.shape == image.shape and out.dtype == np.uint8
    assert changed[80, 100] and changed[200, 100] and changed[120, 60] and changed[120, 160], "box outline"
    assert changed[60:80, 60:120].any(), "label tab above the box"
    assert not changed[:, 240:].any() and not changed[215:, :].any(), "pixels far from the box"
    assert not changed[100:180, 80:140].any(), "boxes are outlines, the inside of a box without a mask stays"


def test_box_colour_is_the_class_colour_and_classes_differ() -> None:
    out = render.annotate(_image(), [_det(20, 60, 120, 200, cls=0), _det(180, 60, 300, 200, cls=5)], "detect")
    assert tuple(int(v) for v in out[130, 20]) == render.color(0)
    assert tuple(int(v) for v in out[130, 300]) == render.color(5)
    assert len({render.color(c) for c in range(20)}) == 20


def test_label_tab_moves_inside_a_box_touching_the_top_edge() -> None:
    image = _image()
    changed = _changed(render.annotate(image, [_det(100, 0, 220, 150)], "detect"), image)
    assert changed[5:15, 110:150].any(), "the label is drawn inside the box when it cannot go above"
    assert not changed[160:, :].any()


def test_empty_data_leaves_the_image_unchanged() -> None:
    image = _image()
    assert np.array_equal(render.annotate(image, [], "detect"), image)


def test_masks_are_filled_semi_transparently_inside_the_polygon_only() -> None:
    image = _image()
    polygon = {"x": [90.0, 150.0, 150.0, 90.0], "y": [100.0, 100.0, 180.0, 180.0]}
    out = render.annotate(image, [_det(60, 80, 200, 210, cls=3, segments=polygon)], "segment")
    inside = out[140, 120].astype(int)
    expected = (1 - render.MASK_ALPHA) * image[140, 120].astype(float) + render.MASK_ALPHA * np.array(render.color(3))
    assert np.abs(inside - expected).max() <= 1, "blend of image and class colour"
    assert not np.array_equal(inside, image[140, 120]) and tuple(inside) != render.color(3), "semi-transparent"
    changed = _changed(out, image)
    assert not changed[90:97, 70:190].any() and not changed[185:205, 70:190].any(), "box interior outside the mask"
    assert not changed[:, 215:].any()


def test_degenerate_segments_are_skipped() -> None:
    image = _image()
    dets = [
        _det(60, 80, 160, 200, segments={"x": [], "y": []}),
        _det(60, 80, 160, 200, segments={"x": [1.0, 2.0], "y": [3.0, 4.0]}),
    ]
    without = render.annotate(image, [_det(60, 80, 160, 200)] * 2, "segment")
    assert np.array_equal(render.annotate(image, dets, "segment"), without)


def test_pose_skeleton_links_visible_keypoints_and_skips_faint_ones() -> None:
    image = _image()
    box_only = [_det(40, 20, 260, 235)]
    kpts = _pose(150, 80)
    kpts["visible"][9] = 0.1  # the left wrist is too faint: neither it nor the elbow→wrist limb is drawn
    out = render.annotate(image, [_det(40, 20, 260, 235, keypoints=kpts)], "pose")
    skeleton = _changed(out, render.annotate(image, box_only, "pose"))
    # shoulder (5) → shoulder (6): the midpoint of the limb is drawn in Ultralytics' arm colour
    limb = np.array(render.LIMB_COLORS[render.SKELETON.index((5, 6))])
    assert np.abs(out[80, 150].astype(int) - limb).max() <= 16, "anti-aliased, so nearly the limb colour"
    # left hip (11) → left knee (13): midpoint of a leg limb
    assert skeleton[158, 138]
    # the faint wrist at (122, 135) and the limb from the elbow (125, 110) to it are not drawn
    assert not skeleton[131:140, 118:127].any()
    assert skeleton[110, 125], "the elbow itself is visible"


def test_keypoints_without_skeleton_when_not_coco() -> None:
    image = _image()
    kpts = {"x": [100.0, 200.0], "y": [100.0, 100.0], "visible": [0.9, 0.9]}
    changed = _changed(render.annotate(image, [_det(50, 50, 250, 200, keypoints=kpts)], "pose"), image)
    assert changed[100, 100] and changed[100, 200]
    assert not changed[100, 150], "no line between two keypoints of a non-COCO layout"


def _oriented(cx: float, cy: float, w: float, h: float, angle: float, cls: int = 0) -> dict[str, Any]:
    """An `obb` summary item: the four corners of a w×h box turned by `angle` radians (Ultralytics' corner order)."""
    c, s = np.cos(angle), np.sin(angle)
    v1, v2 = np.array([w / 2 * c, w / 2 * s]), np.array([-h / 2 * s, h / 2 * c])
    ctr = np.array([cx, cy])
    pts = [ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2]
    box = {k: float(p[a]) for i, p in enumerate(pts, start=1) for a, k in ((0, f"x{i}"), (1, f"y{i}"))}
    return {"name": f"class{cls}", "class": cls, "confidence": 0.9, "box": box}


def test_oriented_box_is_drawn_as_a_turned_polygon() -> None:
    image = _image()
    d = _oriented(160, 130, 140, 60, np.pi / 4, cls=4)
    out = render.annotate(image, [d], "obb")
    changed = _changed(out, image)
    b = d["box"]
    for i, j in ((1, 2), (2, 3), (3, 4), (4, 1)):  # the middle of each side is on the outline
        x, y = (b[f"x{i}"] + b[f"x{j}"]) / 2, (b[f"y{i}"] + b[f"y{j}"]) / 2
        assert changed[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2].any(), f"side {i}-{j}"
    assert tuple(int(v) for v in out[int((b["y2"] + b["y3"]) / 2), int((b["x2"] + b["x3"]) / 2)]) == render.color(4)
    assert not changed[120:140, 150:170].any(), "the inside stays"
    xs, ys = [b[f"x{i}"] for i in range(1, 5)], [b[f"y{i}"] for i in range(1, 5)]
    assert not changed[int(min(ys)) + 8, int(max(xs)) - 8], "a corner of the enclosing upright rectangle stays"
    assert not changed[:, :80].any() and not changed[210:, :].any(), "far from the box and its label"


def test_classifier_top5_is_written_in_the_top_left_corner() -> None:
    image = _image()
    data = [{"name": f"class{i}", "class": i, "confidence": 0.5 - i / 10} for i in range(5)]
    out = render.annotate(image, data, "classify")
    changed = _changed(out, image)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 2000, "five lines of text on a band"
    assert xs.min() >= round(H * 0.03) and ys.min() >= round(H * 0.03)
    assert xs.max() < W * 0.75 and ys.max() < H * 0.75, "only the corner is written on"
    band = out[ys.min() + 1, xs.min() + 1].astype(int)
    assert (band < image[ys.min() + 1, xs.min() + 1]).all(), "the band darkens the image under the text"
    assert np.array_equal(render.encode_annotated(image, data, "classify", "png", normalized=True),
                          render.encode_annotated(image, data, "classify", "png")), "nothing to scale"  # fmt: skip


def test_normalized_oriented_boxes_are_scaled_back_to_pixels() -> None:
    d = _oriented(160, 130, 140, 60, 0.4)
    normalized = {**d, "box": {k: v / (W if k[0] == "x" else H) for k, v in d["box"].items()}}
    assert render.to_pixels([normalized], W, H)[0]["box"] == pytest.approx(d["box"])


@pytest.mark.parametrize("fmt,ext", [("png", ".png"), ("jpeg", ".jpg")])
def test_encode_round_trip_keeps_the_input_size(fmt: str, ext: str) -> None:
    image = _image()
    data = [_det(60, 80, 160, 200, segments={"x": [80.0, 140.0, 110.0], "y": [100.0, 100.0, 180.0]})]
    encoded = render.encode_annotated(image, data, "segment", fmt)
    assert encoded.startswith(b"\x89PNG" if fmt == "png" else b"\xff\xd8\xff")
    decoded = _decode(encoded)
    assert decoded.shape == image.shape
    expected = render.annotate(image, data, "segment")
    if fmt == "png":
        assert np.array_equal(decoded, expected), "PNG is lossless"
    else:
        assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 3


def test_normalized_data_is_scaled_back_to_pixels() -> None:
    image = _image()
    pixels = [
        _det(60, 80, 160, 200, cls=2, segments={"x": [80.0, 140.0, 110.0], "y": [100.0, 100.0, 180.0]}),
        _det(170, 20, 310, 230, keypoints=_pose(240, 70)),
    ]
    normalized = []
    for d in pixels:
        n = {**d, "box": {k: v / (W if k[0] == "x" else H) for k, v in d["box"].items()}}
        for part in ("segments", "keypoints"):
            if part in d:
                n[part] = {**d[part], "x": [x / W for x in d[part]["x"]], "y": [y / H for y in d[part]["y"]]}
        normalized.append(n)
    back = render.to_pixels(normalized, W, H)
    assert back[0]["box"] == pytest.approx(pixels[0]["box"])
    assert back[1]["keypoints"]["visible"] == pixels[1]["keypoints"]["visible"], "only coordinates are scaled"
    a = render.encode_annotated(image, pixels, "pose", "png")
    b = render.encode_annotated(image, normalized, "pose", "png", normalized=True)
    assert _changed(_decode(a), _decode(b)).mean() < 0.001


def test_non_contiguous_input_is_drawn() -> None:
    wide = np.ascontiguousarray(np.dstack([_image()] * 2)[:, :, ::2])[:, ::-1]  # a strided view
    out = render.annotate(wide, [_det(10, 30, 60, 90)], "detect")
    assert out.flags.c_contiguous and _changed(out, wide).any()


def test_drawing_constants_match_ultralytics() -> None:
    """The colours, skeleton and thresholds the page and `format=image` use are Ultralytics' own."""
    from ultralytics.utils.plotting import Annotator, colors

    annotator = Annotator(np.zeros((64, 64, 3), np.uint8))
    assert [render.color(i) for i in range(25)] == [colors(i, True) for i in range(25)]
    assert [(a - 1, b - 1) for a, b in annotator.skeleton] == list(render.SKELETON)
    assert [tuple(c) for c in annotator.limb_color.tolist()] == list(render.LIMB_COLORS)
    assert [tuple(c) for c in annotator.kpt_color.tolist()] == list(render.KPT_COLORS)
    for shape in ((64, 64, 3), (1080, 810, 3), (333, 1000, 3), (4000, 3000, 3)):
        assert render.line_width(shape) == Annotator(np.zeros(shape, np.uint8)).lw
