"""Letterbox geometry against Ultralytics' own `LetterBox` and `scale_boxes`, at odd sizes and odd paddings.

Byte for byte, both modes (rect: padded to the stride, Ultralytics' `auto=True`; square), and the padding that
post-processing takes off is the padding that was put on (measured in the letterboxed pixels, not recomputed).
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.vision import postprocess, preprocess
from gateway.vision.preprocess import Letterbox

torch = pytest.importorskip("torch")
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.utils import ops  # noqa: E402

# odd sides, sides whose scaled size ends in .5 or more (rounding vs truncating), thin images, up- and down-scaling
SHAPES = [(1, 1), (2, 3), (7, 10), (333, 517), (427, 641), (641, 427), (479, 641), (1079, 1919), (95, 1501),
          (1501, 95), (3, 1000), (480, 640), (640, 640), (719, 1281)]  # fmt: skip
SIZES = [640, 320, 416]


def _texture(h: int, w: int, high: int = 256) -> np.ndarray:
    rng = np.random.default_rng(h * 7919 + w)
    ramp = np.linspace(0, high - 1, w)[None, :, None] * 0.5 + np.linspace(0, (high - 1) * 0.4, h)[:, None, None]
    return np.clip(ramp + rng.normal(0, high / 10, (h, w, 3)), 0, high - 1).astype(np.uint8)


@pytest.mark.parametrize("rect", [True, False])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("h,w", SHAPES)
def test_letterbox_is_ultralytics_letterbox_byte_for_byte(h: int, w: int, size: int, rect: bool) -> None:
    image = _texture(h, w)
    want = LetterBox((size, size), auto=rect, stride=32)(image=image.copy())
    got, box = preprocess.letterbox(image, size, 32, rect)
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert box == Letterbox.between((h, w), (want.shape[0], want.shape[1]))


def _content(out: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the pixels that are not padding (the image holds no 114)."""
    inside = (out != preprocess.PAD_VALUE).any(axis=2)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


@pytest.mark.parametrize("rect", [True, False])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("h,w", SHAPES)
def test_postprocess_takes_off_the_padding_letterbox_put_on(h: int, w: int, size: int, rect: bool) -> None:
    out, box = preprocess.letterbox(_texture(h, w, high=100), size, 32, rect)  # values < 100: never the pad value
    left, top, new_w, new_h = _content(out)
    (gain_x, gain_y), (pad_x, pad_y) = box.gain, box.pad
    assert (pad_x, pad_y) == (left, top)
    assert (new_w / w, new_h / h) == (gain_x, gain_y)
    # the content's corners go back to the image's corners (up to float32 division)
    back = postprocess.scale_boxes(np.array([[left, top, left + new_w, top + new_h]], np.float32), box)
    assert np.allclose(back, [[0, 0, w, h]], rtol=0, atol=1e-4)


@pytest.mark.parametrize("rect", [True, False])
@pytest.mark.parametrize("h,w", SHAPES)
def test_scale_boxes_and_points_equal_ultralytics(h: int, w: int, rect: bool) -> None:
    _, box = preprocess.letterbox(np.zeros((h, w, 3), np.uint8), 640, 32, rect)
    ih, iw = box.input_shape
    rng = np.random.default_rng(h + w)
    xy = rng.uniform(-10, [iw + 10, ih + 10], (50, 2, 2)).astype(np.float32)
    boxes = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)
    want = ops.scale_boxes(box.input_shape, torch.from_numpy(boxes.copy()), box.orig_shape).numpy()
    assert np.array_equal(postprocess.scale_boxes(boxes, box), want)
    points = rng.uniform(-10, [iw + 10, ih + 10], (7, 17, 2)).astype(np.float32)
    want_points = ops.scale_coords(box.input_shape, torch.from_numpy(points.copy()), box.orig_shape).numpy()
    assert np.array_equal(postprocess.scale_xy(points.copy(), box), want_points)
