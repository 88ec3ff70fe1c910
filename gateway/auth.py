"""API keys: a JSON file of hashed keys, re-read when it changes, checked in constant time.

A key reads `yk_<id>_<secret>`: the id is safe to log and finds the entry; only SHA-256(key) is stored. Keys are
192-bit random, so a fast hash is enough (no KDF needed for high-entropy secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import Forbidden, Unauthorized

PREFIX = "yk_"
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    id: str
    name: str
    hash: str
    created: str
    models: tuple[str, ...] | None = None  # None: every model
    rate: float | None = None  # requests per second; None: unlimited
    revoked: bool = False

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("hash")
        out["models"] = list(self.models) if self.models is not None else None
        return out


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key)."""
    key_id = secrets.token_hex(4)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


def read_entries(path: Path) -> list[KeyEntry]:
    if not path.exists():
        return []
    raw = json.loads(path.read_text() or "{}")
    entries = []
    for item in raw.get("keys", []):
        models = item.get("models")
        entries.append(
            KeyEntry(
                id=item["id"],
                name=item.get("name", ""),
                hash=item["hash"],
                created=item.get("created", ""),
                models=tuple(models) if models is not None else None,
                rate=item.get("rate"),
                revoked=bool(item.get("revoked", False)),
            )
        )
    return entries


def write_entries(path: Path, entries: list[KeyEntry]) -> None:
    """Atomically replace the keys file (temp file in the same folder + rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"keys": [{**asdict(e), "models": list(e.models) if e.models is not None else None} for e in entries]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(path: Path, name: str, models: list[str] | None = None, rate: float | None = None) -> tuple[KeyEntry, str]:
    """Add a key to the file; returns (entry, the key itself — shown once, never stored)."""
    key_id, key = new_key()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = KeyEntry(key_id, name, hash_key(key), created, tuple(models) if models else None, rate)
    write_entries(path, [*read_entries(path), entry])
    return entry, key


@dataclass
class KeyStore:
    """The keys file, re-read when it changes: mtime, ctime, size or inode (checked at most every `recheck_s`)."""

    path: Path
    recheck_s: float = 1.0
    _entries: dict[str, KeyEntry] = field(default_factory=dict, init=False)
    _stamp: tuple[int, ...] | None = field(default=None, init=False)
    _checked: float = field(default=0.0, init=False)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck_s and self._stamp is not None:
            return
        self._checked = now
        try:
            st = self.path.stat()
            # inode and ctime too: a same-size rewrite within one clock tick (or with its mtime kept) is still seen
            stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            self._entries, self._stamp = {}, (0,)
            return
        if stamp != self._stamp:
            try:
                self._entries = {e.id: e for e in read_entries(self.path)}
            except (ValueError, KeyError, OSError):
                return  # keep the last good set; a writer is mid-way or the file is broken
            self._stamp = stamp

    def authenticate(self, key: str | None, model_id: str | None) -> KeyEntry:
        """The key's entry, or Unauthorized/Forbidden (`model_id` None: the model is not known yet, no scope check).

        Constant-time in the secret."""
        if not key:
            raise Unauthorized("Missing API key. Send it in the 'x-api-key' header (create one with `make key`).")
        self._refresh()
        key_id = key[len(PREFIX) :].split("_", 1)[0] if key.startswith(PREFIX) else ""
        entry = self._entries.get(key_id)
        valid = hmac.compare_digest(hash_key(key), entry.hash if entry else _DUMMY_HASH)
        if entry is None or not valid or entry.revoked:
            raise Unauthorized("Invalid API key. Check the 'x-api-key' header; keys look like yk_<id>_<secret>.")
        if model_id is not None and entry.models is not None and model_id not in entry.models:
            raise Forbidden(f"This API key is not allowed to use model '{model_id[:64]}'.")
        return entry
