"""Every error answer in the dialect of its request: the one the route chose (kept in the request's scope, and
chosen anew once the form is read), else the one its path implies (gateway/dialects/choice.py `for_path`: the
router's 404 and 405 on a Platform path are answered as the Platform answers). The app's one handler table."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from gateway.dialects import Dialect, for_path
from gateway.errors import GatewayError, ServiceUnavailable, http_error, internal_error

STATE = "dialect"


def set_dialect(request: HTTPConnection, dialect: Dialect) -> None:
    """From now on, errors of this request are answered in `dialect`."""
    request.scope.setdefault("state", {})[STATE] = dialect


def dialect_of(request: HTTPConnection) -> Dialect:
    found = request.scope.get("state", {}).get(STATE)
    return found if isinstance(found, Dialect) else for_path(request.url.path)


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return dialect_of(request).error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return dialect_of(request).error_response(http_error(request, exc))


async def handle_shared_state_down(request: Request, exc: Exception) -> Response:
    """Redis unreachable in a route that needs the shared state (streams, jobs, the models API): 503, not 500. The
    stores that have their own answer for this (keys, sequences) raise ServiceUnavailable themselves."""
    return dialect_of(request).error_response(
        ServiceUnavailable(
            "The gateway's shared state (Redis) is unreachable, so this request could not be served; retry in a few "
            "seconds (predictions without 'sequence' keep working meanwhile).",
            5,
        )
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return dialect_of(request).error_response(internal_error(request))


HANDLERS = {
    GatewayError: handle_gateway_error,
    HTTPException: handle_http_exception,
    RedisConnectionError: handle_shared_state_down,
    RedisTimeoutError: handle_shared_state_down,
    Exception: handle_unexpected,
}
