"""The OpenAPI description of the models API (gateway/api/models.py): uploaded models' routes and their status
resource (gateway/models/resource.py), joined to /openapi.json's paths by gateway/api/openapi.py."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_schemas import ERROR, MODEL
from gateway.modelcard import TASKS
from gateway.models.record import STATUSES, STAGES

_NULLABLE_STRING = {"type": ["string", "null"]}
_NAMES = {"type": "object", "additionalProperties": {"type": "string"}}
VERSION = {
    "type": "object",
    "required": ["number", "status", "stage", "progress", "serving", "sha256", "size"],
    "properties": {
        "number": {"type": "integer", "minimum": 1},
        "status": {"enum": list(STATUSES)},
        "stage": {"enum": list(STAGES)},
        "progress": {"type": "number", "minimum": 0, "maximum": 1, "description": "Of the stage"},
        "message": {"type": "string"},
        "reason": {"type": "string", "description": "Why it failed, for the uploader to act on ('' otherwise)"},
        "serving": {"type": "boolean", "description": "Predictions use this version"},
        "created": _NULLABLE_STRING,
        "updated": _NULLABLE_STRING,
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "size": {"type": "integer", "description": "Bytes of the uploaded .pt"},
        "task": {"anyOf": [{"enum": list(TASKS)}, {"type": "null"}]},
        "names": _NAMES,
        "imgsz": {"type": ["integer", "null"]},
        "half": {"type": "boolean"},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}, "description": "Seconds per stage"},
        "built_with": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
UPLOADED = {
    "type": "object",
    "required": ["id", "source", "status", "version", "stage", "progress", "serving"],
    "properties": {
        **MODEL["properties"],  # type: ignore[dict-item]
        "task": {"anyOf": [{"enum": list(TASKS)}, {"type": "null"}]},
        "default_size": {"type": ["integer", "null"]},
        "source": {"const": "upload"},
        "status": {"enum": [*STATUSES, "deleted"], "description": "ready, or the described version's state"},
        "version": {"type": "integer", "description": "The version status .. reason describe"},
        "stage": {"enum": list(STAGES)},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "message": {"type": "string"},
        "reason": {"type": "string"},
        "serving": {"type": ["integer", "null"], "description": "The version predictions use"},
        "created": _NULLABLE_STRING,
        "updated": _NULLABLE_STRING,
        "last_used": _NULLABLE_STRING,
        "versions": {"type": "array", "items": VERSION, "description": "Oldest first (GET /v1/models leaves it out)"},
        "requested_version": {
            "type": "integer",
            "description": "In a 202 only: the version the upload added, or the rollback asked to serve",
        },
    },
}
ANY_MODEL = {"anyOf": [MODEL, UPLOADED]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["success", "data"], "properties": {"data": schema}}, description)


_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
_ID = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
_LOCATION = {"Location": {"description": "/v1/models/{id}: poll it for the status", "schema": {"type": "string"}}}
_ERRORS = {
    "400": "A bad id, imgsz, half or form (the message names it)",
    "401": "Missing, invalid or revoked API key",
    "403": "The key has no admin scope, or may not use this model id",
    "404": "No uploaded model with this id",
    "408": "The body arrived too slowly",
    "409": "The id is a built-in model's, or the model's state does not allow it now (the message says why)",
    "413": "The checkpoint is over GATEWAY_MAX_MODEL_BYTES",
    "422": "The export worker refused the checkpoint (the message names the reason)",
    "429": "Too many of the key's requests in progress",
    "503": "The model registry is unreachable",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ERROR, _ERRORS[str(c)]) for c in codes}


def _upload(with_id: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "The YOLOv8/YOLO11 checkpoint (.pt)"},
        "imgsz": {"type": "integer", "minimum": 32, "maximum": 1280, "description": "Default: as trained"},
        "half": {"type": "boolean", "default": False},
    }
    if with_id:
        properties["id"] = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
    required = ["file", "id"] if with_id else ["file"]
    schema = {"type": "object", "required": required, "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


_ACCEPTED = {
    "202": {**_ok(UPLOADED, "Stored and queued (or past its checks): the model's status"), "headers": _LOCATION}
}
_UPLOAD_ERRORS = _errors(400, 401, 403, 408, 409, 413, 422, 429, 503)

PATHS: dict[str, Any] = {
    "/v1/models": {
        "post": {
            "summary": "Upload your own model (admin): a .pt under an id you choose",
            "description": "The answer waits up to GATEWAY_MODEL_CHECK_WAIT_S for the export worker's checks: "
            "422 with the reason when it refuses the file, else 202.",
            "security": _SECURITY,
            "requestBody": _upload(with_id=True),
            "responses": {**_ACCEPTED, **_UPLOAD_ERRORS},
        },
    },
    "/v1/models/{model_id}/rollback": {
        "post": {
            "summary": "Serve an earlier version again (admin); default: the previous one that served",
            "security": _SECURITY,
            "parameters": [
                _ID,
                {"name": "version", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
            ],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"version": {"type": "integer", "minimum": 1}}}
                    }
                },
            },
            "responses": {**_ACCEPTED, **_errors(400, 401, 403, 404, 409, 503)},
        },
    },
}
ONE_MODEL: dict[str, Any] = {
    "put": {
        "summary": "Upload a new version of your model (admin); the version serving now serves until it is ready",
        "security": _SECURITY,
        "parameters": [_ID],
        "requestBody": _upload(with_id=False),
        "responses": {**_ACCEPTED, **_UPLOAD_ERRORS, **_errors(404)},
    },
    "delete": {
        "summary": "Delete your model and every version (admin): predictions answer 404 at once",
        "security": _SECURITY,
        "parameters": [_ID],
        "responses": {
            "200": _ok({"type": "object", "properties": {"id": {"type": "string"}}}, "Deleted"),
            **_errors(400, 401, 403, 404, 409, 503),
        },
    },
}
