"""Annotated images for `format=image|png`: masks, boxes (axis-aligned or oriented), labels, pose skeletons and a
classifier's top five drawn over the input (OpenCV only).

The drawing follows Ultralytics' `Results.plot()` (same palette, line width, mask alpha, skeleton and keypoint
threshold) and is what the try-it page at `/` draws on its canvas (gateway/api/static/app.js mirrors these constants).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

Color = tuple[int, int, int]

# Ultralytics' class palette (RGB hex), so an annotated image looks like `results[0].plot()`.
PALETTE_HEX = (
    "042AFF", "0BDBEB", "F3F3F3", "00DFB7", "111F68", "FF6FDD", "FF444F", "CCED00", "00F344", "BD00FF",
    "00B4FF", "DD00BA", "00FFFF", "26C000", "01FFB3", "7D24FF", "7B0068", "FF1B6C", "FC6D2F", "A2FF0B",
)  # fmt: skip
PALETTE: tuple[Color, ...] = tuple((int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in PALETTE_HEX)  # BGR

# COCO 17-keypoint skeleton (0-based pairs) and Ultralytics' pose colours (BGR) for limbs and keypoints.
SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
# Ultralytics applies its pose_palette values directly to the BGR image; these are those values as it uses them.
_LEGS, _TORSO, _ARMS, _FACE = (51, 153, 255), (255, 51, 255), (255, 128, 0), (0, 255, 0)  # pose_palette[9, 7, 0, 16]
LIMB_COLORS: tuple[Color, ...] = (_LEGS,) * 4 + (_TORSO,) * 3 + (_ARMS,) * 5 + (_FACE,) * 7
KPT_COLORS: tuple[Color, ...] = (_FACE,) * 5 + (_ARMS,) * 6 + (_LEGS,) * 6
KPT_THRESHOLD = 0.25  # Ultralytics 8.4 `Annotator.kpts(conf_thres=0.25)`: fainter keypoints and their limbs are skipped
MASK_ALPHA = 0.5  # Ultralytics `Annotator.masks(alpha=0.5)`
# A classifier's top five: white lines on a half-transparent dark grey band, 3% of the image height from the corner
# (Ultralytics' Results.plot draws them with box_color=(64, 64, 64, 128)).
TOP5_BACKGROUND: Color = (64, 64, 64)
TOP5_ALPHA = 0.5


def color(class_id: int) -> Color:
    """The BGR colour of a class (Ultralytics' palette, cycled)."""
    return PALETTE[int(class_id) % len(PALETTE)]


def text_color(background: Color) -> Color:
    """Dark text on light label backgrounds, white on dark ones (BGR)."""
    b, g, r = background
    return (17, 31, 104) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def line_width(shape: tuple[int, ...]) -> int:
    """Ultralytics' default line width for an image of `shape` (h, w, channels): it sums the channels in too."""
    return max(round(sum(shape) / 2 * 0.003), 2)


def _polygon(part: dict[str, Any]) -> NDArray[np.int32]:
    """(N, 1, 2) int pixel points of a {"x": [...], "y": [...]} outline."""
    xy = np.stack([np.asarray(part["x"], np.float64), np.asarray(part["y"], np.float64)], axis=1)
    return np.round(xy).astype(np.int32).reshape(-1, 1, 2)


def draw_masks(image: NDArray[np.uint8], data: list[dict[str, Any]]) -> None:
    """Fill every `segments` polygon (pixels) with its class colour at MASK_ALPHA, in place; best detection on top."""
    overlay = image.copy()
    covered = np.zeros(image.shape[:2], np.uint8)
    for d in reversed(data):
        segments = d.get("segments")
        if not segments or len(segments.get("x", ())) < 3:
            continue
        points = _polygon(segments)
        cv2.fillPoly(overlay, [points], color(d["class"]), cv2.LINE_8)
        cv2.fillPoly(covered, [points], (255,), cv2.LINE_8)
    if covered.any():
        blended = cv2.addWeighted(image, 1 - MASK_ALPHA, overlay, MASK_ALPHA, 0)
        np.copyto(image, blended, where=covered[..., None].astype(bool))


def draw_box(image: NDArray[np.uint8], d: dict[str, Any], lw: int) -> None:
    """One box (pixels) with its "name confidence" label on a filled tab, in place (Ultralytics' `box_label`).

    A box with four corners ("x1".."x4", oriented boxes) is drawn as a closed polygon, its label at the first corner.
    """
    c = color(d["class"])
    b = d["box"]
    p1 = (int(b["x1"]), int(b["y1"]))
    if "x4" in b:
        corners = np.array([[b[f"x{i}"], b[f"y{i}"]] for i in range(1, 5)]).astype(int)  # truncated, as Ultralytics
        cv2.polylines(image, [corners.reshape(-1, 1, 2)], True, c, lw)
    else:
        cv2.rectangle(image, p1, (int(b["x2"]), int(b["y2"])), c, lw, cv2.LINE_AA)
    label = f"{d['name']} {d['confidence']:.2f}"
    scale, thickness = lw / 3, max(lw - 1, 1)
    (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    h += 3
    outside = p1[1] >= h  # the tab goes above the box unless the box touches the top edge
    x = min(p1[0], image.shape[1] - w)
    top, bottom = (p1[1] - h, p1[1]) if outside else (p1[1], p1[1] + h)
    cv2.rectangle(image, (x, top), (x + w, bottom), c, -1, cv2.LINE_AA)
    cv2.putText(image, label, (x, bottom - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color(c), thickness, cv2.LINE_AA)


def draw_top5(image: NDArray[np.uint8], data: list[dict[str, Any]], lw: int) -> None:
    """A classifier's classes as "name confidence" lines, best first, on a half-transparent band, in place."""
    if not data:
        return
    scale, thickness = lw / 3, max(lw - 1, 1)
    x = y = round(image.shape[0] * 0.03)
    band = image.copy()
    lines = []
    for d in data:
        label = f"{d['name']} {d['confidence']:.2f}"
        (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        h += 3 + lw  # a little leading between lines
        cv2.rectangle(band, (x, y), (x + w + 2 * lw, y + h), TOP5_BACKGROUND, -1)
        lines.append((label, (x + lw, y + h - lw - 1)))
        y += h
    cv2.addWeighted(image, 1 - TOP5_ALPHA, band, TOP5_ALPHA, 0, dst=image)
    for label, origin in lines:
        cv2.putText(image, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def draw_keypoints(image: NDArray[np.uint8], keypoints: dict[str, Any], lw: int) -> None:
    """Keypoints (pixels) and, for the 17 COCO keypoints, the skeleton, in place; visible < KPT_THRESHOLD is skipped."""
    xs, ys = keypoints["x"], keypoints["y"]
    visible = keypoints.get("visible") or [1.0] * len(xs)
    shown = [v >= KPT_THRESHOLD and not (x == 0 and y == 0) for x, y, v in zip(xs, ys, visible, strict=True)]
    points = [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]
    coco = len(points) == 17
    if coco:
        for (i, j), c in zip(SKELETON, LIMB_COLORS, strict=True):
            if shown[i] and shown[j] and min(points[i] + points[j]) >= 0:
                cv2.line(image, points[i], points[j], c, int(np.ceil(lw / 2)), cv2.LINE_AA)
    for k, (p, ok) in enumerate(zip(points, shown, strict=True)):
        if ok:
            cv2.circle(image, p, lw, KPT_COLORS[k] if coco else color(k), -1, cv2.LINE_AA)


def annotate(image: NDArray[np.uint8], data: list[dict[str, Any]], task: str) -> NDArray[np.uint8]:
    """A copy of `image` (H, W, 3 BGR) with `data` (summary() items, pixel coordinates) drawn: masks, boxes, poses,
    or a classifier's top five.

    Drawn lowest confidence first, so the best detection ends on top (as Ultralytics does). `task` is informational:
    what is drawn follows the keys present in each item (`box` with two or four corners, `segments`, `keypoints`;
    items without a box are classes).
    """
    out = np.ascontiguousarray(image).copy()
    lw = line_width(out.shape)
    draw_masks(out, data)
    for d in reversed(data):
        if "box" in d:
            draw_box(out, d, lw)
    draw_top5(out, [d for d in data if "box" not in d], lw)
    for d in reversed(data):
        if d.get("keypoints"):
            draw_keypoints(out, d["keypoints"], lw)
    return out


def to_pixels(data: list[dict[str, Any]], width: int, height: int) -> list[dict[str, Any]]:
    """`data` from a normalize=true request, back in pixel coordinates."""

    def scale(values: list[float], factor: int) -> list[float]:
        return [v * factor for v in values]

    out = []
    for d in data:
        d = dict(d)
        if "box" in d:
            d["box"] = {k: v * (width if k.startswith("x") else height) for k, v in d["box"].items()}
        for part in ("segments", "keypoints"):
            if part in d:
                d[part] = {**d[part], "x": scale(d[part]["x"], width), "y": scale(d[part]["y"], height)}
        out.append(d)
    return out


def encode_annotated(
    image: NDArray[np.uint8], data: list[dict[str, Any]], task: str, fmt: str, normalized: bool = False
) -> bytes:
    """The annotated image encoded as JPEG or PNG (`fmt` "png", else JPEG).

    data: the response's items (normalized or pixels)."""
    if normalized:
        data = to_pixels(data, image.shape[1], image.shape[0])
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".jpg", annotate(image, data, task))
    if not ok:
        raise RuntimeError("image encoding failed")
    return bytes(buf.tobytes())
