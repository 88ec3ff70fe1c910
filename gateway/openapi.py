"""The OpenAPI 3.1 description of the API, served at /openapi.json (and used by the fuzz tests)."""

from __future__ import annotations

from typing import Any

from gateway.schemas import CONFIDENCE_RANGE, IOU_RANGE, SIZE_RANGE

_ERROR = {
    "type": "object",
    "required": ["success", "message", "data"],
    "properties": {
        "success": {"const": False},
        "message": {"type": "string", "minLength": 1},
        "data": {"type": "object", "maxProperties": 0},
    },
}
_XY = {"type": "array", "items": {"type": "number"}}
_BOX = {  # detect, segment, pose: corners clipped to the image
    "type": "object",
    "required": ["x1", "y1", "x2", "y2"],
    "properties": {k: {"type": "number", "minimum": 0} for k in ("x1", "y1", "x2", "y2")},
}
_ORIENTED_BOX = {  # obb: four corners, not clipped (a rotated box may reach past the image edge)
    "type": "object",
    "required": [f"{a}{i}" for i in range(1, 5) for a in "xy"],
    "properties": {f"{a}{i}": {"type": "number"} for i in range(1, 5) for a in "xy"},
}
_DETECTION = {
    "type": "object",
    "required": ["name", "class", "confidence", "box"],
    "properties": {
        "name": {"type": "string"},
        "class": {"type": "integer", "minimum": 0},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "box": {"anyOf": [_BOX, _ORIENTED_BOX]},
        "segments": {"type": "object", "required": ["x", "y"], "properties": {"x": _XY, "y": _XY}},
        "keypoints": {"type": "object", "required": ["x", "y"], "properties": {"x": _XY, "y": _XY, "visible": _XY}},
    },
}
_CLASS = {  # classify: the top five classes, no box
    "type": "object",
    "required": ["name", "class", "confidence"],
    "properties": {
        "name": {"type": "string"},
        "class": {"type": "integer", "minimum": 0},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}
_PREDICTION = {
    "type": "object",
    "required": ["success", "message", "data"],
    "properties": {
        "success": {"const": True},
        "message": {"type": "string"},
        "data": {"type": "array", "maxItems": 300, "items": {"anyOf": [_DETECTION, _CLASS]}},
    },
}
_MODEL = {
    "type": "object",
    "required": ["id", "task", "names", "default_size", "backend", "untrained"],
    "properties": {
        "id": {"type": "string"},
        "task": {"enum": ["detect", "segment", "pose", "obb", "classify"]},
        "names": {"type": "object", "additionalProperties": {"type": "string"}},
        "default_size": {"type": "integer"},
        "stride": {"type": "integer"},
        "backend": {"type": "string"},
        "untrained": {"type": "boolean"},
        "kpt_shape": {"type": "array", "items": {"type": "integer"}},
        "warning": {"type": "string"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad argument, or image/url missing or both given",
        401: "Missing or invalid API key",
        403: "Key not allowed for this model",
        404: "Unknown model",
        413: "Upload, URL body or pixel count over the limit",
        415: "Not a supported image format",
        422: "Image could not be decoded",
        429: "Rate limit exceeded",
        502: "URL could not be fetched",
        503: "Inference server or model not ready, or the gateway is busy",
        504: "Inference timed out",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_ARGS = {
    "size": {"type": "integer", "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1], "default": 640},
    "confidence": {"type": "number", "minimum": CONFIDENCE_RANGE[0], "maximum": CONFIDENCE_RANGE[1], "default": 0.25},
    "iou": {"type": "number", "minimum": IOU_RANGE[0], "maximum": IOU_RANGE[1], "default": 0.45},
    "url": {"type": "string", "default": ""},
    "normalize": {"type": "boolean", "default": False},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "YOLO Inference API", "version": "1", "description": "Ultralytics HUB compatible YOLO inference on Triton."},
    "components": {"securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    "paths": {
        "/v1/predict/{model_id}": {
            "post": {
                "summary": "Run a model on one image (file upload or URL)",
                "security": [{"apiKey": []}],
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    *({"name": k, "in": "query", "required": False, "schema": v} for k, v in _ARGS.items()),
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"image": {"type": "string", "format": "binary"}, **_ARGS},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_PREDICTION, "Detections or top-5 classes, as Ultralytics' Results.summary()"),
                    **_errors(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "Models ready in the inference server",
                "responses": {"200": _json({"type": "object", "properties": {"data": {"type": "array", "items": _MODEL}}}, "Models"), **_errors(503)},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "One model",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object", "properties": {"data": _MODEL}}, "The model"), **_errors(404, 503)},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "Alive")}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {"200": _json({"type": "object"}, "Ready"), **_errors(503)}}},
    },
}
