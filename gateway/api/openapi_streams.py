"""The OpenAPI description of the live streams API (gateway/api/live.py): create, list, read and delete a stream,
follow its Server-Sent Events, and rotate the key's webhook signing secret. openapi.py adds these paths to
/openapi.json, with its own schemas of the prediction arguments (a stream's body takes those of PREDICTION)."""

from __future__ import annotations

from typing import Any

from gateway.api.live import MAX_BODY
from gateway.api.openapi_schemas import ERROR
from gateway.arguments import TRACKERS
from gateway.live.request import FPS_RANGE
from gateway.live.request import PREDICTION as STREAM_ARGUMENTS
from gateway.live.service import public
from gateway.work.guard import MAX_URL

STREAM = {
    "type": "object",
    "required": list(public("st_0", {})),  # every field the resource always has
    "properties": {
        "id": {"type": "string", "pattern": "^st_[0-9a-f]+$"},
        "state": {
            "type": "string",
            "description": "starting, connecting, running, reconnecting, stopped or failed (deleted: in the DELETE "
            "answer)",
        },
        "source": {"type": "string", "description": "As given, without a user name, password or query string"},
        "model": {"type": "string"},
        "vid_stride": {"type": "integer", "minimum": 1},
        "fps": {"type": ["number", "null"], "description": "Frames analysed a second (null: every vid_stride-th)"},
        "track": {"type": "boolean"},
        "tracker": {"anyOf": [{"enum": list(TRACKERS)}, {"type": "null"}], "description": "null: not tracked"},
        "webhook": {"type": ["string", "null"]},
        "created": {"type": "number", "description": "Unix time, seconds"},
        "owner": {"type": ["string", "null"], "description": "The replica running it"},
        "last_error": {"type": ["string", "null"]},
        "events": {"type": "string", "description": "The path of its Server-Sent Events"},
        "last_event": {"type": "integer", "minimum": 0, "description": "The id of its newest event (0: none yet)"},
        "input_fps": {"type": "number", "minimum": 0, "description": "Frames a second the source sends"},
        "processed_fps": {"type": "number", "minimum": 0},
        "lag_ms": {"type": "number", "minimum": 0, "description": "From a frame's read to its event, last frame"},
        **{
            name: {"type": "integer", "minimum": 0}
            for name in ("frames_read", "frames_processed", "frames_dropped", "frames_rate_limited", "frames_failed")
        },
        "reconnects": {"type": "integer", "minimum": 0},
        "width": {"type": "integer", "minimum": 0, "description": "The last analysed frame's, pixels (0: none yet)"},
        "height": {"type": "integer", "minimum": 0, "description": "The last analysed frame's, pixels (0: none yet)"},
        "webhook_secret": {
            "type": "string",
            "description": "In a 201 only, when this stream's webhook made the key's first secret: shown once",
        },
    },
}
_ERRORS = {
    400: "A bad body, field or value, or a source or webhook URL the URL guard refuses (a host that does not "
    "resolve, a private address, a port under 1024: the message names it)",
    401: "Missing, invalid or revoked API key",
    403: "The key may not use this model",
    404: "No such stream for this key (or, creating one, no such model)",
    408: "The body arrived too slowly",
    413: f"The body is over {MAX_BODY} bytes",
    429: "The key already runs GATEWAY_MAX_STREAMS_PER_KEY streams (Retry-After)",
    503: "The inference server, the model or the shared state (Redis) is not ready, or this single gateway already "
    "runs GATEWAY_MAX_STREAMS streams (Retry-After)",
}
_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
_ID = {"name": "stream_id", "in": "path", "required": True, "schema": {"type": "string"}}
_EVENTS = (
    "`event: state` with the stream resource first, then one event per analysed frame: `id:` its number (1, 2, ... "
    'for the stream\'s life, across replicas) and a `data:` line with a video frame\'s JSON (`{"frame", "time", '
    '"data"}`), `: keep-alive` comments while quiet, and `event: end` when the stream is deleted'
)
_REPLAY = (
    "Without Last-Event-ID the events start with the next frame analysed. With it, the events after that id that "
    "the stream still keeps (its newest GATEWAY_STREAM_EVENTS_KEPT) come first, then live ones. Where kept events "
    'do not reach back to the id, `event: lost` comes first, `data: {"after": <the id>, "next": <the next id sent>, '
    '"lost": <how many are gone>, "message"}` (the same where a slow reader fell that far behind); an id the stream '
    'never gave (not a number, or above its last) gets `event: lost` with `{"after": null, "next": null, "lost": '
    'null, "message"}`, then every kept event'
)
_LAST_EVENT_ID = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "The id of the last event received (an EventSource sends it when it reconnects)",
    },
    {
        "name": "last_event_id",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "The same, for clients that can't set headers (the header wins when both are sent)",
    },
]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["success", "data"], "properties": {"data": schema}}, description)


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ERROR, _ERRORS[c]) for c in codes}


