"""The request's inputs: the body (bounded), the form, the API key, the model named in a slug."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncGenerator, AsyncIterator

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.schemas import Style

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields around the image
MAX_FIELDS = 16
MAX_FIELD_BYTES = 4096
# What parsing a spooled form holds in memory: the parser keeps up to 1 MiB of each file part before it rolls over
# to a file in TMPDIR (Starlette's MultiPartParser.spool_max_size), plus the chunk being parsed.
SPOOLED_FORM_BYTES = 2 * 1024 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    too_large = f"The request is larger than the {limit // 2**20} MiB upload limit. Send a smaller image."
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data"


async def stream_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refusing (413) as soon as it passes `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    too_large = f"The request is larger than the {limit // 2**20} MiB video upload limit. Send a smaller video."
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(too_large)
        yield chunk


async def parse_form(
    request: Request,
    body: bytes | AsyncIterator[bytes],
    max_files: int,
    part: str = "image",
    max_text: int = MAX_FIELD_BYTES,
) -> FormData:
    """The form from the whole body, or (multipart only) from the body as it arrives; `part` is the file part's name
    in this route's API (for the messages). Text fields may be `max_text` bytes long while parsing (a base64 `source`
    may be as long as the upload allows); `collect` then holds every other field to MAX_FIELD_BYTES."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

    async def stream() -> AsyncGenerator[bytes, None]:
        if isinstance(body, bytes):
            yield body
        else:
            async for chunk in body:
                yield chunk

    try:
        if content_type == "multipart/form-data":
            parser = MultiPartParser(
                request.headers, stream(), max_files=max_files, max_fields=MAX_FIELDS, max_part_size=max_text
            )
            return await parser.parse()
        if content_type == "application/x-www-form-urlencoded":
            form_parser = FormParser(request.headers, stream(), max_fields=MAX_FIELDS, max_part_size=max_text)
            return await form_parser.parse()
    except MultiPartException as exc:
        raise BadRequest(form_message(exc.message, max_files, part)) from None
    if not isinstance(body, bytes) or body.strip():
        raise BadRequest(f"Unsupported request body: send multipart/form-data (a '{part}' file part) or form fields.")
    return FormData()


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


def collect(request: Request, form: FormData, style: Style) -> tuple[list[UploadFile], dict[str, str]]:
    """The image parts in order, and the arguments (a form field wins over the query parameter of the same name)."""
    part = "image" if style == "v1" else "file"
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


SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: str) -> bool:
    """`source` names a resource (`scheme://...`) rather than carrying the image in base64."""
    return bool(SCHEME.match(source))


def decode_source(source: str, max_bytes: int) -> bytes:
    """The image bytes of a base64 `source` (plain, URL-safe, or a `data:image/...;base64,` URI); 400 when it is not
    base64, 413 past `max_bytes` (checked from its length before decoding)."""
    text = source.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest("Invalid 'source' value: a data URI must be base64 (data:image/jpeg;base64,...).")
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    if len(text) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLarge(
            f"The 'source' image is larger than the {max_bytes // 2**20} MiB upload limit. Send a smaller image."
        )
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "Invalid 'source' value: send an http(s) image URL or the image's bytes in base64 (optionally as a "
            "data:image/...;base64, URI)."
        ) from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The 'source' image is larger than the {max_bytes // 2**20} MiB upload limit. Send a smaller image."
        )
    return data
