"""Bodies read a chunk at a time and refused (413) as soon as they pass a size limit, whoever sends them: a
request's body, an admin request's JSON, the image at a `url`."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from gateway.errors import BadRequest, PayloadTooLarge


async def capped(
    chunks: AsyncIterable[bytes], limit: int, too_large: str, declared: str | None = None
) -> AsyncIterator[bytes]:
    """`chunks` as they arrive; PayloadTooLarge(`too_large`) at once when the `declared` length (a Content-Length
    header) is over `limit` bytes, else as soon as the chunks pass it, declared or not."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(too_large)
        yield chunk


async def read_capped(chunks: AsyncIterable[bytes], limit: int, too_large: str, declared: str | None = None) -> bytes:
    """The whole body, read with `capped`."""
    return b"".join([chunk async for chunk in capped(chunks, limit, too_large, declared)])


def json_object(raw: bytes, hint: str) -> dict[str, Any]:
    """A JSON body that must be an object (an admin request's, a stream's), or BadRequest ending with `hint`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(f"The body is not valid JSON. {hint}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The body must be a JSON object. {hint}")
    return body
