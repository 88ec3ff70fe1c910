"""The registry in one JSON file (one gateway, `make serve`; selected when GATEWAY_REDIS_URL is empty).

Layout of GATEWAY_MODELS_FILE (default data/models.json), mode 0600:

    {"models": {"<id>": <ModelRecord.to_json()>, ...}}

Every change is one read-modify-write under an exclusive `flock` of a lock file beside it (`.models.json.lock`), and
the file is replaced atomically (a temporary file in the same folder, then rename), so any number of gateway and
worker processes sharing it never lose each other's updates and a reader never sees half a file. Readers keep the
parsed file and read it again only when its stat (inode, size, mtime) changes. The blocking parts run in a thread:
the event loop never waits on the lock or the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.models.record import ModelRecord
from gateway.models.registry import Change, Registry

Stat = tuple[int, int, int]


@dataclass
class FileRegistry(Registry):
    path: Path
    _cache: tuple[Stat, dict[str, ModelRecord]] | None = field(default=None, init=False, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    async def get(self, model_id: str) -> ModelRecord | None:
        return (await asyncio.to_thread(self._read)).get(model_id)

    async def list(self) -> list[ModelRecord]:
        records = await asyncio.to_thread(self._read)
        return [records[k] for k in sorted(records)]

    async def _update(self, model_id: str, change: Change) -> ModelRecord | None:
        return await asyncio.to_thread(self._update_sync, model_id, change)

    def _update_sync(self, model_id: str, change: Change) -> ModelRecord | None:
        with self._locked():
            records = self._read(fresh=True)  # never the cache under the lock: a stat can repeat (inode reuse)
            before = records.get(model_id)
            after = change(before)
            if after is before:
                return before
            changed = dict(records)
            if after is None:
                changed.pop(model_id, None)
            else:
                changed[model_id] = after
            self._write(changed)
            return after

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _stat(self) -> Stat | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self, fresh: bool = False) -> dict[str, ModelRecord]:
        """Every record, parsed again only when the file changed (by its stat) or when `fresh`."""
        stat = self._stat()
        if stat is None:
            return {}
        with self._cache_lock:
            if not fresh and self._cache is not None and self._cache[0] == stat:
                return self._cache[1]
        raw = json.loads(self.path.read_text() or "{}")
        records = {k: ModelRecord.from_json(v) for k, v in raw.get("models", {}).items()}
        with self._cache_lock:
            self._cache = (stat, records)
        return records

    def _write(self, records: dict[str, ModelRecord]) -> None:
        text = json.dumps({"models": {k: records[k].to_json() for k in sorted(records)}}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        stat = self._stat()
        if stat is not None:
            with self._cache_lock:
                self._cache = (stat, records)
