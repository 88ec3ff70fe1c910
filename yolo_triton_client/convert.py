"""`to_supervision`: a Prediction as `supervision.Detections` (supervision is optional and imported here only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from yolo_triton_client.results import OrientedBox, Prediction

if TYPE_CHECKING:
    import supervision

INSTALL_HINT = (
    "to_supervision needs the optional 'supervision' package (0.30 or newer, which uses the OpenCV already "
    "installed instead of requiring opencv-python): pip install './yolo_triton_client[supervision]' for the client "
    "alone, or 'yolo-triton[client-supervision]' beside the gateway"
)


def to_supervision(prediction: Prediction, shape: tuple[int, int] | None = None) -> supervision.Detections:
    """`sv.Detections` in image pixels: xyxy (N, 4), confidence (N,), class_id (N,), data["class_name"] (N,).

    Segment outlines become masks (N, H, W) bool, rasterised at `shape` = (height, width) of the image, or at
    `prediction.shape` (known when the source was a local image). OBB corners go in data["xyxyxyxy"] (N, 4, 2) with
    xyxy their bounding box (supervision's convention); pose keypoints in data["keypoints"] (N, K, 2) and
    data["keypoints_confidence"] (N, K). Normalised predictions are scaled back to pixels, which needs the shape.
    """
    try:
        import supervision as sv
        from supervision.config import CLASS_NAME_DATA_FIELD, ORIENTED_BOX_COORDINATES
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    import numpy as np

    if prediction.classifications:
        raise ValueError("A classification has no boxes: use prediction.classifications (top-5 names and scores).")
    rows = prediction.detections
    shape = shape or prediction.shape
    has_masks = any(d.segments for d in rows)
    if (has_masks or prediction.normalized) and shape is None:
        what = "segment outlines to rasterise" if has_masks else "normalised coordinates"
        raise ValueError(f"The image shape is unknown and the prediction has {what}: pass shape=(height, width).")
    height, width = shape if shape is not None else (1, 1)
    sx, sy = (width, height) if prediction.normalized else (1, 1)
    if not rows:
        empty = sv.Detections.empty()
        empty.data = {CLASS_NAME_DATA_FIELD: np.empty(0, dtype=str)}
        return empty

    xyxy = np.array([d.box.xyxy for d in rows], np.float32) * np.array([sx, sy, sx, sy], np.float32)
    data: dict[str, Any] = {CLASS_NAME_DATA_FIELD: np.array([d.name for d in rows])}
    if all(isinstance(d.box, OrientedBox) for d in rows):
        corners = np.array([d.box.points for d in rows if isinstance(d.box, OrientedBox)], np.float32)
        data[ORIENTED_BOX_COORDINATES] = corners * np.array([sx, sy], np.float32)
    if all(d.keypoints for d in rows):
        kpts = [d.keypoints for d in rows if d.keypoints]
        data["keypoints"] = np.array([np.stack([k.x, k.y], axis=-1) for k in kpts], np.float32) * np.array(
            [sx, sy], np.float32
        )
        if all(k.visible is not None for k in kpts):
            data["keypoints_confidence"] = np.array([k.visible for k in kpts], np.float32)
    mask = None
    if has_masks:
        mask = np.zeros((len(rows), height, width), dtype=bool)
        for i, d in enumerate(rows):
            if d.segments and d.segments.x:
                polygon = np.stack([d.segments.x, d.segments.y], axis=-1) * np.array([sx, sy])
                mask[i] = sv.polygon_to_mask(polygon, (width, height)).astype(bool)
    return sv.Detections(
        xyxy=xyxy,
        mask=mask,
        confidence=np.array([d.confidence for d in rows], np.float32),
        class_id=np.array([d.class_id for d in rows], int),
        data=data,
    )
