"""Our merge_multi_segment (tests/reference.py) and its batched form (gateway/vision/masks.py `outlines`) are
Ultralytics' own, point for point, on random multi-contour masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.reference import merge_multi_segment


@pytest.mark.parametrize("seed", range(12))
def test_merge_multi_segment_equals_ultralytics(seed: int) -> None:
    from ultralytics.data.converter import merge_multi_segment as reference

    rng = np.random.default_rng(seed)
    size = int(rng.integers(40, 200))
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (5, 5), 3, 1, -1)
    cv2.circle(mask, (size - 6, size - 6), 3, 1, -1)  # two blobs at least, then random ones (some touching)
    for _ in range(int(rng.integers(0, 60))):
        cv2.ellipse(
            mask,
            (int(rng.integers(size)), int(rng.integers(size))),
            (int(rng.integers(1, 9)), int(rng.integers(1, 9))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
    contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    parts = [c.reshape(-1, 2) for c in contours]
    if seed == 0:  # one very long contour forces the per-pair path
        parts.append(np.stack([np.arange(3000) % 97, np.arange(3000) // 97], 1).astype(np.int32))
    assert len(parts) >= 2
    want = np.concatenate(reference([p.copy() for p in parts]))
    got = np.concatenate(merge_multi_segment([p.copy() for p in parts]))
    assert got.shape == want.shape and (got == want).all()


def test_outlines_of_many_masks_at_once_equal_ultralytics() -> None:
    """All masks' contours merged in one batch (outlines) equal Ultralytics' merge of each mask on its own,
    including masks with one contour (used as found) and masks without any."""
    from ultralytics.data.converter import merge_multi_segment as reference

    from gateway.vision.masks import outlines

    sets = []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        size = int(rng.integers(20, 160))
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 50))):
            centre = (int(rng.integers(size)), int(rng.integers(size)))
            axes = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        sets.append([c.reshape(-1, 2) for c in contours])
    sets[3] = []
    sets[5].append(np.stack([np.arange(400) % 23, np.arange(400) // 23], 1).astype(np.int32))  # a long contour
    assert sum(len(s) == 1 for s in sets) >= 1 and sum(len(s) > 5 for s in sets) >= 10
    got = outlines([[c.copy() for c in s] for s in sets])
    for contours, outline in zip(sets, got):
        if not contours:
            assert outline.shape == (0, 2)
            continue
        want = contours[0] if len(contours) == 1 else np.concatenate(reference([c.copy() for c in contours]))
        assert outline.shape == want.shape and (outline == want).all()
