"""The OpenAPI 3.1 description of the API, served at /openapi.json (and used by the fuzz tests)."""

from __future__ import annotations

from typing import Any

from gateway.api import openapi_models
from gateway.api.openapi_admin import ADMIN_PATHS
from gateway.api.openapi_jobs import PATHS as JOBS_PATHS
from gateway.api.openapi_schemas import (
    ERROR,
    IMAGES,
    MODEL,
    NDJSON,
    PLATFORM_ERROR,
    PLATFORM_IMAGES,
    PREDICTION,
    VIDEO,
)
from gateway.api.openapi_streams import paths as stream_paths
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


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, platform: bool = False) -> dict[str, Any]:
    """The error answers: the HUB's envelope, or (`platform`) the Platform's `{"error"}`, where a file that is not an
    image, or does not decode, is a 400 and a 429 says `retryAfter` and `resetAt`."""
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
    if platform:  # there the 422 is a 400, which also says what a 415 says
        text[400] += "; a file that is not a supported image or video, or that does not decode"
        broken = {"type": "object", "required": ["error", "images", "metadata"]}
        return {
            str(c): _json({"anyOf": [PLATFORM_ERROR, broken]} if c == 400 else PLATFORM_ERROR, text[c]) for c in codes
        }
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
    "details": {**_BOOLEAN, "description": f"{{images, metadata}}: add the gateway's own fields. {BOOLEAN_HELP}"},
}
_ALIAS_SCHEMAS = {
    alias: {**_ARG_SCHEMAS[name], "description": f"Same as `{name}` (the newer API's name); send one"}
    for alias, name in ALIASES.items()
}
_ARGS = {name: _ARG_SCHEMAS[name] for name in ARGUMENTS} | _ALIAS_SCHEMAS
# The newer Ultralytics API's routes take the same arguments; only the IoU default differs (that of YOLO.predict)
_ARGS_V2 = _ARGS | {"iou": {**_ARG_SCHEMAS["iou"], "default": IOU_DEFAULT["platform"]}}
_V2_ERRORS = (400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 502, 503, 504)
_PLATFORM_ERRORS = (400, 401, 403, 404, 408, 409, 413, 429, 502, 503, 504)  # 415 and 422 are 400s there
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


def _images_operation(
    summary: str,
    args: dict[str, Any],
    answer: dict[str, Any],
    path: tuple[str, ...] = ("model_id",),
    field: bool = False,
) -> dict[str, Any]:
    """A route answered as {images, metadata}, the model named by the last of its `path` parameters, else by a `model`
    `field`, else by the key. The Platform's answers come with its errors, the others with the HUB's."""
    extra = {"model": _MODEL_FIELD} if field else {}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path]
    errors = _errors(*_PLATFORM_ERRORS, platform=True) if answer is PLATFORM_IMAGES else _errors(*_V2_ERRORS)
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}, {"bearer": []}],
            "parameters": params + _query(args | extra),
            "requestBody": _multipart("file", args, extra),
            "responses": {"200": _success(answer, _V2_OK), **errors},
        }
    }


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "YOLO Inference API",
        "version": "1",
        "description": "Ultralytics HUB compatible YOLO inference on Triton, in every dialect of Ultralytics' "
        "inference APIs (README, Dialects). /dialects/<dialect>/ followed by a dialect's own paths pins it.",
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
                "description": "HUB v1; a key may answer with normalized rows (hub-xywhn); the newer body's names "
                "without the first docs' (a `file` part, imgsz, conf) answer as {images, metadata} (hub-images)",
                "security": [{"apiKey": []}],
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    *_query(_ARGS),
                ],
                "requestBody": _multipart("image", _ARGS),
                "responses": {
                    "200": _success(
                        {"anyOf": [PREDICTION, VIDEO, IMAGES]},
                        "Detections or top-5 classes, as Ultralytics' Results.summary() "
                        "(several images: one entry each; a video: one entry per frame, "
                        "or NDJSON lines with stream=true)",
                    ),
                    **_errors(*_V2_ERRORS),
                },
            }
        },
        "/api/models/{model_id}/predict": _images_operation(
            "The Ultralytics Platform: images or a video as {images, metadata}; model_id may be an owner/project/model "
            "slug, its last segment names the model",
            _ARGS_V2,
            PLATFORM_IMAGES,
        ),
        "/api/deployments/{owner}/{deployment}/predict": _images_operation(
            "The Platform SDK's deployments.predict: a deployment named after its model",
            _ARGS_V2,
            PLATFORM_IMAGES,
            ("owner", "deployment"),
        ),
        "/": _images_operation(
            "predict.ultralytics.com: the model in a `model` field (a HUB model URL or an id), else the key's one",
            _ARGS,
            IMAGES,
            (),
            field=True,
        ),
        "/dedicated/{model_id}": _images_operation(
            "A predict.ultralytics.com dedicated endpoint bound to one model by its base URL", _ARGS, IMAGES
        ),
        "/dedicated/{model_id}/predict": _images_operation(
            "A Platform dedicated endpoint bound to one model by its base URL", _ARGS_V2, PLATFORM_IMAGES
        ),
        "/predict": _images_operation(
            "A Platform dedicated endpoint bound to the key's one model", _ARGS_V2, PLATFORM_IMAGES, ()
        ),
        "/v1/auth": {
            "post": {
                "summary": "HUB v1: check a key (hub-sdk's login): success true, the key's id, name, models, dialect",
                "security": [{"apiKey": []}, {"bearer": []}],
                "responses": {
                    "200": _json({"type": "object", "required": ["success", "data"]}, "The key is valid"),
                    **_errors(401, 503),
                },
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
SPEC["paths"] |= ADMIN_PATHS  # the admin API's (/v1/keys), described in openapi_admin.py


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["success", "data"], "properties": {"data": schema}}, description)


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
SPEC["paths"] |= JOBS_PATHS  # video jobs (/v1/jobs), described in openapi_jobs.py
SPEC["paths"] |= stream_paths(_ARG_SCHEMAS)  # live streams and webhooks (gateway/api/live.py), openapi_streams.py
