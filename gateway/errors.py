"""Errors the gateway answers with, and the one place that turns them into JSON responses; the HUB API's
envelope (`{"success", "message", "data"}`) that errors and other answers share.

GatewayError
├── BadRequest (400)            bad or out-of-range argument, missing/duplicate image or url
├── Unauthorized (401)          missing, unknown or revoked key
├── Forbidden (403)             key not allowed for this model
├── NotFound (404)              unknown model id or route
├── RequestTimeout (408)        the request body arrived too slowly (GATEWAY_BODY_TIMEOUT_S, GATEWAY_BODY_MIN_RATE)
├── Conflict (409)              a tracking `sequence` moved on while this frame of it was tracked (frames sent at once);
│                               models API: the id is taken (a built-in model, or an upload that serves), or the
│                               model's state does not allow the change now
├── PayloadTooLarge (413)       upload, URL body or pixel count over the limit
├── UnsupportedMediaType (415)  not an image format we decode
├── UnprocessableImage (422)    an image format we know, but the bytes don't decode; an uploaded .pt refused
├── TooManyRequests (429)       per-key rate limit
├── BadGateway (502)            the `url` could not be fetched
├── ServiceUnavailable (503)    Triton or the model not ready, or the gateway is full
└── GatewayTimeout (504)        inference did not finish in time
"""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("gateway")


class GatewayError(Exception):
    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": 'ApiKey header="x-api-key"'})


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class RequestTimeout(GatewayError):
    status = 408

    def __init__(self, message: str) -> None:
        # the rest of the body is not read: the connection is closed rather than drained at the client's pace
        super().__init__(message, {"Connection": "close"})


class Conflict(GatewayError):
    status = 409


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class UnprocessableImage(GatewayError):
    status = 422


class TooManyRequests(GatewayError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"Retry-After": str(max(1, retry_after))})


class BadGateway(GatewayError):
    status = 502


class ServiceUnavailable(GatewayError):
    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(max(1, retry_after))})


class GatewayTimeout(GatewayError):
    status = 504


def envelope(message: str, data: object, success: bool = True) -> dict[str, object]:
    """The HUB API's answer: `{"success", "message", "data"}`."""
    return {"success": success, "message": message, "data": data}


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def ok_response(data: object, message: str, status: int = 200) -> Response:
    """A successful answer in the envelope."""
    return json_response(envelope(message, data), status)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(envelope(message, {}, success=False), status, headers)


_HTTP_MESSAGES = {
    404: "Not found. Predictions are POSTed to /v1/predict/{model_id}; GET /v1/models lists the models.",
    413: "Request body too large.",
}


def http_error(request: Request, exc: HTTPException) -> GatewayError:
    """A Starlette HTTPException (the router's 404 and 405, a body it could not parse) as a GatewayError of the same
    status, its message saying what to do."""
    headers = dict(exc.headers or {})
    message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    if exc.status_code == 405:  # said per route: the methods this path does accept
        allowed = headers.get("Allow", "")
        message = f"Method {request.method} is not allowed on {request.url.path[:100]}; this path accepts {allowed}."
    elif exc.status_code == 400 and exc.detail:
        message = f"Malformed request body: {str(exc.detail).rstrip('.')}."
    error = GatewayError(message, headers)
    error.status = exc.status_code
    return error


def internal_error(request: Request) -> GatewayError:
    """The 500 answer to an exception nothing handled (logged here, with its traceback)."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return GatewayError("Internal server error. The request was not processed; please report it.")
