"""Our merge_multi_segment is Ultralytics' own, point for point, on random multi-contour masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gateway.postprocess import merge_multi_segment


@pytest.mark.parametrize("seed", range(12))
def test_merge_multi_segment_equals_ultralytics(seed: int) -> None:
    from ultralytics.data.converter import merge_multi_segment as reference

    rng = np.random.default_rng(seed)
    size = int(rng.integers(40, 200))
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (5, 5), 3, 1, -1)
    cv2.circle(mask, (size - 6, size - 6), 3, 1, -1)  # two blobs at least, then random ones (some touching)
    for _ in range(int(rng.integers(0, 60))):
        cv2.ellipse(mask, (int(rng.integers(size)), int(rng.integers(size))), (int(rng.integers(1, 9)), int(rng.integers(1, 9))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    parts = [c.reshape(-1, 2) for c in contours]
    if seed == 0:  # one very long contour forces the per-pair path
        parts.append(np.stack([np.arange(3000) % 97, np.arange(3000) // 97], 1).astype(np.int32))
    assert len(parts) >= 2
    want = np.concatenate(reference([p.copy() for p in parts]))
    got = np.concatenate(merge_multi_segment([p.copy() for p in parts]))
    assert got.shape == want.shape and (got == want).all()
