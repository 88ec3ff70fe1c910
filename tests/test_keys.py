"""API keys: CLI, hashed storage, revocation without restart, scopes and per-key rate limits."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gateway.keys.auth import KeyDraft, create_key, read_entries
from gateway.keys.cli import main as keys_main
from tests.conftest import ROOT, Gateway, start_gateway, stop_gateway
from tritonlocal import launcher


def test_make_key_prints_a_new_key_as_its_last_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    out = subprocess.run(
        ["make", "-s", "key", "VENV=" + str(Path(sys.executable).parent.parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"GATEWAY_KEYS_FILE": str(keys), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("yk_") and len(key) >= 40
    stored = keys.read_text()
    assert key not in stored and key.split("_")[1] in stored  # only the hash and the id are stored


def test_keys_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    entry, key = create_key(keys, KeyDraft("ci", ("yolov8n",), 5.0))
    raw = json.loads(keys.read_text())
    assert key not in keys.read_text() and raw["keys"][0]["hash"] == entry.hash
    assert keys.stat().st_mode & 0o077 == 0
    assert read_entries(keys)[0].models == ("yolov8n",) and read_entries(keys)[0].rate == 5.0


def test_list_never_shows_secrets_and_revoke_needs_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.json"
    entry, key = create_key(keys, KeyDraft("listed"))
    assert keys_main(["--file", str(keys), "list"]) == 0
    listing = capsys.readouterr().out
    assert entry.id in listing and "listed" in listing and key.split("_", 2)[2] not in listing
    assert keys_main(["--file", str(keys), "revoke", entry.id]) == 1  # no TTY, no --yes: refused
    assert not read_entries(keys)[0].revoked
    assert keys_main(["--file", str(keys), "revoke", entry.id, "--yes"]) == 0
    assert read_entries(keys)[0].revoked
    assert keys_main(["--file", str(keys), "revoke", "nope", "--yes"]) == 2


def test_revoked_key_is_refused_within_two_seconds(gateway: Gateway, images: dict[str, Path]) -> None:
    entry, key = create_key(gateway.keys_file, KeyDraft("short-lived"))
    deadline = time.monotonic() + 3
    while (
        gateway.predict("yolov8n", headers={"x-api-key": key}, files={"image": images["tiny"].read_bytes()}).status_code
        != 200
    ):
        assert time.monotonic() < deadline, "a new key was not accepted within 2 s"
        time.sleep(0.2)
    assert keys_main(["--file", str(gateway.keys_file), "revoke", entry.id, "--yes"]) == 0
    revoked_at = time.monotonic()
    while True:
        r = gateway.predict("yolov8n", headers={"x-api-key": key}, files={"image": images["tiny"].read_bytes()})
        if r.status_code == 401:
            break
        assert time.monotonic() - revoked_at < 2.0, "revoked key still accepted after 2 s"
        time.sleep(0.1)
    assert gateway.predict("yolov8n", files={"image": images["tiny"].read_bytes()}).status_code == 200


def test_key_scoped_to_one_model_gets_403_elsewhere(gateway: Gateway, images: dict[str, Path]) -> None:
    _, key = create_key(gateway.keys_file, KeyDraft("scoped", ("yolov8n-pose",)))
    time.sleep(1.2)  # the gateway re-reads the file at most once a second
    files = {"image": images["bus"].read_bytes()}
    assert gateway.predict("yolov8n-pose", headers={"x-api-key": key}, files=files).status_code == 200
    r = gateway.predict("yolov8n", headers={"x-api-key": key}, files=files)
    assert r.status_code == 403 and "not allowed" in r.json()["message"]


def test_rate_limit_answers_429_with_retry_after(gateway: Gateway, images: dict[str, Path]) -> None:
    _, key = create_key(gateway.keys_file, KeyDraft("limited", rate=0.5))  # one request per 2 s, bucket of one
    time.sleep(1.2)
    files = {"image": images["tiny"].read_bytes()}
    assert gateway.predict("yolov8n", headers={"x-api-key": key}, files=files).status_code == 200
    r = gateway.predict("yolov8n", headers={"x-api-key": key}, files=files)
    assert r.status_code == 429 and "Rate limit" in r.json()["message"]
    wait = int(r.headers["retry-after"])
    assert wait >= 1
    time.sleep(wait + 0.1)
    assert gateway.predict("yolov8n", headers={"x-api-key": key}, files=files).status_code == 200


def test_new_key_works_on_its_first_request(gateway: Gateway, images: dict[str, Path]) -> None:
    _, key = create_key(gateway.keys_file, KeyDraft("instant"))  # no wait: a miss re-checks the keys file at once
    r = gateway.predict("yolov8n", headers={"x-api-key": key}, files={"image": images["tiny"].read_bytes()})
    assert r.status_code == 200, r.text


def test_key_messages_name_the_header_used_the_revocation_and_the_allowed_models(gateway: Gateway) -> None:
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n", headers={"authorization": "Bearer yk_nope_x"}, timeout=10)
    assert r.status_code == 401 and "'Authorization: Bearer'" in r.json()["message"]
    entry, key = create_key(gateway.keys_file, KeyDraft("soon-revoked", ("yolov8n-pose", "yolov8n-seg")))
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n", headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 403 and "yolov8n-pose, yolov8n-seg" in r.json()["message"]
    assert keys_main(["--file", str(gateway.keys_file), "revoke", entry.id, "--yes"]) == 0
    time.sleep(1.2)
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n-pose", headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_revoke_accepts_a_piped_yes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    entry, _ = create_key(keys, KeyDraft("piped"))
    cmd = [sys.executable, "-m", "gateway.keys", "--file", str(keys), "revoke", entry.id]
    no = subprocess.run(cmd, input="n\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert no.returncode == 1 and not read_entries(keys)[0].revoked
    yes = subprocess.run(cmd, input="y\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert yes.returncode == 0 and read_entries(keys)[0].revoked, yes.stderr


def test_admin_api_on_the_keys_file(gateway: Gateway, images: dict[str, Path]) -> None:
    """The embedded store behind the same admin API: create (secret once), use at once, usage exact, revoke."""
    _, admin = create_key(gateway.keys_file, KeyDraft("admin", admin=True))
    base, headers = f"{gateway.url}/v1/keys", {"x-api-key": admin}
    assert requests.get(base, headers={"x-api-key": gateway.key}, timeout=10).status_code == 403
    r = requests.post(base, headers=headers, json={"name": "via-api", "models": ["yolov8n"], "rate": 100}, timeout=10)
    assert r.status_code == 201, r.text
    new = r.json()["data"]
    assert new["key"].startswith(f"yk_{new['id']}_") and new["models"] == ["yolov8n"] and new["rate"] == 100
    tiny = images["tiny"].read_bytes()
    for count in (1, 2, 0):
        files = [("image", (f"{i}.png", tiny)) for i in range(count)]
        r = requests.post(
            f"{gateway.url}/v1/predict/yolov8n", headers={"x-api-key": new["key"]}, files=files or None, timeout=60
        )
        assert r.status_code == (200 if count else 400)
        assert r.headers["x-ratelimit-limit"] == "100" and "x-ratelimit-remaining" in r.headers
    listing = requests.get(base, headers=headers, timeout=10)
    assert new["id"] in listing.text and new["key"] not in listing.text
    time.sleep(0.3)  # the request is counted after its response is sent
    usage = requests.get(f"{base}/{new['id']}/usage", headers=headers, timeout=10).json()["data"]["usage"]
    assert [(u["model"], u["requests"], u["images"], u["errors"]) for u in usage] == [("yolov8n", 3, 3, {"400": 1})]
    assert requests.delete(f"{base}/{new['id']}", headers=headers, timeout=10).json()["data"]["revoked"] is True
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n", headers={"x-api-key": new["key"]}, timeout=10)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    assert requests.delete(f"{base}/nosuchid", headers=headers, timeout=10).status_code == 404


def test_cli_revocations_and_gateway_creations_at_once_lose_nothing(gateway: Gateway) -> None:
    """The CLI (separate processes) revokes keys while the gateway creates keys through the admin API, all on one
    keys file: every revocation and every new key is in the file afterwards, and the gateway refuses the revoked
    keys. Without the file lock, each writer's read-modify-write undid the others' (revoked keys worked again)."""
    import concurrent.futures

    _, admin = create_key(gateway.keys_file, KeyDraft("race-admin", admin=True))
    victims = [create_key(gateway.keys_file, KeyDraft(f"race-victim-{i}")) for i in range(10)]

    def revoke(key_id: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.keys", "--file", str(gateway.keys_file), "revoke", key_id, "--yes"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)

    def create(i: int) -> requests.Response:
        body = {"name": f"race-new-{i}"}
        return requests.post(f"{gateway.url}/v1/keys", headers={"x-api-key": admin}, json=body, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        revokes = [pool.submit(revoke, entry.id) for entry, _ in victims]
        creates = [pool.submit(create, i) for i in range(30)]
        revoked = [f.result() for f in revokes]
        created = [f.result() for f in creates]
    assert all(out.returncode == 0 for out in revoked), [out.stderr for out in revoked if out.returncode]
    assert all(r.status_code == 201 for r in created), [r.text for r in created if r.status_code != 201]
    stored = {e.id: e for e in read_entries(gateway.keys_file)}
    lost = [entry.id for entry, _ in victims if not stored[entry.id].revoked]
    missing = [r.json()["data"]["id"] for r in created if r.json()["data"]["id"] not in stored]
    assert not lost and not missing, f"revocations undone: {lost}; created keys gone: {missing}"
    deadline = time.monotonic() + 5  # the gateway re-reads the file within a second
    for _, key in victims:
        while (
            requests.post(f"{gateway.url}/v1/predict/yolov8n", headers={"x-api-key": key}, timeout=10).status_code
            != 401
        ):
            assert time.monotonic() < deadline, "a revoked key is still accepted"
            time.sleep(0.1)


def test_admin_usage_days_takes_ascii_digits_only(gateway: Gateway) -> None:
    _, admin = create_key(gateway.keys_file, KeyDraft("days-admin", admin=True))
    entry, _ = create_key(gateway.keys_file, KeyDraft("days-target"))
    url, headers = f"{gateway.url}/v1/keys/{entry.id}/usage", {"x-api-key": admin}
    for days in ("²", "٣", "0", "401", "-1", "1e2", "", " 7"):
        r = requests.get(url, params={"days": days}, headers=headers, timeout=10)
        assert r.status_code == 400 and "'days'" in r.json()["message"] and r.json()["success"] is False, (days, r.text)
    r = requests.get(url, params={"days": "400"}, headers=headers, timeout=10)
    assert r.status_code == 200 and r.json()["data"]["days"] == 400


def test_an_admin_key_creates_keys_only_within_its_own_scope(gateway: Gateway) -> None:
    _, narrow = create_key(
        gateway.keys_file, KeyDraft("narrow-admin", ("yolov8n", "yolov8n-seg"), rate=5.0, admin=True)
    )
    base, headers = f"{gateway.url}/v1/keys", {"x-api-key": narrow}
    wider = [
        ({"name": "all-models", "rate": 5}, "models"),  # null models = every model
        ({"name": "other-model", "models": ["yolov8n", "yolov8n-pose"], "rate": 5}, "yolov8n-pose"),
        ({"name": "unlimited", "models": ["yolov8n"]}, "rate"),  # null rate = unlimited
        ({"name": "faster", "models": ["yolov8n"], "rate": 6}, "rate"),
        ({"name": "admin-wider", "models": ["yolov8n"], "rate": 10, "admin": True}, "rate"),
    ]
    for body, named in wider:
        r = requests.post(base, headers=headers, json=body, timeout=10)
        assert r.status_code == 403 and named in r.json()["message"], (body, r.text)
    names = {e.name for e in read_entries(gateway.keys_file)}
    assert not names & {str(body["name"]) for body, _ in wider}, "a refused key was stored"
    r = requests.post(
        base, headers=headers, json={"name": "within", "models": ["yolov8n-seg"], "rate": 2.5}, timeout=10
    )
    assert r.status_code == 201 and r.json()["data"]["models"] == ["yolov8n-seg"] and r.json()["data"]["rate"] == 2.5
    _, full = create_key(gateway.keys_file, KeyDraft("full-admin", admin=True))  # unscoped: may create anything
    r = requests.post(base, headers={"x-api-key": full}, json={"name": "anything", "admin": True}, timeout=10)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("rate", [1e-300, 5e-324, 0.0005, 1e7, -1, 0])
def test_rates_outside_the_sane_range_are_refused_by_the_api_and_the_cli(
    gateway: Gateway, tmp_path: Path, rate: float, capsys: pytest.CaptureFixture[str]
) -> None:
    _, admin = create_key(gateway.keys_file, KeyDraft("rate-admin", admin=True))
    r = requests.post(
        f"{gateway.url}/v1/keys", headers={"x-api-key": admin}, json={"name": "odd-rate", "rate": rate}, timeout=10
    )
    assert r.status_code == 400 and "'rate'" in r.json()["message"] and "0.001" in r.json()["message"], r.text
    keys = tmp_path / "keys.json"
    with pytest.raises(SystemExit) as exited:
        keys_main(["--file", str(keys), "create", "--name", "odd", f"--rate={rate!r}/s"])
    assert exited.value.code == 2 and "0.001" in capsys.readouterr().err
    assert not read_entries(keys)


def test_a_key_stored_with_a_degenerate_rate_is_limited_not_a_500(
    triton: launcher.TritonServer, tmp_path: Path, images: dict[str, Path]
) -> None:
    """Keys written before rates were checked (1e-320/s overflowed the token interval to infinity: a 500 on every
    request) are limited at the slowest allowed rate instead."""
    from gateway.keys.auth import write_entries

    keys = tmp_path / "keys.json"
    entry, key = create_key(keys, KeyDraft("degenerate"))
    write_entries(keys, [dataclasses.replace(entry, rate=1e-320)])
    gw = start_gateway(triton, tmp_path)  # its own keys file, so no other test's writer races this one
    try:
        files = {"image": images["tiny"].read_bytes()}
        first = gw.predict("yolov8n", headers={"x-api-key": key}, files=files)
        assert first.status_code == 200, first.text
        second = gw.predict("yolov8n", headers={"x-api-key": key}, files=files)
        assert second.status_code == 429 and int(second.headers["retry-after"]) > 900, second.headers
    finally:
        stop_gateway(gw)


def test_new_key_ids_are_64_bit_and_old_32_bit_ids_keep_working(tmp_path: Path) -> None:
    from gateway.keys.auth import KeyEntry, KeysFile, hash_key, write_entries

    keys = tmp_path / "keys.json"
    entry, key = create_key(keys, KeyDraft("new"))
    assert re.fullmatch(r"[0-9a-f]{16}", entry.id) and key.startswith(f"yk_{entry.id}_")
    old_key = "yk_0badf00d_" + "s" * 32  # as `make key` wrote them before: 8 hex digits
    old = KeyEntry("0badf00d", "old", hash_key(old_key), "2024-01-01T00:00:00Z")
    write_entries(keys, [old, *read_entries(keys)])
    store = KeysFile(keys, recheck_s=0)
    assert store.authenticate(old_key, "yolov8n").name == "old" and store.authenticate(key, None).name == "new"


def test_a_taken_key_id_is_never_stored_over_the_existing_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.keys import auth

    keys = tmp_path / "keys.json"
    first, first_key = create_key(keys, KeyDraft("first"))
    before = keys.read_bytes()
    taken = auth.make_entry(KeyDraft("second"))[0]
    with pytest.raises(auth.KeyIdTaken):
        auth.add_entry(keys, dataclasses.replace(taken, id=first.id))
    assert keys.read_bytes() == before
    draws = iter([(first.id, f"yk_{first.id}_collides"), ("c0ffee0000000001", "yk_c0ffee0000000001_fresh")])
    monkeypatch.setattr(auth, "new_key", lambda: next(draws))
    second, second_key = create_key(keys, KeyDraft("second"))  # the repeated id is drawn again, not stored over `first`
    assert second.id == "c0ffee0000000001" and second_key.endswith("_fresh")
    stored = {e.id: e for e in read_entries(keys)}
    assert stored[first.id].name == "first" and stored[first.id].hash == auth.hash_key(first_key)


def test_the_cli_escapes_terminal_sequences_in_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Names come from whoever created the key (the admin API, an edited file): the CLI shows escapes, never sends
    ESC, other control characters or bidi overrides to the administrator's terminal."""
    from gateway.keys.auth import write_entries

    keys = tmp_path / "keys.json"
    entry, _ = create_key(keys, KeyDraft("placeholder", ("yolov8n",)))
    hostile = "\x1b[2J\u202eev\x07"  # clear the screen, right-to-left override, bell
    write_entries(keys, [dataclasses.replace(entry, name=hostile, models=("m\x1b[31m",))])
    assert keys_main(["--file", str(keys), "list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b[2J\\u202eev\\x07" in out and "m\\x1b[31m" in out and entry.id in out
    with pytest.raises(SystemExit):
        keys_main(["--file", str(keys), "create", "--name", "bad\x1b[31m"])
    assert "printable" in capsys.readouterr().err


def test_the_admin_api_refuses_names_with_control_characters(gateway: Gateway) -> None:
    _, admin = create_key(gateway.keys_file, KeyDraft("names-admin", admin=True))
    for name in ("\x1b[2Jwipe", "tab\there", "rtl\u202e"):
        r = requests.post(f"{gateway.url}/v1/keys", headers={"x-api-key": admin}, json={"name": name}, timeout=10)
        assert r.status_code == 400 and "'name'" in r.json()["message"], (name, r.text)
