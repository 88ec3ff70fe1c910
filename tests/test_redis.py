"""Redis mode: three real gateway processes sharing keys, rate limits and usage through a real redis-server.

Each guarantee of one process must hold across replicas: a new key works at once everywhere, a revoked key is
refused everywhere within a second, one rate limit per key, usage counted exactly, and Redis failing (SIGKILL)
costs only the documented statuses and heals without a gateway restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.keys.cli import main as keys_main
from tests.conftest import ROOT, Gateway, start_gateway, stop_gateway
from tritonlocal import launcher, redisserver

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@dataclass
class Stack:
    redis: redisserver.RedisServer
    gateways: list[Gateway]
    admin_key: str

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def admin(self, method: str, path: str, i: int = 0, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"x-api-key": key or self.admin_key}
        return requests.request(method, f"{self.urls[i]}{path}", headers=headers, timeout=30, **kwargs)

    def new_key(self, i: int = 0, **fields: Any) -> tuple[str, str]:
        r = self.admin("POST", "/v1/keys", i, json={"name": "test", **fields})
        assert r.status_code == 201, r.text
        return r.json()["data"]["id"], r.json()["data"]["key"]


def cli(redis: redisserver.RedisServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_PASSWORD": redis.password}
    return subprocess.run(
        [sys.executable, "-m", "gateway.keys", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack(
    triton: launcher.TritonServer, redis_server: redisserver.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    created = cli(redis_server, "create", "--name", "first-admin", "--admin")  # the first admin key, from the CLI
    assert created.returncode == 0, created.stderr
    admin_key = created.stdout.strip().splitlines()[-1]
    env = {"redis_url": redis_server.url, "redis_password": redis_server.password}
    gateways = [start_gateway(triton, tmp_path_factory.mktemp(f"redis-gw{i}"), **env) for i in range(3)]
    yield Stack(redis_server, gateways, admin_key)
    for gw in gateways:
        stop_gateway(gw)


def probe(url: str, key: str, timeout: float = 10) -> int:
    """A request that passes the key check but stops before inference (no image): 400 = key accepted, 401 = refused."""
    return requests.post(f"{url}/v1/predict/yolov8n", headers={"x-api-key": key}, timeout=timeout).status_code


def predict(url: str, key: str, image: bytes, model: str = "yolov8n", count: int = 1) -> requests.Response:
    files = [("image", (f"{i}.png", image)) for i in range(count)]
    return requests.post(f"{url}/v1/predict/{model}", headers={"x-api-key": key}, files=files, timeout=60)


def test_new_key_works_at_once_on_every_replica(stack: Stack, images: dict[str, Path]) -> None:
    _, key = stack.new_key(0)
    tiny = images["tiny"].read_bytes()
    for url in stack.urls:  # no wait at all between creation and use
        r = predict(url, key, tiny)
        assert r.status_code == 200, r.text


def test_admin_routes_need_a_key_with_the_admin_scope(stack: Stack) -> None:
    r = requests.get(f"{stack.urls[1]}/v1/keys", timeout=10)
    assert r.status_code == 401 and r.json()["success"] is False and "key" in r.json()["message"]
    _, plain = stack.new_key(0)
    routes = (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/abc"), ("GET", "/v1/keys/abc/usage"))
    for method, path in routes:
        r = stack.admin(method, path, 1, key=plain, json={"name": "x"})
        assert r.status_code == 403 and "admin" in r.json()["message"], (method, path, r.text)
    r = stack.admin("POST", "/v1/keys", 2, json={"name": "x", "rate": -1})
    assert r.status_code == 400 and "'rate'" in r.json()["message"]
    assert stack.admin("DELETE", "/v1/keys/nosuchkey", 2).status_code == 404


def test_secrets_never_in_responses_logs_or_redis(stack: Stack, images: dict[str, Path]) -> None:
    import redis

    key_id, key = stack.new_key(1, models=["yolov8n"], rate=50)
    secret = key.split("_", 2)[2]
    assert predict(stack.urls[2], key, images["tiny"].read_bytes()).status_code == 200
    listing = stack.admin("GET", "/v1/keys", 0)
    assert listing.status_code == 200 and key_id in listing.text and secret not in listing.text
    assert all("hash" not in k and "key" not in k for k in listing.json()["data"])
    assert secret not in stack.admin("GET", f"/v1/keys/{key_id}/usage", 0).text
    time.sleep(0.3)  # the access-log line is written after the response
    for gw in stack.gateways:
        assert secret not in gw.log_path.read_text()
    client = redis.Redis(port=stack.redis.port, password=stack.redis.password, decode_responses=True)
    try:
        dump = []
        for name in client.scan_iter("*"):
            kind = client.type(name)
            if kind == "hash":
                dump.append(str(client.hgetall(name)))
            elif kind == "string":
                dump.append(str(client.get(name)))
            elif kind == "set":
                dump.append(str(client.smembers(name)))
        assert any(key_id in d for d in dump) and not any(secret in d for d in dump)
    finally:
        client.close()


def _refused_everywhere(stack: Stack, key: str, start: float) -> float:
    """Poll all replicas at once until each answers 401; the slowest one's time since `start`."""

    def until_refused(url: str) -> float:
        while True:
            status = probe(url, key)
            now = time.monotonic()
            if status == 401:
                return now - start
            assert status == 400, status
            assert now - start < 10, "revoked key still accepted after 10 s"
            time.sleep(0.01)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        return max(pool.map(until_refused, stack.urls))


