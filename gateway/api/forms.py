"""The request's inputs: the body (bounded in size and in time), the form, the API key, the model named in a slug."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import anyio
import anyio.lowlevel
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from gateway.budget import Hold
from gateway.errors import BadRequest, RequestTimeout
from gateway.keys.auth import KeyEntry
from gateway.observability import record_of
from gateway.services import services_of
from gateway.streams import capped

MAX_FIELDS = 16
MAX_FIELD_BYTES = 4096
# What parsing a spooled form holds in memory: the parser keeps up to 1 MiB of each file part before it rolls over
# to a file in TMPDIR (Starlette's MultiPartParser.spool_max_size), plus the chunk being parsed.
SPOOLED_FORM_BYTES = 2 * 1024 * 1024
Charge = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Pace:
    """How fast a request body must arrive (GATEWAY_BODY_TIMEOUT_S, _MIN_RATE, _GRACE_S): all of it within
    `timeout_s`, and after the first `grace_s` seconds at least `min_rate` bytes for every further second (0: no
    rate). Counted in seconds spent waiting for the client's bytes, so time the gateway takes between reads (waiting
    for memory) is never held against the client."""

    timeout_s: float
    min_rate: float
    grace_s: float

    def allowed_s(self, received: int) -> float:
        """Seconds of waiting allowed once `received` bytes have arrived."""
        if self.min_rate <= 0:
            return self.timeout_s
        return min(self.timeout_s, self.grace_s + received / self.min_rate)


@dataclass
class Body:
    """One request's body as it arrives, under its pace (408) and a size limit (413). `received` counts the bytes
    read so far, declared or not (the metrics' body size)."""

    request: Request
    pace: Pace
    received: int = 0
    waited_s: float = 0.0

    def chunks(self, limit: int, too_large: str) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; PayloadTooLarge (`too_large`) as soon as it passes `limit` bytes,
        declared or streamed; RequestTimeout when the client falls behind the pace."""
        return capped(self._paced(), limit, too_large, self.request.headers.get("content-length"))

    async def _paced(self) -> AsyncIterator[bytes]:
        stream = self.request.stream()
        while True:
            chunk: bytes | None = None
            started = time.monotonic()
            # uvicorn has no deadline for a body: without this, a client sending a byte a minute holds its request
            with anyio.move_on_after(max(0.0, self.pace.allowed_s(self.received) - self.waited_s)):
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    return
            self.waited_s += time.monotonic() - started
            if chunk is None:
                raise RequestTimeout(self._too_slow())
            self.received += len(chunk)
            yield chunk

    def _too_slow(self) -> str:
        pace = self.pace
        rule = f"all of it within {pace.timeout_s:g} s"
        if pace.min_rate > 0:
            rule += f", and after the first {pace.grace_s:g} s at least {pace.min_rate:g} bytes per second"
        return (
            f"The request body arrived too slowly: {self.received} bytes in {self.waited_s:.0f} s. A body must "
            f"arrive {rule}. Send it over a faster connection, or send a smaller image (or its URL)."
        )


async def buffer(chunks: AsyncIterator[bytes], limit: int, charge: Charge) -> tuple[list[bytes], bool]:
    """The body's chunks in memory, each charged before it is kept: all of them and True when the body ends within
    `limit` bytes; else those read so far (just past `limit`) and False, and the caller goes on reading `chunks`."""
    kept: list[bytes] = []
    total = 0
    async for chunk in chunks:
        await charge(len(chunk))
        kept.append(chunk)
        total += len(chunk)
        if total > limit:
            return kept, False
    return kept, True


async def streamed(kept: list[bytes], rest: AsyncIterator[bytes], hold: Hold) -> AsyncIterator[bytes]:
    """The chunks already in memory (`kept`, freed as they are parsed), then the rest of the body as it arrives, for
    a parser that spools file parts to TMPDIR: from then on at most SPOOLED_FORM_BYTES of it are held in memory,
    so `hold` keeps no more than that, charged as the bytes arrive."""
    kept.reverse()
    while kept:
        yield kept.pop()
        await anyio.lowlevel.checkpoint()  # 20 MiB in memory is parsed a chunk at a time between other requests
    hold.keep(SPOOLED_FORM_BYTES)
    async for chunk in rest:
        if hold.held < SPOOLED_FORM_BYTES:
            await hold.reserve(min(len(chunk), SPOOLED_FORM_BYTES - hold.held))
        yield chunk


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data"


def is_urlencoded(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


async def parse_form(
    request: Request,
    body: list[bytes] | AsyncIterator[bytes],
    max_files: int,
    part: str = "image",
    max_text: int = MAX_FIELD_BYTES,
) -> FormData:
    """The multipart form from the body's chunks in memory (freed as they are parsed) or as they arrive; `part` is
    the file part's name in this route's API (for the messages). Text fields may be `max_text` bytes long while
    parsing (a base64 `source` may be as long as the upload allows); `collect` then holds every other field to
    MAX_FIELD_BYTES. A body of another type is refused unless it is empty (a URL-encoded form goes to
    `parse_urlencoded`)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        if isinstance(body, list):
            body.reverse()
            while body:
                yield body.pop()
                await anyio.lowlevel.checkpoint()  # a large body is parsed a chunk at a time between other requests
        else:
            async for chunk in body:
                yield chunk

    if is_multipart(request):
        parser = MultiPartParser(
            request.headers, stream(), max_files=max_files, max_fields=MAX_FIELDS, max_part_size=max_text
        )
        try:
            return await parser.parse()
        except MultiPartException as exc:
            raise BadRequest(form_message(exc.message, max_files, part)) from None
    if not isinstance(body, list) or any(chunk.strip() for chunk in body):
        raise BadRequest(f"Unsupported request body: send multipart/form-data (a '{part}' file part) or form fields.")
    return FormData()


def parse_urlencoded(body: list[bytes], max_text: int, part: str) -> FormData:
    """The fields of an application/x-www-form-urlencoded body, read as Starlette's FormParser reads them. For a
    worker thread: unquoting a 20 MiB base64 `source` takes about half a second."""
    try:
        items = parse_qsl(b"".join(body).decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise BadRequest(form_message("Too many fields", 0, part)) from None
    if any(len(name) + len(value) > max_text for name, value in items):
        raise BadRequest(form_message("Part exceeded maximum size", 0, part))
    fields: list[tuple[str, str | UploadFile]] = list(items)
    return FormData(fields)


def form_message(raw: str, max_files: int, part: str) -> str:
    """Starlette's form-parser message, said as what to change. Only a body that can't be parsed is "malformed"."""
    if raw.startswith("Too many files"):
        return f"At most {max_files} images may be sent per request; send the others in another request."
    if raw.startswith("Too many fields"):
        return (
            f"Too many form fields: at most {MAX_FIELDS} are accepted. Send the image part(s) and the arguments only."
        )
    if "exceeded maximum size" in raw:
        return (
            f"A form field is longer than {MAX_FIELD_BYTES // 1024} KiB. Send images as '{part}' file parts "
            f'(curl: -F "{part}=@photo.jpg"), and arguments as short text fields.'
        )
    return f"Malformed form data: {raw.rstrip('.')}. Send multipart/form-data with '{part}' file part(s)."


def api_key(request: Request) -> tuple[str | None, str]:
    """The key and the header it came in: `x-api-key`, or `Authorization: Bearer <key>` (the newer Ultralytics API)."""
    key = request.headers.get("x-api-key")
    if key:
        return key, "x-api-key"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), "Authorization: Bearer"
    return None, "x-api-key"


def model_from_slug(slug: str) -> str:
    """`alice/project/yolov8n` or `https://hub.ultralytics.com/models/yolov8n` → `yolov8n` (the last segment)."""
    return slug.strip().rstrip("/").rsplit("/", 1)[-1]


def _once(items: list[tuple[str, str]], where: str) -> dict[str, str]:
    """The arguments as a dict; BadRequest when one is given twice."""
    out: dict[str, str] = {}
    for key, value in items:
        if key in out:
            raise BadRequest(f"Argument '{key[:32]}' was given more than once in the {where}; send it once.")
        out[key] = value
    return out


def collect(request: Request, form: FormData, part: str) -> tuple[list[UploadFile], dict[str, str]]:
    """The image parts in order, and the arguments (a form field wins over the query parameter of the same name);
    `part` is the file part's name in the route's dialect (for the messages)."""
    images: list[UploadFile] = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in ("image", "file"):
                raise BadRequest(f"Unexpected file part '{key[:32]}': send images as '{part}' file parts.")
            images.append(value)
    texts = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    for key, value in texts:
        if key != "source" and len(value) > MAX_FIELD_BYTES:
            raise BadRequest(form_message("Part exceeded maximum size", 0, part))
    fields = {**_once(request.query_params.multi_items(), "query string"), **_once(texts, "form")}
    for name in ("image", "file"):
        if not images and isinstance(form.get(name), str) and form.get(name):
            raise BadRequest(f"'{name}' must be a file part (curl: -F \"{name}=@photo.jpg\"), not a text field.")
    return images, fields


def names_sent(form: FormData, fields: dict[str, str]) -> set[str]:
    """The names of the file parts and of the non-empty arguments: what tells some dialects apart."""
    parts = {key for key, value in form.multi_items() if isinstance(value, UploadFile)}
    return parts | {name for name, value in fields.items() if value.strip()}


async def key_entry(request: Request) -> KeyEntry:
    """The entry of the request's valid key, for routes that name no model (401/403 as a prediction's); logged with
    the request."""
    key, header = api_key(request)
    entry = await services_of(request).store.authenticate(key, None, header)
    record_of(request).key_id = entry.id
    return entry
