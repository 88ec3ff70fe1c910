"""The OpenAPI 3.1 description of the API, served at /openapi.json (and used by the fuzz tests)."""

from __future__ import annotations

from typing import Any

from gateway.api import openapi_models
from gateway.api.openapi_schemas import (
    ERROR,
    IMAGES,
    MODEL,
    NDJSON,
    PREDICTION,
    VIDEO,
)
from gateway.arguments import (
    ALIASES,
    ARGUMENTS,
    BOOLEAN_HELP,
    CONFIDENCE_RANGE,
    DECIMALS,
    DECIMALS_RANGE,
    FORMATS,
    IOU_DEFAULT,
    IOU_RANGE,
    MAX_DET_RANGE,
    SEQUENCE_PATTERN,
    SIZE_RANGE,
    TRACKERS,
    VID_STRIDE_RANGE,
)
from gateway.keys.ratelimit import MAX_RATE, MIN_RATE


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad argument, or image/url missing or both given",
        401: "Missing or invalid API key",
        403: "Key not allowed for this model",
        404: "Unknown model",
        408: "The request body arrived too slowly (the connection is closed)",
        409: "A `sequence` moved on while this frame of it was tracked (another frame sent at once); not tracked",
        413: "Upload, URL body, pixel count, or a video's duration or frame count over the limit",
        415: "Not a supported image or video format",
        422: "Image or video could not be decoded (a video that broke off: the frames read come with the error)",
        429: "Rate limit exceeded, or too many of the key's requests in progress",
        502: "URL could not be fetched",
        503: "Inference server or model not ready, or the gateway is busy",
        504: "Inference timed out",
    }
    # a video that broke off partway answers 422 with the frames read: `data`/`video` (HUB) or `images`/`metadata`
    broken = {"type": "object", "required": ["success", "message"], "properties": {"success": {"const": False}}}
    return {str(c): _json({"anyOf": [ERROR, broken]} if c == 422 else ERROR, text[c]) for c in codes}


_BOOLEAN = {"type": "boolean", "default": False, "description": f"Also accepted: {BOOLEAN_HELP}"}
# Every argument `parse_args` reads, keyed as in arguments.ARGUMENTS (a test keeps the two equal)
_ARG_SCHEMAS: dict[str, dict[str, Any]] = {
    "size": {
        "type": "integer",
        "minimum": SIZE_RANGE[0],
        "maximum": SIZE_RANGE[1],
        "default": 640,
        "description": "Inference size; rounded up to a multiple of the model's stride (32)",
    },
    "confidence": {"type": "number", "minimum": CONFIDENCE_RANGE[0], "maximum": CONFIDENCE_RANGE[1], "default": 0.25},
    "iou": {
        "type": "number",
        "minimum": IOU_RANGE[0],
        "maximum": IOU_RANGE[1],
        "default": IOU_DEFAULT["hub"],
        "description": "NMS IoU threshold",
    },
    "url": {"type": "string", "default": "", "description": "A public http(s) image URL, used when no file is sent"},
    "normalize": {
        **_BOOLEAN,
        "description": f"Coordinates divided by the image width/height. {_BOOLEAN['description']}",
    },
    "format": {"enum": list(FORMATS), "default": "json", "description": "image/jpeg/jpg or png: the annotated image"},
    "max_det": {
        "type": "integer",
        "minimum": MAX_DET_RANGE[0],
        "maximum": MAX_DET_RANGE[1],
        "default": MAX_DET_RANGE[1],
    },
    "classes": {
        "type": "string",
        "pattern": "^[0-9]{1,4}(,[0-9]{1,4})*$",
        "description": "Keep only these class ids, e.g. 0,2,5 (each below the model's class count)",
    },
    "agnostic": {**_BOOLEAN, "description": f"Class-agnostic NMS. {_BOOLEAN['description']}"},
    "vid_stride": {
        "type": "integer",
        "minimum": VID_STRIDE_RANGE[0],
        "maximum": VID_STRIDE_RANGE[1],
        "default": 1,
        "description": "A video: analyse every n-th frame, as Ultralytics' vid_stride",
    },
    "decimals": {
        "type": "integer",
        "minimum": DECIMALS_RANGE[0],
        "maximum": DECIMALS_RANGE[1],
        "default": DECIMALS,
        "description": "Digits every number of the rows is rounded to (Ultralytics' summary(decimals=...))",
    },
    "source": {
        "type": "string",
        "default": "",
        "description": "The newer API's alternative to a file: a public http(s) image URL (the same guard as `url`), "
        "or the image's bytes in base64, plain or as a data:image/...;base64, URI (within the upload limit)",
    },
    "stream": {
        **_BOOLEAN,
        "description": f"A video: answer NDJSON, a line per frame as it is done. {_BOOLEAN['description']}",
    },
    "track": {
        **_BOOLEAN,
        "description": "Track objects as model.track() does: each detection gets a track_id (a video: across its "
        "frames; an image: alone, unless `sequence`). Default confidence then 0.1, as model.track(). Detect, "
        "segment, pose and obb models (a classifier: 422). Implied by `tracker` or `sequence`. "
        f"{_BOOLEAN['description']}",
    },
    "tracker": {
        "enum": list(TRACKERS),
        "default": TRACKERS[0],
        "description": "With track: ByteTrack or BoT-SORT (without ReID); bytetrack.yaml and botsort.yaml work too",
    },
    "sequence": {
        "type": "string",
        "pattern": f"^{SEQUENCE_PATTERN.pattern}$",
        "description": "One image per request: continue this key's tracks of that name (a camera id, say) across "
        "requests, as model.track(frame, persist=True); ends after GATEWAY_SEQUENCE_TTL_S idle. 409: another frame "
        "of it was tracked meanwhile; 429: the key's sequences are at their cap; 503: the state store is unreachable",
    },
}
_ALIAS_SCHEMAS = {
    alias: {**_ARG_SCHEMAS[name], "description": f"Same as `{name}` (the newer API's name); send one"}
    for alias, name in ALIASES.items()
}
_ARGS = {name: _ARG_SCHEMAS[name] for name in ARGUMENTS} | _ALIAS_SCHEMAS
# The newer Ultralytics API's routes take the same arguments; only the IoU default differs (that of YOLO.predict)
_ARGS_V2 = _ARGS | {"iou": {**_ARG_SCHEMAS["iou"], "default": IOU_DEFAULT["platform"]}}
_V2_ERRORS = (400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 502, 503, 504)
_HEADERS = {
    "Server-Timing": {
        "description": "Milliseconds per stage: decode, letterbox, triton, postprocess, total; "
        "fetch for a url, render for an annotated image",
        "schema": {"type": "string"},
    },
    "X-Model-Warning": {
        "description": "Present while the model serves untrained fixture weights",
        "schema": {"type": "string"},
    },
    "X-Sequence-Frame": {
        "description": "With `sequence`: the frame of the sequence this image became (1: it started the sequence)",
        "schema": {"type": "integer", "minimum": 1},
    },
}
_MODEL_FIELD = {"type": "string", "description": "A model id, or a HUB model URL (its last path segment names it)"}
_IMAGE = {"schema": {"type": "string", "format": "binary"}}


