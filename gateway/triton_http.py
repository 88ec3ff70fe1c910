"""Inference requests to Triton's HTTP endpoint when the tensors are in shared memory (GATEWAY_TRITON_HTTP_URL).

With the tensors in shared memory (gateway/shm.py) an inference request is ~400 bytes of JSON and its answer ~200.
gRPC's Python client still costs ≈ 1.2 ms of CPU per call for that (its threads spin while Triton computes); a
keep-alive HTTP/1.1 connection over loopback costs ≈ 0.4 ms (bench/RESULTS.md, "Cost per image"). This is that
connection: a small pool of them, each carrying one request at a time, parsed with httptools (uvicorn's own parser).
Everything else (metadata, readiness, shared-memory registration, and inference without shared memory) stays on
gRPC. A connection that fails, times out or is cancelled mid-exchange is closed, never reused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
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


class _Answer:
    """httptools callbacks for one response: status, body, whether it is complete."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid while the message is being parsed

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_ANSWER:
            raise TritonHTTPError(0, f"Triton's answer is larger than {MAX_ANSWER} bytes")

    def on_message_complete(self) -> None:
        self.done = True


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


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

    async def infer(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        """Triton's JSON answer; TritonHTTPError for an error status or a failed connection, TimeoutError."""
        body = orjson.dumps(request)
        head = (
            f"POST /v2/models/{quote(model, safe='')}/infer HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        connection = await self._connect()
        try:
            async with asyncio.timeout(self.timeout_s):
                status, answer, keep_alive = await self._exchange(connection, head + body)
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

    async def _connect(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.writer.is_closing() and not connection.reader.at_eof():
                return connection
            connection.close()
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise TritonHTTPError(0, f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return _Connection(reader, writer)

    @staticmethod
    async def _exchange(connection: _Connection, message: bytes) -> tuple[int, bytes, bool]:
        answer = _Answer()
        parser = answer.parser
        try:
            connection.writer.write(message)
            while not answer.done:
                chunk = await connection.reader.read(65536)
                if not chunk:
                    raise TritonHTTPError(0, "Triton closed the connection")
                parser.feed_data(chunk)
        except (OSError, httptools.HttpParserError) as exc:
            raise TritonHTTPError(0, f"connection to Triton failed: {exc}") from None
        return parser.get_status_code(), bytes(answer.body), answer.keep_alive
