"""The JSON Schemas of the API's answers (detections, classes, images, videos, models, errors) in every dialect
(gateway/dialects/), for openapi.py."""

from __future__ import annotations

from gateway.modelcard import TASKS

ERROR = {
    "type": "object",
    "required": ["success", "message", "data"],
    "properties": {
        "success": {"const": False},
        "message": {"type": "string", "minLength": 1},
        "data": {"type": "object", "maxProperties": 0},
    },
}
XY = {"type": "array", "items": {"type": "number"}}
BOX = {  # detect, segment, pose: corners clipped to the image
    "type": "object",
    "required": ["x1", "y1", "x2", "y2"],
    "properties": {k: {"type": "number", "minimum": 0} for k in ("x1", "y1", "x2", "y2")},
}
ORIENTED_BOX = {  # obb: four corners, not clipped (a rotated box may reach past the image edge)
    "type": "object",
    "required": [f"{a}{i}" for i in range(1, 5) for a in "xy"],
    "properties": {f"{a}{i}": {"type": "number"} for i in range(1, 5) for a in "xy"},
}
DETECTION = {
    "type": "object",
    "required": ["name", "class", "confidence", "box"],
    "properties": {
        "name": {"type": "string"},
        "class": {"type": "integer", "minimum": 0},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "box": {"anyOf": [BOX, ORIENTED_BOX]},
        "track_id": {"type": "integer", "minimum": 1, "description": "With track: the object's id (from 1)"},
        "segments": {"type": "object", "required": ["x", "y"], "properties": {"x": XY, "y": XY}},
        "keypoints": {"type": "object", "required": ["x", "y"], "properties": {"x": XY, "y": XY, "visible": XY}},
    },
}
CLASS = {  # classify: the top five classes, no box
    "type": "object",
    "required": ["name", "class", "confidence"],
    "properties": {
        "name": {"type": "string"},
        "class": {"type": "integer", "minimum": 0},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}
XYWHN = {  # hub-xywhn (the later HUB docs): normalized, centre and size, or one flat list per shape
    "type": "object",
    "required": ["class", "name", "confidence"],
    "properties": {
        "class": {"type": "integer", "minimum": 0},
        "name": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        **{k: {"type": "number"} for k in ("width", "height", "xcenter", "ycenter")},
        "segment": XY,  # x, y, x, y, ...
        "keypoints": XY,  # x, y, confidence, ...
        "obb": XY,  # x1, y1, ..., x4, y4
    },
    "additionalProperties": False,
}
ROW = {"anyOf": [DETECTION, CLASS, XYWHN]}
# With several image parts, `data` holds one entry per image, each shaped like a one-image response
PER_IMAGE = {
    "type": "object",
    "required": ["success", "message", "data"],
    "properties": {
        "success": {"type": "boolean"},
        "message": {"type": "string"},
        "status": {"type": "integer"},
        "data": {"type": "array", "maxItems": 300, "items": ROW},
    },
}
PREDICTION = {
    "type": "object",
    "required": ["success", "message", "data"],
    "properties": {
        "success": {"const": True},
        "message": {"type": "string"},
        "data": {
            "oneOf": [
                {"type": "array", "maxItems": 300, "items": ROW},
                {"type": "array", "minItems": 2, "maxItems": 8, "items": PER_IMAGE},
            ]
        },
    },
}
# A video (the only file part): one entry per analysed frame; `frame` is the source frame index, `time` its seconds
FRAME_INDEX = {"type": "integer", "minimum": 0, "description": "The frame's index in the video (0-based)"}
FRAME_TIME = {"type": ["number", "null"], "description": "Its timestamp in seconds: frame / fps (null: fps unknown)"}
FRAME = {
    "type": "object",
    "required": ["frame", "time", "data"],
    "properties": {
        "frame": FRAME_INDEX,
        "time": FRAME_TIME,
        "data": {"type": "array", "maxItems": 300, "items": ROW},
    },
}
VIDEO_META = {
    "type": "object",
    "required": ["container", "width", "height", "fps", "frame_count", "duration", "vid_stride", "frames"],
    "properties": {
        "container": {"enum": ["MP4/MOV", "WebM/MKV", "AVI"]},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "fps": {"type": ["number", "null"]},
        "frame_count": {"type": ["integer", "null"]},
        "duration": {"type": ["number", "null"]},
        "vid_stride": {"type": "integer"},
        "frames": {"type": "integer"},
    },
}
VIDEO = {
    "type": "object",
    "required": ["success", "message", "data", "video"],
    "properties": {
        "success": {"const": True},
        "message": {"type": "string"},
        "data": {"type": "array", "items": FRAME},
        "video": VIDEO_META,
    },
}
NDJSON = {"application/x-ndjson": {"schema": {"type": "string"}}}  # stream=true: one JSON object per line
IMAGE_RESULT = {
    "type": "object",
    "required": ["results", "shape", "speed"],
    "properties": {
        "results": {"type": "array", "maxItems": 300, "items": ROW},
        "shape": {
            "oneOf": [{"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}, {"type": "null"}]
        },
        "speed": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["preprocess", "inference", "postprocess"],
                    "properties": {
                        k: {"type": "number", "minimum": 0} for k in ("preprocess", "inference", "postprocess")
                    },
                },
                {"type": "null"},
            ]
        },
        "frame": FRAME_INDEX,  # video frames, with details=true or stream=true
        "time": FRAME_TIME,
        "error": {  # one image of several failed
            "type": "object",
            "required": ["status", "message"],
            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
        },
    },
    "additionalProperties": False,
}
VERSION = {  # what exported the model ("unknown" where its config does not say)
    "type": "object",
    "required": ["python", "torch", "torchvision", "ultralytics"],
    "properties": {k: {"type": "string"} for k in ("python", "torch", "torchvision", "ultralytics")},
    "additionalProperties": False,
}
_SECONDS = {"type": "number", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0, "description": "Images (or a video's frames) answered"}
# details=true: the gateway's own fields, beside the documented ones
DETAILS = {
    "gateway": {"type": "object", "additionalProperties": {"type": "string"}},
    "task": {"enum": list(TASKS)},
    "imgsz": {"type": "integer"},
    "conf": {"type": "number"},
    "iou": {"type": "number"},
    "max_det": {"type": "integer"},
    "classes": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]},
    "agnostic": {"type": "boolean"},
    "normalize": {"type": "boolean"},
    "decimals": {"type": "integer"},
    "video": VIDEO_META,
}


