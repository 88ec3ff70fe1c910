"""The JSON Schemas of the API's answers (detections, classes, images, videos, models, errors), for openapi.py."""

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
ROW = {"anyOf": [DETECTION, CLASS]}
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
        "frame": FRAME_INDEX,  # video frames only
        "time": FRAME_TIME,
        "error": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
        },
    },
}
IMAGES = {
    "type": "object",
    "required": ["images", "metadata"],
    "properties": {
        "images": {"type": "array", "minItems": 1, "items": IMAGE_RESULT},
        "metadata": {
            "type": "object",
            "required": ["imageCount", "version", "model", "task", "imgsz", "conf", "iou", "decimals"],
            "properties": {
                "imageCount": {"type": "integer", "description": "Images (or a video's frames) answered"},
                "functionTimeCall": {"type": "number", "description": "Seconds the request took until its answer"},
                "version": {"type": "object", "additionalProperties": {"type": "string"}},
                "decimals": {"type": "integer"},
                "model": {"type": "string"},
                "task": {"type": "string"},
                "imgsz": {"type": "integer"},
                "conf": {"type": "number"},
                "iou": {"type": "number"},
                "video": VIDEO_META,
            },
        },
        "warning": {"type": "string", "description": "Present while the model serves untrained fixture weights"},
    },
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