def test_revoked_key_is_refused_by_every_replica_within_one_second(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    worst, times = 0.0, []
    for trial in range(20):
        key_id, key = stack.new_key(trial % 3)
        assert all(probe(url, key) == 400 for url in stack.urls)  # cached as valid on every replica: the worst case
        start = time.monotonic()
        if trial % 2 == 0:
            assert stack.admin("DELETE", f"/v1/keys/{key_id}", trial % 3).status_code == 200
        else:
            assert keys_main(["--redis", stack.redis.url_with_password, "revoke", key_id, "--yes"]) == 0
        took = _refused_everywhere(stack, key, start)
        times.append(took)
        worst = max(worst, took)
    r = requests.post(f"{stack.urls[0]}/v1/predict/yolov8n", headers={"x-api-key": key}, timeout=10)
    assert "revoked" in r.json()["message"]
    with capsys.disabled():
        print(
            f"\n[revocation] 20 trials, all 3 replicas refuse within: worst {worst * 1000:.0f} ms, "
            f"median {sorted(times)[10] * 1000:.0f} ms"
        )
    assert worst < 1.0


def test_usage_counts_exactly_what_was_sent_through_three_replicas(stack: Stack, images: dict[str, Path]) -> None:
    key_id, key = stack.new_key(0)
    tiny = images["tiny"].read_bytes()
    jobs = [("yolov8n", 1)] * 12 + [("yolov8n-seg", 2)] * 6 + [("yolov8n", 0)] * 4  # 0 images: a 400
    expected_status = {1: 200, 2: 200, 0: 400}

    def send(i: int) -> int:
        model, count = jobs[i]
        url = stack.urls[i % 3]
        if count == 0:
            return probe(url, key)
        return predict(url, key, tiny, model, count).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(send, range(len(jobs))))
    assert statuses == [expected_status[c] for _, c in jobs]

    def rows() -> dict[str, dict[str, Any]]:
        r = stack.admin("GET", f"/v1/keys/{key_id}/usage", 1)
        assert r.status_code == 200, r.text
        return {row["model"]: row for row in r.json()["data"]["usage"]}

    deadline = time.monotonic() + 10  # every replica writes its counts within half a second
    while sum(r["requests"] for r in rows().values()) < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # and nothing more arrives later (no double counting)
    usage = rows()
    assert set(usage) == {"yolov8n", "yolov8n-seg"}
    det, seg = usage["yolov8n"], usage["yolov8n-seg"]
    assert (det["requests"], det["images"], det["errors"]) == (16, 12, {"400": 4})
    assert (seg["requests"], seg["images"], seg["errors"]) == (6, 12, {})
    assert sum(det["latency_ms"]["buckets"].values()) == 12 and sum(seg["latency_ms"]["buckets"].values()) == 6
    assert det["latency_ms"]["p95"] is not None
    out = cli(stack.redis, "usage", key_id)
    assert out.returncode == 0 and "yolov8n-seg" in out.stdout and " 16 " in out.stdout, out.stdout
    listed = {k["id"]: k for k in stack.admin("GET", "/v1/keys", 2).json()["data"]}
    assert listed[key_id]["last_used"]
    for url in stack.urls:
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert "yolo_images_total" in metrics and key_id not in metrics


