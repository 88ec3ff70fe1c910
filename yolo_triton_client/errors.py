"""What the client raises, and the one place that maps an HTTP error answer to it.

ClientError
├── TransportError              no answer: connection refused or dropped, client-side timeout (after retries)
└── ApiError (.status, .message, .retry_after, .body)
    ├── InvalidRequest          400, 413, 415, 422: the arguments or the image; fix the request
    ├── AuthError               401, 403: missing, unknown or revoked key, or a key restricted to other models
    ├── NotFound                404: unknown model id (or route)
    ├── RateLimited             429: the key's rate limit (retried, honouring Retry-After)
    ├── Unavailable             503: the server or the model is busy or not ready (retried)
    └── UpstreamError           502, 504: the `url` could not be fetched, or inference missed its deadline
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class ClientError(Exception):
    """Base of everything this package raises for a failed call."""


class TransportError(ClientError):
    """The server gave no HTTP answer (after the configured retries)."""


class ApiError(ClientError):
    """The server answered with an error status and a JSON `message`."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, from the Retry-After header (429 and 503)
        self.body = body  # the decoded JSON error body, or the text when it was not JSON

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"


class InvalidRequest(ApiError):
    pass


class AuthError(ApiError):
    pass


class NotFound(ApiError):
    pass


class RateLimited(ApiError):
    pass


class Unavailable(ApiError):
    pass


class UpstreamError(ApiError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest, 413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest,
    401: AuthError, 403: AuthError,
    404: NotFound,
    429: RateLimited,
    503: Unavailable,
    502: UpstreamError, 504: UpstreamError,
}  # fmt: skip


def api_error(status: int, message: str, retry_after: float | None = None, body: Any = None) -> ApiError:
    """The ApiError subclass for `status` (plain ApiError for statuses the contract does not name)."""
    return _BY_STATUS.get(status, ApiError)(status, message, retry_after, body)


def error_from_response(response: httpx.Response) -> ApiError:
    """The ApiError for a non-2xx answer; the message is the JSON `message` (the Platform's routes: `error`), else the
    start of the body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message = (body.get("message") or body.get("error")) if isinstance(body, dict) else None
    if not isinstance(message, str):
        message = response.reason_phrase + (f": {response.text[:200]}" if response.text else "")
    return api_error(response.status_code, message, retry_after(response.headers.get("retry-after")), body)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; parsedate gives a naive datetime for '-0000'
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
