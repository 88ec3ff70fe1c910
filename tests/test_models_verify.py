"""export/verify.py: when a version's answers count as the checkpoint's (pure functions, no model)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from export.verify import compare_answers, compare_raw


def row(name: str, cls: int, conf: float, x1: float = 10.0, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "class": cls,
        "confidence": conf,
        "box": {"x1": x1, "y1": 5.0, "x2": x1 + 50, "y2": 80.0},
        **extra,
    }


REF = [row("bus", 5, 0.87, 20), row("person", 0, 0.81, 200), row("person", 0, 0.52, 400)]


def test_equal_answers_have_no_problems() -> None:
    assert compare_answers("bus.jpg", copy.deepcopy(REF), REF, 0.25) == []


def test_within_the_parity_tolerances_is_equal() -> None:
    ours = copy.deepcopy(REF)
    ours[0]["confidence"] += 0.0009
    ours[1]["box"]["x2"] += 0.9
    assert compare_answers("bus.jpg", ours, REF, 0.25) == []


def test_a_box_off_by_more_than_a_pixel_is_named() -> None:
    ours = copy.deepcopy(REF)
    ours[1]["box"]["y1"] += 2.0
    assert compare_answers("bus.jpg", ours, REF, 0.25) == [
        "bus.jpg: Ultralytics' row 1 (person 0.810) has no equal in the served answer (box corner off by 2.00 px)",
        "bus.jpg: the served answer has a row Ultralytics does not (person 0.810)",
    ]


def test_an_empty_answer_is_not_equal_to_one_with_rows() -> None:
    problems = compare_answers("bus.jpg", [], REF, 0.25)
    assert len(problems) == 3 and all("no row of that class" in p for p in problems)
    assert compare_answers("bus.jpg", REF, [], 0.25) == [
        f"bus.jpg: the served answer has a row Ultralytics does not ({r['name']} {r['confidence']:.3f})" for r in REF
    ]


def test_near_equal_confidences_may_come_in_either_order() -> None:
    ref = [row("person", 0, 0.6004, 10), row("person", 0, 0.6001, 300)]
    assert compare_answers("zidane.jpg", [ref[1], ref[0]], ref, 0.25) == []


def test_a_row_at_the_confidence_cut_may_fall_on_either_side() -> None:
    """0.2504 and 0.2497 are the same score within 1e-3: whether it passed conf=0.25 was a rounding."""
    ref = [*REF, row("tie", 27, 0.2504, 600)]
    assert compare_answers("bus.jpg", REF, ref, 0.25) == []
    assert compare_answers("bus.jpg", ref, REF, 0.25) == []
    firm = [*REF, row("tie", 27, 0.2600, 600)]
    assert compare_answers("bus.jpg", REF, firm, 0.25) != []


def test_keypoints_and_polygons_are_compared() -> None:
    points = {"x": [1.0, 2.0], "y": [3.0, 4.0], "visible": [0.9, 0.8]}
    square = {"x": [0.0, 40.0, 40.0, 0.0], "y": [0.0, 0.0, 40.0, 40.0]}
    ref = [row("person", 0, 0.9, keypoints=points, segments=square)]
    moved = copy.deepcopy(ref)
    moved[0]["keypoints"]["x"][1] += 1.5
    moved[0]["segments"]["x"] = [20.0, 60.0, 60.0, 20.0]
    [problem, _] = compare_answers("bus.jpg", moved, ref, 0.25)
    assert "keypoints off by 1.50 px" in problem and "polygon IoU 0.33" in problem  # half overlaps: 1/3 (rastered)


def test_raw_outputs_compare_boxes_and_best_scores() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (1, 4 + 3, 100)).astype(np.float32)
    raw[0, :4] *= 640
    compact = np.concatenate([raw[:, :4], raw[:, 4:7].max(1, keepdims=True), raw[:, 4:7].argmax(1)[:, None]], axis=1)
    assert compare_raw("bus.jpg", raw.copy(), raw, 3, compact=False) == []
    assert compare_raw("bus.jpg", compact.astype(np.float32), raw, 3, compact=True) == []
    off = compact.copy()
    off[0, 4, 17] += 0.01
    off[0, 2, 3] += 1.5
    assert compare_raw("bus.jpg", off, raw, 3, compact=True) == [
        "bus.jpg: raw boxes differ by up to 1.500 px (tolerance 1)",
        "bus.jpg: raw class scores differ by up to 0.01000 (tolerance 0.001)",
    ]
    assert compare_raw("bus.jpg", raw[:, :, :50], raw, 3, compact=False) == [
        "bus.jpg: the served output has shape (1, 7, 50), the checkpoint's (1, 7, 100)"
    ]