def _query(args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, "in": "query", "required": False, "schema": v} for k, v in args.items()]


def _success(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A prediction's 200: JSON, the annotated image for format=image/jpeg/jpg/png, or NDJSON for a streamed video."""
    answer = _json(schema, description)
    answer["content"] |= {"image/jpeg": _IMAGE, "image/png": _IMAGE, **NDJSON}
    return answer | {"headers": _HEADERS}


_V2_OK = "One entry per image (a video: one per frame, or NDJSON lines with stream=true), in order"


def _multipart(part: str, args: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    description = "Both file part names (image, file) are accepted on every route; at most 8 files in all"
    files = {
        "type": "array",
        "maxItems": 8,
        "items": {"type": "string", "format": "binary"},
        "description": description,
    }
    properties = {part: files, **args, **(extra or {})}
    return {
        "required": False,
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": properties}}},
    }


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "YOLO Inference API",
        "version": "1",
        "description": "Ultralytics HUB compatible YOLO inference on Triton.",
    },
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
    },
    "paths": {
        "/v1/predict/{model_id}": {
            "post": {
                "summary": "Run a model on one image (file upload or URL)",
                "security": [{"apiKey": []}],
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    *_query(_ARGS),
                ],
                "requestBody": _multipart("image", _ARGS),
                "responses": {
                    "200": _success(
                        {"anyOf": [PREDICTION, VIDEO]},
                        "Detections or top-5 classes, as Ultralytics' Results.summary() "
                        "(several images: one entry each; a video: one entry per frame, "
                        "or NDJSON lines with stream=true)",
                    ),
                    **_errors(*_V2_ERRORS),
                },
            }
        },
        "/api/models/{model_id}/predict": {
            "post": {
                "summary": "The newer Ultralytics API: one or more images, answered as {images, metadata}",
                "description": "model_id may be an owner/project/model slug; its last segment names the model.",
                "security": [{"apiKey": []}, {"bearer": []}],
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    *_query(_ARGS_V2),
                ],
                "requestBody": _multipart("file", _ARGS_V2),
                "responses": {"200": _success(IMAGES, _V2_OK), **_errors(*_V2_ERRORS)},
            }
        },
        "/": {
            "post": {
                "summary": "Dedicated-API style: the model in a `model` field (an id or a HUB model URL)",
                "security": [{"apiKey": []}, {"bearer": []}],
                "parameters": _query(_ARGS_V2 | {"model": _MODEL_FIELD}),
                "requestBody": _multipart("file", _ARGS_V2, {"model": _MODEL_FIELD}),
                "responses": {"200": _success(IMAGES, _V2_OK), **_errors(*_V2_ERRORS)},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "Models ready in the inference server",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"data": {"type": "array", "items": MODEL}}}, "Models"
                    ),
                    **_errors(503),
                },
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "One model",
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json({"type": "object", "properties": {"data": MODEL}}, "The model"),
                    **_errors(404, 503),
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "Alive")}}},
        "/readyz": {
            "get": {"summary": "Readiness", "responses": {"200": _json({"type": "object"}, "Ready"), **_errors(503)}}
        },
    },
}