def _images(documented: dict[str, object]) -> dict[str, object]:
    """An {images, metadata} answer whose metadata is `documented` (all required) and, with details=true, DETAILS."""
    metadata = {
        "type": "object",
        "required": list(documented),
        "properties": {**DETAILS, **documented},
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "required": ["images", "metadata"],
        "properties": {
            "images": {"type": "array", "minItems": 1, "items": IMAGE_RESULT},
            "metadata": metadata,
            "warning": {"type": "string", "description": "details=true, while the model serves untrained weights"},
        },
        "additionalProperties": False,
    }


# predict.ultralytics.com (and the HUB v1 URL with the newer body): `model` echoes the model as sent
IMAGES = _images(
    {
        "functionTimeAlive": _SECONDS,
        "functionTimeCall": _SECONDS,
        "imageCount": _COUNT,
        "model": {"type": "string"},
        "version": VERSION,
    }
)
PLATFORM_IMAGES = _images(  # the Ultralytics Platform's contract
    {
        "imageCount": _COUNT,
        "functionTimeAlive": _SECONDS,
        "functionTimeCall": _SECONDS,
        "task": {"enum": list(TASKS)},
        "version": VERSION,
        "model": {"type": "string"},
        "classNames": {"type": "array", "items": {"type": "string"}},
    }
)
PLATFORM_ERROR = {  # the Platform's errors; a 429 adds when to retry
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "minLength": 1},
        "retryAfter": {"type": "integer", "minimum": 1},
        "resetAt": {"type": "string", "description": "ISO 8601, as X-RateLimit-Reset"},
    },
    "additionalProperties": False,
}
MODEL = {
    "type": "object",
    "required": ["id", "task", "names", "default_size", "backend", "untrained"],
    "properties": {
        "id": {"type": "string"},
        "task": {"enum": list(TASKS)},
        "names": {"type": "object", "additionalProperties": {"type": "string"}},
        "default_size": {"type": "integer"},
        "stride": {"type": "integer"},
        "backend": {"type": "string"},
        "untrained": {"type": "boolean"},
        "kpt_shape": {"type": "array", "items": {"type": "integer"}},
        "warning": {"type": "string"},
    },
}
