"""API keys: a JSON file of hashed keys, re-read when it changes, checked in constant time.

A key reads `yk_<id>_<secret>`: the id is safe to log and finds the entry; only SHA-256(key) is stored. Secrets are
192-bit random, so a fast hash is enough (no KDF needed for high-entropy secrets). Ids are 64-bit random (16 hex
digits; keys made before were 32-bit, 8 digits, and keep working), and a new id that is already taken is never
stored over the existing key (`KeyIdTaken`; the creators draw another). A key whose dialect is the Platform's reads
`ul_` and 40 hex digits, the format Ultralytics' own tools accept (their settings drop any other): the first 16 are
its id, the other 24 a 96-bit secret.

Every change to the keys file is one read-modify-write under an exclusive `flock` of a lock file beside it
(`update_entries`), so the keys CLI and any number of gateway processes sharing the file never undo each other's
changes (a revocation lost that way would let a revoked key work again).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import Forbidden, Unauthorized

PREFIX = "yk_"
PLATFORM_KEY = re.compile(r"ul_([0-9a-f]{16})[0-9a-f]{24}")  # the Platform's format: ul_ and 40 hex digits
DRAWS = 3  # new ids drawn for one key before giving up (`drafts`)
ID_BYTES = 8  # 64-bit ids: among a million keys, two share an id with odds of 1 in 37 million (refused, not stored)
KEY_ID = re.compile(r"[0-9A-Za-z]{1,32}")  # ids as they appear in keys (ASCII only: `str.isalnum` takes any script)
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


class KeyIdTaken(Exception):
    """A new key's id is already in the store (drawn twice by chance): the new key was not stored."""


@dataclass(frozen=True)
class KeyEntry:
    id: str
    name: str
    hash: str
    created: str
    models: tuple[str, ...] | None = None  # None: every model
    rate: float | None = None  # images per second; None: unlimited
    revoked: bool = False
    admin: bool = False  # may manage keys (/v1/keys)
    last_used: str | None = None  # kept by the state store (usage), not in the keys file
    dialect: str | None = None  # the dialect its requests are answered in where the route can't tell (None: route's)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("hash")
        out["models"] = list(self.models) if self.models is not None else None
        return out


@dataclass(frozen=True)
class KeyDraft:
    """What a new key is to be, as its creator (the admin API, the keys CLI, a test) asks for it; `make_entry` adds
    the id, the hash and the date. A new field of keys is added here and in `make_entry`, nowhere else."""

    name: str
    models: tuple[str, ...] | None = None  # None or empty: every model
    rate: float | None = None  # images per second; None: unlimited
    admin: bool = False  # may manage keys (/v1/keys)
    dialect: str | None = None  # its requests' dialect where the route can't tell; "platform" also shapes the key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key)."""
    key_id = secrets.token_hex(ID_BYTES)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


def new_platform_key() -> tuple[str, str]:
    """(key id, full key) in the Platform's format: `ul_` and 40 hex digits, the id the first 16."""
    key_id = secrets.token_hex(ID_BYTES)
    return key_id, f"ul_{key_id}{secrets.token_hex(12)}"


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
                admin=bool(item.get("admin", False)),
                dialect=item.get("dialect") or None,
            )
        )
    return entries


def write_entries(path: Path, entries: list[KeyEntry]) -> None:
    """Atomically replace the keys file (temp file in the same folder + rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(e), "models": list(e.models) if e.models is not None else None} for e in entries]
    # `last_used` lives in the state store; `dialect` is written only when set (older files stay as they were)
    body = {"keys": [{k: v for k, v in row.items() if k != "last_used" and (k != "dialect" or v)} for row in rows]}
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


def make_entry(draft: KeyDraft) -> tuple[KeyEntry, str]:
    """A new key's entry and the key itself (shown once, never stored)."""
    key_id, key = new_platform_key() if draft.dialect == "platform" else new_key()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    scope = tuple(draft.models) if draft.models else None
    entry = KeyEntry(
        key_id, draft.name, hash_key(key), created, scope, draft.rate, admin=draft.admin, dialect=draft.dialect
    )
    return entry, key


def drafts(draft: KeyDraft) -> Iterator[tuple[KeyEntry, str]]:
    """New keys for a creator to store, one after another while it finds their ids taken (a draw that repeated an
    existing id: never stored over it); after DRAWS, the creator raises `ids_taken()`."""
    for _ in range(DRAWS):
        yield make_entry(draft)