# The admin API (gateway/api/admin.py): keys with the `admin` scope manage keys and read their usage.
_KEY = {
    "type": "object",
    "required": ["id", "name", "created", "models", "rate", "revoked", "admin"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "created": {"type": "string"},
        "models": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "rate": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "revoked": {"type": "boolean"},
        "admin": {"type": "boolean"},
        "last_used": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "key": {"type": "string", "description": "The key itself: only in the create response, shown once"},
    },
}
_USAGE_ROW = {
    "type": "object",
    "required": ["day", "model", "requests", "images", "errors", "latency_ms"],
    "properties": {
        "day": {"type": "string"},
        "model": {"type": "string"},
        "requests": {"type": "integer", "minimum": 0},
        "images": {"type": "integer", "minimum": 0},
        "errors": {"type": "object", "additionalProperties": {"type": "integer"}},
        "latency_ms": {"type": "object"},
    },
}
_NEW_KEY = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "models": {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "null"}]},
        "rate": {"anyOf": [{"type": "number", "minimum": MIN_RATE, "maximum": MAX_RATE}, {"type": "null"}]},
        "admin": {"type": "boolean", "default": False},
    },
}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN_ERRORS = {
    "400": _json(ERROR, "Bad body or argument"),
    "401": _json(ERROR, "Missing, invalid or revoked API key"),
    "403": _json(ERROR, "The key has no admin scope, or the new key would be wider than the key's own scope"),
    "503": _json(ERROR, "The key store (Redis) is unreachable"),
}
_ADMIN: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["success", "data"], "properties": {"data": schema}}, description)


SPEC["paths"]["/v1/keys"] = {
    "post": {
        "summary": "Create an API key (admin); the key is in the answer, once",
        "security": _ADMIN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _NEW_KEY}}},
        "responses": {"201": _ok(_KEY, "The new key"), "413": _json(ERROR, "Body over 4 KiB"), **_ADMIN_ERRORS},
    },
    "get": {
        "summary": "List API keys (admin); never a secret",
        "security": _ADMIN,
        "responses": {"200": _ok({"type": "array", "items": _KEY}, "Every key"), **_ADMIN_ERRORS},
    },
}
SPEC["paths"]["/v1/keys/{key_id}"] = {
    "delete": {
        "summary": "Revoke an API key (admin): every gateway refuses it within a second",
        "security": _ADMIN,
        "parameters": [_KEY_ID],
        "responses": {"200": _ok(_KEY, "The revoked key"), "404": _json(ERROR, "No such key"), **_ADMIN_ERRORS},
    },
}
SPEC["paths"]["/v1/keys/{key_id}/usage"] = {
    "get": {
        "summary": "A key's usage per day and model (admin): requests, images, errors by status, latency p50/p95",
        "security": _ADMIN,
        "parameters": [
            _KEY_ID,
            {
                "name": "days",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 400, "default": 7},
            },
        ],
        "responses": {
            "200": _ok({"type": "object", "properties": {"usage": {"type": "array", "items": _USAGE_ROW}}}, "Usage"),
            "404": _json(ERROR, "No such key"),
            **_ADMIN_ERRORS,
        },
    },
}

# Your own models (gateway/api/models.py, issue #27): the models API, and uploaded models in the listings
for _path, _operations in {**openapi_models.PATHS, "/v1/models/{model_id}": openapi_models.ONE_MODEL}.items():
    SPEC["paths"].setdefault(_path, {}).update(_operations)
SPEC["paths"]["/v1/models"]["get"]["summary"] = "Built-in models ready in the inference server, and uploaded models"
SPEC["paths"]["/v1/models"]["get"]["responses"]["200"] = _ok(
    {"type": "array", "items": openapi_models.ANY_MODEL}, "Models"
)
SPEC["paths"]["/v1/models/{model_id}"]["get"]["responses"]["200"] = _ok(
    openapi_models.ANY_MODEL, "The model (an uploaded one: its status resource)"
)
