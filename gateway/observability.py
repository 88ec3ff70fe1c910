"""Request ids and one structured (JSON lines) access-log record per request.

The record holds the request id, method, path, model, key id (never the secret), status and latency, and for a
`url` prediction the URL's host (never its path or query string: signed URLs carry tokens there); image bytes and
form fields are never logged. The libraries' own per-request lines (uvicorn's access log, httpx's "HTTP Request: GET
<full URL>") are silenced: this record replaces the first, and the second would leak those tokens.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
access_log = logging.getLogger("gateway.access")
# Loggers that write a line per request or per outgoing call with the full URL; raised to WARNING (errors still show).
QUIET_LOGGERS = ("httpx", "httpcore", "hpack")
LogValue = str | int | float | bool | None


@dataclass
class RequestRecord:
    """What one request was: written as it goes (the routes, the flows, the URL fetch), read when it ends by its
    access-log line (`log_fields`), the metrics and its key's usage. A field left None was not learnt and is not
    logged. Never the key, the image, the form fields or a URL's path and query."""

    request_id: str
    client: str = ""  # the client's address as uvicorn reports it: Redis-mode look-up budgets; not logged
    predict: bool = False  # a prediction route (metrics and usage count it)
    model: str | None = None  # the model id as sent, cut to 64 characters
    key_id: str | None = None
    images: int | None = None  # image parts, plus a video's analysed frames
    task: str | None = None
    video: str | None = None  # the container of an uploaded video
    frames: int | None = None  # frames in a (non-streamed) video answer
    url_host: str | None = None  # the host of `url` (never its path or query string: signed URLs hold tokens there)
    url_redirect_host: str | None = None  # the host it redirected to, when another
    body_bytes: int | None = None  # bytes of the body read (the metrics' body size); not logged
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms (the metrics' stages); not logged
    headers: dict[str, str] = field(default_factory=dict)  # added to the response (X-RateLimit-*); not logged

    def log_fields(self, method: str, path: str, status: int, seconds: float) -> dict[str, LogValue]:
        """The access-log line's fields: the record's, then the request line, status and latency."""
        learnt: dict[str, LogValue] = {
            "predict": self.predict or None,
            "model": self.model,
            "key_id": self.key_id,
            "images": self.images,
            "task": self.task,
            "video": self.video,
            "frames": self.frames,
            "url_host": self.url_host,
            "url_redirect_host": self.url_redirect_host,
        }
        return {
            "request_id": self.request_id,
            **{name: value for name, value in learnt.items() if value is not None},
            "method": method,
            "path": path[:200],
            "status": status,
            "latency_ms": round(seconds * 1000, 2),
        }


_current: ContextVar[RequestRecord | None] = ContextVar("request_record", default=None)


def record_of(request: HTTPConnection) -> RequestRecord:
    """The record of `request` (made by `RequestContext`; a loose one outside it, which nothing reads)."""
    record = request.scope.get("state", {}).get("record")
    return record if isinstance(record, RequestRecord) else RequestRecord("")


def client_address() -> str:
    """The current request's client address as uvicorn reports it ("" outside a request or when unknown)."""
    record = _current.get()
    return record.client if record is not None else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the gateway's loggers, and no per-request lines from libraries (idempotent).

    Runs in `create_app`, after uvicorn's CLI has configured its loggers (`uvicorn gateway.app:create_app --factory`);
    a caller that configures uvicorn later (`uvicorn.run(app)`) passes `access_log=False` itself.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("gateway", "gateway.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    uvicorn_access = logging.getLogger("uvicorn.access")  # its line holds the query string (`?url=...` is accepted)
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True


class RequestContext:
    """ASGI middleware: a RequestRecord for every request, x-request-id (and the record's headers) on every response,
    `finished` told of every prediction request when it ends, and the access-log line."""

    def __init__(self, app: ASGIApp, finished: Callable[[RequestRecord, int, float], None] | None = None) -> None:
        self.app = app
        self.finished = finished  # (record, status, seconds): the metrics and the key's usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        client = scope.get("client")
        record = RequestRecord(
            incoming if REQUEST_ID.match(incoming) else secrets.token_hex(8), str(client[0]) if client else ""
        )
        scope.setdefault("state", {})["record"] = record
        started = time.perf_counter()
        status = 500
        token = _current.set(record)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                extra = [(k.encode(), v.encode()) for k, v in record.headers.items()]
                message["headers"] = [*message["headers"], (b"x-request-id", record.request_id.encode()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
            elapsed = time.perf_counter() - started
            if self.finished is not None and record.predict:
                self.finished(record, status, elapsed)
            fields = record.log_fields(scope.get("method", ""), scope.get("path", ""), status, elapsed)
            access_log.info("request", extra={"fields": fields})