def ids_taken() -> KeyIdTaken:
    return KeyIdTaken(f"{DRAWS} new key ids in a row were already taken: is the random source broken?")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock for changing the keys file at `path` (blocks while another process holds it).

    The lock is a separate file (`.<name>.lock`, mode 0600, kept): the keys file itself is replaced on every write,
    so a lock on it would guard an inode that the next writer no longer opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def update_entries(path: Path, change: Callable[[list[KeyEntry]], list[KeyEntry]]) -> list[KeyEntry]:
    """Read the keys file, apply `change` and write the result (when it differs), all under the file's lock; the
    entries now in the file."""
    with locked(path):
        before = read_entries(path)
        entries = change(before)
        if entries != before:
            write_entries(path, entries)
    return entries


def add_entry(path: Path, entry: KeyEntry) -> None:
    """Append `entry` to the keys file; KeyIdTaken (and the file untouched) when its id is already there."""

    def added(entries: list[KeyEntry]) -> list[KeyEntry]:
        if any(e.id == entry.id for e in entries):
            raise KeyIdTaken(entry.id)
        return [*entries, entry]

    update_entries(path, added)


def create_key(path: Path, draft: KeyDraft) -> tuple[KeyEntry, str]:
    """Add a key to the file; returns (entry, the key itself — shown once, never stored)."""
    for entry, key in drafts(draft):
        with contextlib.suppress(KeyIdTaken):
            add_entry(path, entry)
            return entry, key
    raise ids_taken()


def key_id_of(key: str) -> str:
    """The id part of `yk_<id>_<secret>` or `ul_<id><secret>` ("" when the key has neither shape)."""
    if match := PLATFORM_KEY.fullmatch(key):
        return match.group(1)
    if not key.startswith(PREFIX):
        return ""
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    return key_id if sep and secret and KEY_ID.fullmatch(key_id) else ""


def missing_key() -> Unauthorized:
    return Unauthorized("Missing API key. Send it in the 'x-api-key' header (create one with `make key`).")


def verify(entry: KeyEntry | None, key: str, model_id: str | None, header: str) -> KeyEntry:
    """The entry if `key` matches it and may use `model_id` (None: not known yet), else Unauthorized/Forbidden.

    Constant-time in the secret; `header` names where the client sent the key, for the message."""
    valid = hmac.compare_digest(hash_key(key), entry.hash if entry else _DUMMY_HASH)
    if entry is None or not valid:
        raise Unauthorized(f"Invalid API key. Check the '{header}' header; keys look like yk_<id>_<secret>.")
    if entry.revoked:
        raise Unauthorized("This API key was revoked. Ask the service's administrator for a new key.")
    if model_id is not None and entry.models is not None and model_id not in entry.models:
        allowed = ", ".join(entry.models) or "none"
        raise Forbidden(f"This API key is not allowed to use model '{model_id[:64]}'. It may use: {allowed}.")
    return entry


@dataclass
class KeysFile:
    """The keys file, re-read when it changes: mtime, ctime, size or inode (checked at most every `recheck_s`)."""

    path: Path
    recheck_s: float = 1.0
    _entries: dict[str, KeyEntry] = field(default_factory=dict, init=False)
    _stamp: tuple[int, ...] | None = field(default=None, init=False)
    _checked: float = field(default=0.0, init=False)

    def entry(self, key_id: str) -> KeyEntry | None:
        """The entry with this id. A miss (maybe a key created a moment ago) stats the file at once, and re-reads it
        only if it changed: unknown keys cost one stat() each, never a parse, and a new key works on its first use."""
        self._refresh()
        found = self._entries.get(key_id)
        if found is None and key_id:
            self._refresh(force=True)
            found = self._entries.get(key_id)
        return found

    def reload(self) -> None:
        """Re-check the file now (after this process changed it)."""
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck_s and self._stamp is not None:
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

    def authenticate(self, key: str | None, model_id: str | None, header: str = "x-api-key") -> KeyEntry:
        """The key's entry, or Unauthorized/Forbidden (`model_id` None: the model is not known yet, no scope check)."""
        if not key:
            raise missing_key()
        key_id = key_id_of(key)
        return verify(self.entry(key_id) if key_id else None, key, model_id, header)