@pytest.mark.load
def test_one_rate_limit_across_three_replicas(stack: Stack) -> None:
    """5 images/s (bucket of 5): 300 requests over about 10 s spread over the three ports.

    The requests carry no image: each still takes its token, then stops at 400 ("send an image") instead of
    running inference, so on a small shared machine the gateways' CPU does not bunch up the arrivals the limiter
    sees (tokens that pile up during a stall are capped at the bucket size and lost). Images costing one token each
    is checked by test_each_image_costs_one_token."""
    _, key = stack.new_key(0, rate=5)
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()

    def send(i: int) -> None:
        time.sleep(max(0.0, start + i / 30 - time.monotonic()))  # 30 requests per second, open loop
        r = requests.post(f"{stack.urls[i % 3]}/v1/predict/yolov8n", headers={"x-api-key": key}, timeout=60)
        missing = [h for h in RATE_HEADERS if h not in r.headers]
        with lock:
            statuses[r.status_code] += 1
            if missing:
                problems.append(f"{r.status_code} without {missing}")
            if r.status_code == 429 and int(r.headers.get("retry-after", "0")) < 1:
                problems.append("429 without Retry-After")

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(send, range(300)))
    elapsed = time.monotonic() - start
    ceiling = 5 * elapsed + 5
    accepted = statuses[400]
    print(f"\n[rate limit] {accepted} accepted in {elapsed:.1f} s (ceiling {ceiling:.0f}), {statuses[429]} refused")
    assert set(statuses) <= {400, 429}, statuses
    assert not problems, problems[:5]
    assert 0.8 * ceiling <= accepted <= ceiling, (statuses, elapsed)


def test_each_image_costs_one_token(stack: Stack, images: dict[str, Path]) -> None:
    """A key at 0.1 image/s (one token per 10 s): a request with 3 images is admitted on its one token and puts the
    key 20 s in debt, which the next request's Retry-After shows (one image would give at most 10 s)."""
    _, key = stack.new_key(1, rate=0.1)
    r = predict(stack.urls[1], key, images["tiny"].read_bytes(), count=3)
    assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "1" and r.headers["x-ratelimit-remaining"] == "0"
    r = predict(stack.urls[2], key, images["tiny"].read_bytes())
    assert r.status_code == 429 and r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["retry-after"]) > 10, r.headers


