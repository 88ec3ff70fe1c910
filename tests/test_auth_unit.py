"""KeysFile without a gateway: the secret, revocation and model scope each decide on their own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.keys.auth import KeyDraft, KeysFile, create_key, hash_key, make_entry, read_entries, write_entries
from gateway.errors import Forbidden, Unauthorized


@pytest.fixture
def keys(tmp_path: Path) -> tuple[KeysFile, Path, dict[str, str]]:
    """A store (re-read on every call) with an open key, a key scoped to yolov8n and a revoked key."""
    path = tmp_path / "keys.json"
    _, open_key = create_key(path, KeyDraft("open"))
    _, scoped = create_key(path, KeyDraft("scoped", models=("yolov8n",)))
    _, revoked = create_key(path, KeyDraft("revoked"))
    entries = read_entries(path)
    write_entries(path, [dataclasses.replace(e, revoked=e.name == "revoked") for e in entries])
    return KeysFile(path, recheck_s=0), path, {"open": open_key, "scoped": scoped, "revoked": revoked}


def _other_secret(key: str) -> str:
    """The same `yk_<id>_` with a different secret of the same length (the secret itself may hold '_')."""
    prefix, secret = key[: key.index("_", 3) + 1], key[key.index("_", 3) + 1 :]
    return prefix + ("B" if secret[0] == "A" else "A") + secret[1:]


def test_valid_key_returns_its_entry(keys: tuple[KeysFile, Path, dict[str, str]]) -> None:
    store, _, k = keys
    entry = store.authenticate(k["open"], "yolov8n")
    assert entry.name == "open" and k["open"].startswith(f"yk_{entry.id}_")


def test_wrong_secret_for_a_known_id_is_401(keys: tuple[KeysFile, Path, dict[str, str]]) -> None:
    store, _, k = keys
    for name in ("open", "scoped"):
        with pytest.raises(Unauthorized, match="Invalid API key"):
            store.authenticate(_other_secret(k[name]), None)
        with pytest.raises(Unauthorized, match="Invalid API key"):
            store.authenticate(k[name][:-1], "yolov8n")  # one character short


@pytest.mark.parametrize("key", ["yk_00000000_secret", "not-a-key", "yk_", "yk__", "Bearer yk_x_y"])
def test_unknown_or_malformed_key_is_401(keys: tuple[KeysFile, Path, dict[str, str]], key: str) -> None:
    store, _, _ = keys
    with pytest.raises(Unauthorized, match="Invalid API key"):
        store.authenticate(key, None)


@pytest.mark.parametrize("key", [None, ""])
def test_missing_key_is_401_saying_where_to_send_it(
    keys: tuple[KeysFile, Path, dict[str, str]], key: str | None
) -> None:
    store, _, _ = keys
    with pytest.raises(Unauthorized, match="x-api-key"):
        store.authenticate(key, "yolov8n")


def test_revoked_key_is_401_even_with_its_right_secret(keys: tuple[KeysFile, Path, dict[str, str]]) -> None:
    store, _, k = keys
    with pytest.raises(Unauthorized):
        store.authenticate(k["revoked"], None)


def test_key_scoped_to_a_model_is_403_for_another_and_fine_for_its_own(
    keys: tuple[KeysFile, Path, dict[str, str]],
) -> None:
    store, _, k = keys
    assert store.authenticate(k["scoped"], "yolov8n").name == "scoped"
    assert store.authenticate(k["scoped"], None).name == "scoped"  # model not known yet: checked again later
    with pytest.raises(Forbidden, match="yolov8n-seg"):
        store.authenticate(k["scoped"], "yolov8n-seg")
    assert store.authenticate(k["open"], "yolov8n-seg").name == "open"


def test_revoking_in_the_file_takes_effect_and_a_broken_file_keeps_the_last_good_keys(
    keys: tuple[KeysFile, Path, dict[str, str]],
) -> None:
    store, path, k = keys
    assert store.authenticate(k["open"], None)
    write_entries(path, [dataclasses.replace(e, revoked=e.name == "open") for e in read_entries(path)])
    with pytest.raises(Unauthorized):
        store.authenticate(k["open"], None)
    assert store.authenticate(k["revoked"], None).name == "revoked"  # un-revoked by the rewrite
    path.write_text('{"keys": [')  # a writer mid-way: the last good set stays
    assert store.authenticate(k["revoked"], None).name == "revoked"
    with pytest.raises(Unauthorized):
        store.authenticate(k["open"], None)


def test_a_rewrite_of_the_same_size_and_mtime_is_still_seen(keys: tuple[KeysFile, Path, dict[str, str]]) -> None:
    """Revoking one key and restoring another leaves the size alone; a coarse clock (or `cp -p`, `rsync -t`) can leave
    the mtime alone too. The file was still replaced (new inode, new ctime): the store must notice."""
    import os

    store, path, k = keys
    assert store.authenticate(k["open"], None)
    before = path.stat()
    write_entries(path, [dataclasses.replace(e, revoked=e.name == "open") for e in read_entries(path)])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(Unauthorized):
        store.authenticate(k["open"], None)


def test_a_new_key_carries_every_field_of_its_draft(tmp_path: Path) -> None:
    """`KeyDraft` is the one place a new key's fields are listed: each one, set away from its default, reaches the
    entry `make_entry` builds and the keys file `create_key` writes (a field added to the draft and dropped on the way
    fails here)."""
    draft = KeyDraft("every-field", ("yolov8n", "yolov8n-seg"), 2.5, True, "hub-xywhn")
    names = [f.name for f in dataclasses.fields(KeyDraft)]
    defaults = KeyDraft(draft.name)
    assert all(getattr(draft, n) != getattr(defaults, n) for n in names if n != "name")
    entry, key = make_entry(draft)
    assert key.startswith(f"yk_{entry.id}_") and entry.hash == hash_key(key)
    assert {n: getattr(entry, n) for n in names} == dataclasses.asdict(draft)
    path = tmp_path / "keys.json"
    stored, _ = create_key(path, draft)
    assert read_entries(path) == [stored]
    assert {n: getattr(stored, n) for n in names} == dataclasses.asdict(draft)
