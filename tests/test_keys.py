"""API keys: CLI, hashed storage, revocation without restart, scopes and per-key rate limits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gateway.auth import create_key, read_entries
from gateway.keys import main as keys_main
from tests.conftest import ROOT, Gateway


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
    entry, key = create_key(keys, "ci", ["yolov8n"], 5.0)
    raw = json.loads(keys.read_text())
    assert key not in keys.read_text() and raw["keys"][0]["hash"] == entry.hash
    assert keys.stat().st_mode & 0o077 == 0
    assert read_entries(keys)[0].models == ("yolov8n",) and read_entries(keys)[0].rate == 5.0


def test_list_never_shows_secrets_and_revoke_needs_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.json"
    entry, key = create_key(keys, "listed")
    assert keys_main(["--file", str(keys), "list"]) == 0
    listing = capsys.readouterr().out
    assert entry.id in listing and "listed" in listing and key.split("_", 2)[2] not in listing
    assert keys_main(["--file", str(keys), "revoke", entry.id]) == 1  # no TTY, no --yes: refused
    assert not read_entries(keys)[0].revoked
    assert keys_main(["--file", str(keys), "revoke", entry.id, "--yes"]) == 0
    assert read_entries(keys)[0].revoked
    assert keys_main(["--file", str(keys), "revoke", "nope", "--yes"]) == 2


def test_revoked_key_is_refused_within_two_seconds(gateway: Gateway, images: dict[str, Path]) -> None:
    entry, key = create_key(gateway.keys_file, "short-lived")
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
    _, key = create_key(gateway.keys_file, "scoped", ["yolov8n-pose"])
    time.sleep(1.2)  # the gateway re-reads the file at most once a second
    files = {"image": images["bus"].read_bytes()}
    assert gateway.predict("yolov8n-pose", headers={"x-api-key": key}, files=files).status_code == 200
    r = gateway.predict("yolov8n", headers={"x-api-key": key}, files=files)
    assert r.status_code == 403 and "not allowed" in r.json()["message"]


def test_rate_limit_answers_429_with_retry_after(gateway: Gateway, images: dict[str, Path]) -> None:
    _, key = create_key(gateway.keys_file, "limited", rate=0.5)  # one request per 2 s, bucket of one
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
    _, key = create_key(gateway.keys_file, "instant")  # no wait: a miss re-checks the keys file at once
    r = gateway.predict("yolov8n", headers={"x-api-key": key}, files={"image": images["tiny"].read_bytes()})
    assert r.status_code == 200, r.text


def test_key_messages_name_the_header_used_the_revocation_and_the_allowed_models(gateway: Gateway) -> None:
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n", headers={"authorization": "Bearer yk_nope_x"}, timeout=10)
    assert r.status_code == 401 and "'Authorization: Bearer'" in r.json()["message"]
    entry, key = create_key(gateway.keys_file, "soon-revoked", ["yolov8n-pose", "yolov8n-seg"])
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n", headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 403 and "yolov8n-pose, yolov8n-seg" in r.json()["message"]
    assert keys_main(["--file", str(gateway.keys_file), "revoke", entry.id, "--yes"]) == 0
    time.sleep(1.2)
    r = requests.post(f"{gateway.url}/v1/predict/yolov8n-pose", headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_revoke_accepts_a_piped_yes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    entry, _ = create_key(keys, "piped")
    cmd = [sys.executable, "-m", "gateway.keys", "--file", str(keys), "revoke", entry.id]
    no = subprocess.run(cmd, input="n\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert no.returncode == 1 and not read_entries(keys)[0].revoked
    yes = subprocess.run(cmd, input="y\n", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert yes.returncode == 0 and read_entries(keys)[0].revoked, yes.stderr


def test_admin_api_on_the_keys_file(gateway: Gateway, images: dict[str, Path]) -> None:
    """The embedded store behind the same admin API: create (secret once), use at once, usage exact, revoke."""
    _, admin = create_key(gateway.keys_file, "admin", admin=True)
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
