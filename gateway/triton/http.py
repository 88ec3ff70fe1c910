"""Inference requests to Triton's HTTP endpoint when the tensors are in shared memory (GATEWAY_TRITON_HTTP_URL).

With the tensors in shared memory (shm.py) an inference request is ~400 bytes of JSON and its answer ~200.
gRPC's Python client still costs ≈ 1.2 ms of CPU per call for that (its threads spin while Triton computes); a
keep-alive HTTP/1.1 connection over loopback costs ≈ 0.4 ms (bench/RESULTS.md, "Cost per image"). This is that
connection: a small pool of them, each carrying one request at a time, its answer fed straight from asyncio's
protocol callbacks into httptools (uvicorn's own parser).
Everything else (metadata, readiness, shared-memory registration, and inference without shared memory) stays on
gRPC. A connection that fails, times out or is cancelled mid-exchange is closed, never reused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools
import orjson

MAX_ANSWER = 1 << 20  # Triton's answer with every output in shared memory is a few hundred bytes


class TritonHTTPError(Exception):
    """Triton answered with an error status (its `error` text), or the connection failed (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Connection(asyncio.Protocol):
    """One kept-alive connection: the bytes Triton sends go straight into httptools, which completes `waiter`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.keep_alive = False

    # asyncio's callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, TritonHTTPError) as exc:
            self._fail(exc if isinstance(exc, TritonHTTPError) else TritonHTTPError(0, f"bad answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(TritonHTTPError(0, f"Triton closed the connection{f': {exc}' if exc else ''}"))

    # httptools' callbacks
    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid while the message is being parsed

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_ANSWER:
            raise TritonHTTPError(0, f"Triton's answer is larger than {MAX_ANSWER} bytes")

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), bytes(self.body), self.keep_alive))

    def send(self, message: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Write one request; the future completes with (status, body, keep-alive) when its answer has arrived."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.body = bytearray()
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(message)
        return self.waiter

    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: TritonHTTPError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)


@dataclass
class TritonHTTP:
    """POST /v2/models/<model>/infer over a pool of keep-alive connections to `url` (http://host:port)."""

    url: str
    timeout_s: float
    max_idle: int = 32
    _idle: list[_Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"GATEWAY_TRITON_HTTP_URL={self.url!r}: expected http://host:port")
        self.host, self.port = parts.hostname, parts.port

    async def infer(self, model: str, request: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Triton's JSON answer within `timeout_s` (default: the client's), connecting included; TritonHTTPError for an
        error status or a failed connection, TimeoutError."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        body = orjson.dumps(request)
        head = (
            f"POST /v2/models/{quote(model, safe='')}/infer HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        connection = await self._connect(timeout_s)
        try:
            async with asyncio.timeout_at(deadline):
                status, answer, keep_alive = await connection.send(head + body)
        except BaseException:
            connection.close()
            raise
        if keep_alive and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        try:
            data: dict[str, Any] = orjson.loads(answer)
        except orjson.JSONDecodeError:
            data = {"error": answer[:300].decode("utf-8", "replace")}
        if status != 200:
            raise TritonHTTPError(status, str(data.get("error", f"HTTP {status}")))
        return data

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def _connect(self, timeout_s: float) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise TritonHTTPError(0, f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return connection
