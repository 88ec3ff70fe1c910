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
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import Metrics

REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
access_log = logging.getLogger("gateway.access")
_context: ContextVar[dict[str, Any] | None] = ContextVar("request_context", default=None)
_client: ContextVar[str] = ContextVar("client_address", default="")  # not logged: only budgets per client use it
# Loggers that write a line per request or per outgoing call with the full URL; raised to WARNING (errors still show).
QUIET_LOGGERS = ("httpx", "httpcore", "hpack")


def note(**fields: Any) -> None:
    """Add fields to the current request's access-log record (nothing outside a request)."""
    context = _context.get()
    if context is not None:
        context.update(fields)


def client_address() -> str:
    """The current request's client address as uvicorn reports it ("" outside a request or when unknown)."""
    return _client.get()


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
    """ASGI middleware: x-request-id on every response, and the access-log record."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None = None,
        usage: Callable[[dict[str, Any], int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.usage = usage  # counts a prediction request against its key (the state store)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID.match(incoming) else secrets.token_hex(8)
        context: dict[str, Any] = {"request_id": request_id}
        scope.setdefault("state", {})["context"] = context
        started = time.perf_counter()
        status = 500
        token = _context.set(context)
        client = scope.get("client")
        client_token = _client.set(str(client[0]) if client else "")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                extra = [(k.encode(), v.encode()) for k, v in context.get("headers", {}).items()]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _context.reset(token)
            _client.reset(client_token)
            elapsed = time.perf_counter() - started
            if self.metrics is not None and context.get("predict"):
                self.metrics.observe(context, status, elapsed)
            if self.usage is not None and context.get("predict") and context.get("key_id"):
                self.usage(context, status, elapsed)
            context.pop("timings", None)
            context.pop("headers", None)
            context.pop("bytes", None)
            fields = {
                **context,
                "method": scope.get("method"),
                "path": scope.get("path", "")[:200],
                "status": status,
                "latency_ms": round(elapsed * 1000, 2),
            }
            access_log.info("request", extra={"fields": fields})