@pytest.mark.load
def test_redis_killed_under_load_answers_only_documented_statuses_and_recovers(
    stack: Stack, images: dict[str, Path]
) -> None:
    """SIGKILL Redis while a key is in use: that key keeps working (200) from each replica's cache, keys no replica
    has seen get 503; never another 5xx, never a hang; within 5 s of Redis returning every replica checks keys in
    Redis again, without a restart."""
    warm_id, warm = stack.new_key(0, rate=1000)
    cold = [stack.new_key(1)[1] for _ in range(12)]  # stored, never used on any replica
    tiny = images["tiny"].read_bytes()
    assert all(predict(url, warm, tiny).status_code == 200 for url in stack.urls)
    time.sleep(1.5)  # Redis writes its append-only file every second
    warm_seen: Counter[int] = Counter()
    stop = threading.Event()
    slow: list[float] = []

    def load(i: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = predict(stack.urls[i % 3], warm, tiny).status_code
            except requests.RequestException:
                status = -1
            if time.monotonic() - t0 > 10:
                slow.append(time.monotonic() - t0)
            warm_seen[status] += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stack.redis.kill()
    try:
        time.sleep(1.0)
        cold_seen = Counter(probe(stack.urls[i % 3], key) for i, key in enumerate(cold[:9]))
        time.sleep(1.0)
    finally:
        stack.redis.restart()
    back = time.monotonic()
    recovered: dict[str, float] = {}
    while len(recovered) < 3 and time.monotonic() - back < 15:
        for i, url in enumerate(stack.urls):
            if url not in recovered and probe(url, cold[9 + i]) == 400:  # a key only Redis knows: checked there again
                recovered[url] = time.monotonic() - back
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    worst = max(recovered.values(), default=-1)
    print(
        f"\n[redis killed] warm key: {dict(warm_seen)}, unseen keys while down: {dict(cold_seen)}; "
        f"every replica back in {worst:.2f} s"
    )
    assert set(warm_seen) == {200}, warm_seen  # seen in the last minute: served from each replica's cache
    assert set(cold_seen) == {503}, cold_seen  # can't be checked: 503 with Retry-After, not 401, not 500
    assert not slow, slow
    assert len(recovered) == 3 and worst < 5.0, recovered
    assert all(predict(url, warm, tiny).status_code == 200 for url in stack.urls)
    # usage counted while Redis was down was kept by each replica and written when it came back: nothing lost
    sent = sum(warm_seen.values()) + 6

    def counted() -> int:
        rows = stack.admin("GET", f"/v1/keys/{warm_id}/usage", 0).json()["data"]["usage"]
        return sum(r["requests"] for r in rows)

    deadline = time.monotonic() + 10
    while counted() < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counted() == sent


def test_make_key_state_redis_creates_an_admin_key_with_a_rate(stack: Stack) -> None:
    env = {"GATEWAY_REDIS_URL": stack.redis.url_with_password, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["make", "-s", "key", "STATE=redis", "ADMIN=1", "RATE=5/s", "VENV=" + str(Path(sys.executable).parent.parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("yk_") and stack.redis.password not in out.stdout + out.stderr
    listed = {k["id"]: k for k in stack.admin("GET", "/v1/keys", 1, key=key).json()["data"]}  # works as admin at once
    entry = listed[key.split("_")[1]]
    assert entry["admin"] is True and entry["rate"] == 5.0


@pytest.mark.load
def test_redis_hung_costs_bounded_time_and_recovers(stack: Stack, images: dict[str, Path]) -> None:
    """SIGSTOP Redis (it accepts connections but never answers: the slow case): every call is bounded, so a seen key
    still gets 200 and an unseen one 503, each within a few seconds, never a hang; SIGCONT and all is back."""
    import signal

    _, warm = stack.new_key(2)
    cold = [stack.new_key(0)[1] for _ in range(6)]
    tiny = images["tiny"].read_bytes()
    assert all(predict(url, warm, tiny).status_code == 200 for url in stack.urls)
    os.kill(stack.redis.process.pid, signal.SIGSTOP)
    results: list[tuple[str, int, float]] = []
    try:
        time.sleep(1.2)  # every cached entry is now older than the 1 s cache: each check goes to (hung) Redis
        for i, url in enumerate(stack.urls):
            for name, call in (
                ("warm", lambda: predict(url, warm, tiny).status_code),
                ("cold", lambda: probe(url, cold[i])),
            ):
                t0 = time.monotonic()
                results.append((name, call(), time.monotonic() - t0))
    finally:
        os.kill(stack.redis.process.pid, signal.SIGCONT)
    print(f"\n[redis hung] {[(n, s, round(t, 2)) for n, s, t in results]}")
    assert [(n, s) for n, s, _ in results] == [("warm", 200), ("cold", 503)] * 3
    assert max(t for _, _, t in results) < 5.0
    back = time.monotonic()
    while not all(probe(url, cold[3 + i]) == 400 for i, url in enumerate(stack.urls)):
        assert time.monotonic() - back < 5.0, "not recovered within 5 s of Redis answering again"
        time.sleep(0.1)


async def _status(url: str, key: str, source: str) -> tuple[int, str]:
    """(status, Retry-After) of a key check (no image) sent from the loopback address `source`."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        writer.write(
            f"POST /v1/predict/yolov8n HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    finally:
        writer.close()
    retry = next((line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.startswith("retry-after:")), "")
    return int(head.split(" ", 2)[1]), retry


async def _flood(url: str, source: str, until: float, seen: Counter[int]) -> None:
    """Random, well-formed key ids over one kept-alive connection from `source`, as fast as the gateway answers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        while time.monotonic() < until:
            key = f"yk_{secrets.token_hex(8)}_{secrets.token_urlsafe(24)}"
            head_lines = f"POST /v1/predict/yolov8n HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: 0"
            writer.write(f"{head_lines}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length"))
            await reader.readexactly(length)
            seen[int(head.split(b" ", 2)[1])] += 1
    finally:
        writer.close()


@pytest.mark.load
def test_a_flood_of_random_key_ids_never_turns_a_valid_key_into_401(stack: Stack) -> None:
    """Random key ids flood replica 1 from 127.0.0.2 while keys it has never seen (created on replica 0) are checked
    from the same address: each is accepted (its id is known to every replica), never 401. The flood's own look-ups
    are bounded (most of it is answered 503 without asking Redis), and other addresses keep their own budgets: an
    unknown id from 127.0.1.x is still looked up and gets the true answer, 401."""
    fresh = [stack.new_key(0)[1] for _ in range(20)]
    url = stack.urls[1]

    async def scenario() -> tuple[Counter[int], list[tuple[int, str]], list[tuple[int, str]], float]:
        flood: Counter[int] = Counter()
        start = time.monotonic()
        until = start + 4.0
        floods = [asyncio.create_task(_flood(url, "127.0.0.2", until, flood)) for _ in range(8)]
        while sum(flood.values()) < 200:  # the flood is well under way before the first check
            assert time.monotonic() < until, f"the flood did not start: {flood}"
            await asyncio.sleep(0.05)
        valid, other = [], []
        for i, key in enumerate(fresh):
            valid.append(await _status(url, key, "127.0.0.2"))
            made_up = f"yk_{secrets.token_hex(8)}_{secrets.token_urlsafe(24)}"
            other.append(await _status(url, made_up, f"127.0.1.{i + 1}"))
        await asyncio.gather(*floods)
        return flood, valid, other, time.monotonic() - start

    flood, valid, other, elapsed = asyncio.run(scenario())
    print(f"\n[key flood] {sum(flood.values()) / elapsed:.0f} random ids/s: {dict(flood)}; fresh keys {Counter(valid)}")
    assert [status for status, _ in valid] == [400] * len(fresh), valid  # accepted; never 401
    assert set(flood) == {401, 503} and flood[503] > flood[401], flood  # look-ups bounded; the rest 503, not 401
    assert flood[401] <= 10 * elapsed + 30, flood  # ~10 look-ups per second for one address (+ the bucket)
    assert [status for status, _ in other] == [401] * len(fresh), other  # other addresses: their own budgets
    assert stack.admin("GET", "/v1/keys", 1).status_code == 200  # Redis itself was never cut off


def test_a_flooding_client_gets_503_with_retry_after_not_401(stack: Stack) -> None:
    """Past its budget of look-ups, an address's unknown ids are answered 503 with Retry-After: without asking Redis,
    a key created a moment ago on another replica can't be told from a made-up one."""

    async def burst() -> list[tuple[int, str]]:
        keys = [f"yk_{secrets.token_hex(8)}_{secrets.token_urlsafe(24)}" for _ in range(40)]
        return list(await asyncio.gather(*(_status(stack.urls[2], key, "127.0.0.4") for key in keys)))

    answers = asyncio.run(burst())
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) == {401, 503} and statuses[503] >= 20, statuses
    assert all(retry == "1" for status, retry in answers if status == 503), answers


def test_a_taken_key_id_is_never_stored_over_an_existing_key_in_redis(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.keys import auth
    from gateway.keys.redis_store import RedisStore

    taken_id, taken_key = stack.new_key(0)
    draws = iter([(taken_id, f"yk_{taken_id}_collides"), (f"c0ffee{secrets.token_hex(5)}", "yk_unused_fresh")])
    monkeypatch.setattr(auth, "new_key", lambda: next(draws))

    async def create() -> auth.KeyEntry:
        store = RedisStore(stack.redis.url, stack.redis.password, timeout_s=2.0)
        try:
            return (await store.create_key(auth.KeyDraft("second")))[0]
        finally:
            await store.close()

    second = asyncio.run(create())
    assert second.id != taken_id and second.id.startswith("c0ffee")
    assert probe(stack.urls[1], taken_key) == 400  # the existing key is intact: same hash, still accepted


def test_a_32_bit_key_id_from_an_older_release_keeps_working(stack: Stack) -> None:
    from gateway.keys.auth import KeyEntry, hash_key
    from gateway.keys.redis_store import RedisStore

    key_id = secrets.token_hex(4)
    key = f"yk_{key_id}_{secrets.token_urlsafe(24)}"

    async def put() -> None:
        store = RedisStore(stack.redis.url, stack.redis.password, timeout_s=2.0)
        try:
            await store.put_entry(KeyEntry(key_id, "old", hash_key(key), "2024-01-01T00:00:00Z"))
        finally:
            await store.close()

    asyncio.run(put())
    assert [probe(url, key) for url in stack.urls] == [400, 400, 400]


def test_a_key_stored_with_a_degenerate_rate_is_limited_and_leaves_redis_in_use(
    stack: Stack, images: dict[str, Path]
) -> None:
    """A key written with rate 1e-300 (accepted before rates were checked) broke the GCRA script, and the script's
    error opened the Redis breaker for every key of the replica. It is now limited at the slowest allowed rate."""
    import redis

    key_id, key = stack.new_key(0)
    client = redis.Redis(port=stack.redis.port, password=stack.redis.password, decode_responses=True)
    try:
        client.hset(f"yt:key:{key_id}", "rate", "1e-300")
        client.publish("yt:keys", key_id)
    finally:
        client.close()
    tiny = images["tiny"].read_bytes()
    deadline = time.monotonic() + 5
    while (r := predict(stack.urls[1], key, tiny)).headers.get("x-ratelimit-limit") != "1":
        assert time.monotonic() < deadline, r.headers  # every replica re-reads the key within a second
        time.sleep(0.1)
    assert r.status_code in (200, 429), r.text
    refused = [predict(url, key, tiny) for url in stack.urls]
    assert all(x.status_code == 429 and int(x.headers["retry-after"]) > 900 for x in refused), refused  # one bucket
    cold = stack.new_key(2)[1]  # a key only Redis knows: checked there, so the replica is not cut off from Redis
    assert probe(stack.urls[1], cold) == 400
