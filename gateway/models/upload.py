"""An uploaded checkpoint's request body, written to disk as it arrives (issue #27): never whole in memory, and
nothing proportional to its size on the event loop.

`Upload` is fed the body a batch at a time (BATCH_BYTES) in a worker thread: python-multipart's parser finds the
parts, the `file` part goes straight into a file under `<models dir>/uploads/.incoming/` while SHA-256 is computed
over it, and the few text fields are kept (each up to MAX_FIELD_BYTES). Once the body is in, `keep` renames the file
to its place (`uploads/<id>/<sha256>.pt`, gateway/models/record.py `upload_path`): on the same filesystem, so the
worker never sees half a file. A body that fails (too large, too slow, malformed, the client gone) leaves nothing:
`discard` removes the partial file, and `sweep` removes those of a gateway that was killed mid-upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import BadRequest, PayloadTooLarge

BATCH_BYTES = 1024 * 1024  # handed to the worker thread at a time: at most this much of a body is in memory
INCOMING = Path("uploads") / ".incoming"  # under the models dir: the same filesystem as the uploads
MAX_FIELDS = 8  # `id`, `imgsz`, `half`, and a few a client may add (ignored)
MAX_FIELD_BYTES = 4096  # each text field (gateway/api/forms.py holds prediction forms to the same)
PREFIX = "upload-"


class Upload:
    """One multipart body being written (see the module docstring). Every method runs in a worker thread."""

    def __init__(self, content_type: str, models_dir: Path, max_bytes: int) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("Malformed form data: the multipart boundary is missing. Send multipart/form-data.")
        self.folder = models_dir / INCOMING
        self.max_bytes = max_bytes
        self.path = self.folder / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}.part"
        self.fields: dict[str, str] = {}
        self.filename = ""
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self._files = 0
        self._part: str | None = None  # the current text field's name; None in the file part
        self._text = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, data: bytes) -> None:
        """Parse the next bytes of the body (a worker thread: writes and hashes the file part's bytes)."""
        try:
            self._parser.write(data)
        except FormParserError:
            raise BadRequest(
                "Malformed form data: the multipart body could not be parsed. Send multipart/form-data with the "
                "checkpoint as the 'file' part."
            ) from None

    def finish(self, data: bytes) -> None:
        """The body's last bytes: parse them, close the file, and check a checkpoint came."""
        self.write(data)
        try:
            self._parser.finalize()
        except FormParserError:
            raise BadRequest("Malformed form data: the multipart body ended early.") from None
        if self._file is not None:
            self._file.close()
        if not self._files:
            raise BadRequest(
                "No checkpoint: send the .pt file as the 'file' part (curl: -F \"file=@best.pt\") with the 'id' field."
            )
        if self.size == 0:
            raise BadRequest("The 'file' part is empty: send the .pt checkpoint itself.")

    def keep(self, target: Path) -> bool:
        """Move the written file to `target` (atomically); whether `target` is new (not another upload's same file)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        existed = target.exists()
        os.replace(self.path, target)
        return not existed

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # --- the parser's callbacks ------------------------------------------------------------------------------------

    def _begin(self) -> None:
        self._part, self._disposition = None, b""
        self._text.clear()

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("latin-1")
        if b"filename" not in options:
            if len(self.fields) >= MAX_FIELDS:
                raise BadRequest("Too many form fields: send 'file', 'id' and optionally 'imgsz' and 'half'.")
            self._part = name[:64]
            return
        if name != "file":
            raise BadRequest(f"Unexpected file part '{name[:32]}': send the checkpoint as the 'file' part.")
        self._files += 1
        if self._files > 1:
            raise BadRequest("Send one checkpoint per request: one 'file' part.")
        self.filename = options[b"filename"].decode("utf-8", "replace")[:200]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by finish or discard

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is not None:
            if len(self._text) + end - start > MAX_FIELD_BYTES:
                raise BadRequest(f"The form field '{self._part[:32]}' is longer than {MAX_FIELD_BYTES} bytes.")
            self._text.extend(data[start:end])
            return
        assert self._file is not None
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self._file.write(chunk)
        self._hash.update(chunk)

    def _end(self) -> None:
        if self._part is None:
            return
        if self._part in self.fields:
            raise BadRequest(f"The field '{self._part[:32]}' was given more than once; send it once.")
        self.fields[self._part] = self._text.decode("utf-8", "replace")


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The checkpoint is larger than the {limit // 2**20} MiB limit for an uploaded model "
        "(GATEWAY_MAX_MODEL_BYTES). A trained YOLOv8/YOLO11 .pt is 5-140 MiB: send the checkpoint itself, or raise "
        "the limit."
    )


def sweep(models_dir: Path, older_than_s: float) -> int:
    """Remove partial uploads older than `older_than_s` (a gateway killed mid-upload; no body takes longer than the
    body deadline, so a live upload is never older): their count."""
    removed = 0
    cutoff = time.time() - older_than_s
    with contextlib.suppress(FileNotFoundError):
        for path in (models_dir / INCOMING).glob(f"{PREFIX}*.part"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
    return removed