def _body(arguments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """POST /v1/streams's JSON body (gateway/live/request.py); `arguments`: the prediction arguments' schemas."""
    properties: dict[str, Any] = {
        "source": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_URL,
            "pattern": "^(rtsp|rtmp|https?)://",
            "description": "rtsp://, rtmp://, or http(s):// (an HLS playlist or an MJPEG stream); a camera's "
            "user:password@ is kept and never shown back. A public host unless GATEWAY_URL_ALLOW_HOSTS names it",
        },
        "model": {"type": "string", "minLength": 1, "maxLength": 64, "description": "GET /v1/models lists them"},
        "fps": {
            "type": "number",
            "minimum": FPS_RANGE[0],
            "maximum": FPS_RANGE[1],
            "description": "Frames analysed a second (the newest frame wins); instead of vid_stride",
        },
        "track": {
            "type": "boolean",
            "default": False,
            "description": "Each row gets a track_id, as on videos (`tracker` picks ByteTrack or BoT-SORT, and alone "
            "implies tracking; the default confidence is then 0.1), kept for the stream's life",
        },
        "webhook": {
            "type": "string",
            "description": "An http(s):// URL the frames are POSTed to in batches, signed with the key's secret",
        },
        **{name: arguments[name] for name in STREAM_ARGUMENTS},
    }
    schema = {
        "type": "object",
        "required": ["source", "model"],
        "properties": properties,
        "not": {"required": ["fps", "vid_stride"]},  # one or the other
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def paths(arguments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The streams routes' paths for /openapi.json; `arguments`: the prediction arguments' schemas (openapi.py's)."""
    return {
        "/v1/streams": {
            "post": {
                "summary": "Start a live stream: its frames analysed until it is deleted",
                "security": _SECURITY,
                "requestBody": _body(arguments),
                "responses": {
                    "201": {
                        **_ok(STREAM, "The stream (starting)"),
                        "headers": {"Location": {"description": "/v1/streams/{id}", "schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 404, 408, 413, 429, 503),
                },
            },
            "get": {
                "summary": "The key's streams",
                "security": _SECURITY,
                "responses": {"200": _ok({"type": "array", "items": STREAM}, "Streams"), **_errors(401, 503)},
            },
        },
        "/v1/streams/{stream_id}": {
            "get": {
                "summary": "A stream: state, input and processed fps, lag, frames dropped, reconnects, last error",
                "security": _SECURITY,
                "parameters": [_ID],
                "responses": {"200": _ok(STREAM, "The stream"), **_errors(401, 404, 503)},
            },
            "delete": {
                "summary": "Stop a stream (its owner stops within a second) and remove it",
                "security": _SECURITY,
                "parameters": [_ID],
                "responses": {"200": _ok(STREAM, "The stream, state deleted"), **_errors(401, 404, 503)},
            },
        },
        "/v1/streams/{stream_id}/events": {
            "get": {
                "summary": "A stream's results as Server-Sent Events, one per analysed frame",
                "description": _EVENTS + ". Any replica serves it. " + _REPLAY + ".",
                "security": _SECURITY,
                "parameters": [_ID, *_LAST_EVENT_ID],
                "responses": {
                    "200": {"description": _EVENTS, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    **_errors(401, 404, 503),
                    "429": _json(
                        ERROR,
                        "The key already has GATEWAY_MAX_STREAM_FOLLOWERS_PER_KEY followers open on "
                        "this replica, or the replica serves GATEWAY_MAX_STREAM_FOLLOWERS (Retry-After)",
                    ),
                },
            },
        },
        "/v1/webhooks/secret": {
            "post": {
                "summary": "A new signing secret for the key's webhooks (shown once; deliveries use it from now on)",
                "security": _SECURITY,
                "responses": {
                    "201": _ok(
                        {
                            "type": "object",
                            "required": ["key_id", "webhook_secret"],
                            "properties": {"key_id": {"type": "string"}, "webhook_secret": {"type": "string"}},
                        },
                        "The new secret",
                    ),
                    **_errors(401, 503),
                },
            },
        },
    }
