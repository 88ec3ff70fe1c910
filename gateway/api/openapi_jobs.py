"""The OpenAPI description of video jobs (gateway/api/jobs.py): submit a video, poll it, fetch its result, cancel
it. Part of /openapi.json (openapi.py adds these paths)."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_schemas import ERROR, NDJSON


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["success", "data"], "properties": {"data": schema}}, description)


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}
JOB = {
    "type": "object",
    "required": ["id", "state", "model", "progress", "status_url", "result"],
    "properties": {
        "id": {"type": "string"},
        "state": {"enum": ["queued", "running", "done", "failed", "cancelled", "deleted"]},
        "model": {"type": "string"},
        "progress": {
            "type": "object",
            "properties": {
                "frames_done": {"type": "integer", "minimum": 0},
                "frames_total": {"type": ["integer", "null"], "description": "null: the container does not say"},
                "percent": _NUMBER_OR_NULL,
                "fps": {"type": "number", "minimum": 0, "description": "Frames analysed per second"},
                "checkpoint": {
                    "type": ["integer", "null"],
                    "description": "Frames durable in the last checkpoint: a takeover goes on after them",
                },
                "resumed_at": {
                    "type": ["integer", "null"],
                    "description": "The frames the last run took from a checkpoint (0: it found none it could use)",
                },
                "downloaded_bytes": {"type": ["integer", "null"], "description": "A `url` job: bytes downloaded"},
                "download_bytes_total": {"type": ["integer", "null"], "description": "null: the server did not say"},
            },
        },
        "stage": {"enum": ["downloading", "analysing", None], "description": "While running; null otherwise"},
        "url": {**_STRING_OR_NULL, "description": "A `url` job's URL, without query string or credentials"},
        "created": _NUMBER_OR_NULL,
        "started": _NUMBER_OR_NULL,
        "finished": _NUMBER_OR_NULL,
        "expires": {**_NUMBER_OR_NULL, "description": "Unix s: the job and its result are deleted then"},
        "runs": {"type": "integer", "minimum": 0, "description": "2 or more: taken over after its owner died"},
        "owner": _STRING_OR_NULL,
        "error": _STRING_OR_NULL,
        "error_status": {"type": ["integer", "null"]},
        "webhook": _STRING_OR_NULL,
        "webhook_secret": {"type": "string", "description": "Only in the answer that made the key's secret, once"},
        "status_url": {"type": "string"},
        "result": {**_STRING_OR_NULL, "description": "GET it for the result once done or failed"},
    },
}
_ARGS = {
    "size": {"type": "integer", "minimum": 32, "maximum": 1280},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "iou": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.45},
    "classes": {"type": "string", "description": "Class ids, comma-separated"},
    "max_det": {"type": "integer", "minimum": 1},
    "normalize": {"type": "boolean"},
    "vid_stride": {"type": "integer", "minimum": 1, "description": "Every n-th frame"},
    "track": {"type": "boolean"},
    "tracker": {"enum": ["bytetrack", "botsort"]},
}
_SUBMIT = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "The video (MP4/MOV, AVI, WebM/MKV)"},
                    "url": {
                        "type": "string",
                        "description": "Instead of `file`: the video's public http(s) URL, downloaded by the job",
                    },
                    "model": {"type": "string"},
                    "webhook": {"type": "string", "description": "http(s):// URL told when the job ends (signed)"},
                    **_ARGS,
                },
            }
        }
    },
}
_ERRORS = {
    "400": "A bad argument or form (the message names it; both or neither of `file` and `url`, a `url` refused by "
    "the URL guard), or a result asked for before the job finished",
    "401": "Missing, invalid or revoked API key",
    "403": "The key may not use this model",
    "404": "No such job for this key (or its result expired), or an unknown model",
    "408": "The body arrived too slowly",
    "413": "The video is over a limit (size, duration, frames)",
    "415": "Not a video this gateway reads",
    "422": "A video that does not decode, or `track` with a classifier",
    "429": "Too many of the key's requests in progress, or GATEWAY_MAX_JOBS_PER_KEY unfinished jobs",
    "503": "The gateway is full, jobs are off, or the shared state is unreachable",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ERROR, _ERRORS[str(c)]) for c in codes}


_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
_ID = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_LOCATION = {"Location": {"description": "/v1/jobs/{id}: poll it for progress", "schema": {"type": "string"}}}

PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "summary": "Submit a video as a job: 202 at once; poll it, or give a webhook",
            "security": _SECURITY,
            "requestBody": _SUBMIT,
            "responses": {
                "202": {**_ok(JOB, "Queued"), "headers": _LOCATION},
                **_errors(400, 401, 403, 404, 408, 413, 415, 422, 429, 503),
            },
        },
        "get": {
            "summary": "The key's jobs: unfinished ones and finished ones not yet expired",
            "security": _SECURITY,
            "responses": {"200": _ok({"type": "array", "items": JOB}, "Jobs"), **_errors(401, 503)},
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "summary": "A job: state, progress, error, result URL",
            "security": _SECURITY,
            "parameters": _ID,
            "responses": {"200": _ok(JOB, "The job"), **_errors(401, 404, 503)},
        },
        "delete": {
            "summary": "Cancel a queued or running job, or delete a finished one",
            "security": _SECURITY,
            "parameters": _ID,
            "responses": {"200": _ok(JOB, "Cancelled (or deleted)"), **_errors(401, 404, 503)},
        },
    },
    "/v1/jobs/{job_id}/result": {
        "get": {
            "summary": "A finished job's result: the v1 video route's NDJSON answer (a line per frame, then the end)",
            "security": _SECURITY,
            "parameters": _ID,
            "responses": {"200": {"description": "NDJSON", "content": NDJSON}, **_errors(400, 401, 404, 503)},
        },
    },
}
