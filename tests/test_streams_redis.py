"""Live streams across three real gateway processes sharing a real Redis: one replica owns a stream through its
lease, any replica answers for it and relays its events, and when the owner is SIGKILLed another replica takes the
stream over within a few seconds (measured)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import sources
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_redis import cli
from tests.test_streams import Api, poll
from tritonlocal import launcher, redisserver

pytestmark = pytest.mark.load


@contextlib.contextmanager
def on_redis(
    triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory, name: str, n: int, **env: str
) -> Iterator[tuple[list[Gateway], str]]:
    """`n` gateways (settings `env` beside Redis's and the loopback allowance) on a Redis of their own, and a key
    there: the session's Redis has other Redis-mode gateways (gateway_redis) that would claim these streams too, and
    the tests must know which replicas may own one."""
    redis_server = redisserver.start(tmp_path_factory.mktemp(f"{name}-redis"))
    gateways: list[Gateway] = []
    try:
        created = cli(redis_server, "create", "--name", name, "--rate", "1000")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        env = {"redis_url": redis_server.url, "redis_password": redis_server.password, "url_allow_hosts": "127.0.0.1",
               **env}  # fmt: skip
        gateways = [start_gateway(triton, tmp_path_factory.mktemp(f"{name}{i}"), **env) for i in range(n)]
        yield gateways, key
    finally:
        for gw in gateways:
            stop_gateway(gw)
        redis_server.stop()


@pytest.fixture
def replicas(
    triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Gateway], str]]:
    """Three gateways on a Redis of their own."""
    with on_redis(triton, tmp_path_factory, "streams", 3) as made:
        yield made


def _owner(gateways: list[Gateway], state: dict[str, Any]) -> int | None:
    """The index of the gateway whose process owns the stream (the owner id names the process id)."""
    owner = state.get("owner") or ""
    for i, gw in enumerate(gateways):
        if f"-{gw.process.pid}-" in owner:
            return i
    return None


def _follow(api: Api, id: str, seen: list[dict[str, Any]]) -> threading.Thread:
    """Append stream `id`'s frame events (with their arrival time, `at`) to `seen`, from a thread."""

    def follow() -> None:
        with api.call("GET", f"/v1/streams/{id}/events", stream=True, timeout=90) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("data: ") and '"frame"' in line:
                    seen.append({**json.loads(line[6:]), "at": time.monotonic()})
                if len(seen) >= 400:
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    return reader


def _owned_and_followed(
    gateways: list[Gateway], apis: list[Api], id: str, figure: str, least: int
) -> tuple[dict[str, Any], int, int, list[dict[str, Any]]]:
    """Once the stream's `figure` reaches `least`: its state, its owner's index, another replica's index, and the
    list its events are appended to as that replica relays them (two already there)."""
    state = poll(f"an owner with {figure} >= {least}", lambda: (s := apis[0].get(id))[figure] >= least and s, 60)
    owner = _owner(gateways, state)
    assert owner is not None, state
    follower = next(i for i in range(3) if i != owner)
    seen: list[dict[str, Any]] = []
    _follow(apis[follower], id, seen)
    poll("events relayed by a replica that does not own the stream", lambda: len(seen) >= 2, 30)
    return state, owner, follower, seen


def test_a_dead_owners_stream_is_taken_over_and_its_events_go_on(
    replicas: tuple[list[Gateway], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources.need("ffmpeg")
    gateways, key = replicas
    clip = sources.clip(tmp_path / "clip.mp4", seconds=6)
    served = sources.hls(tmp_path / "hls", clip)  # a real-time paced source any replica can (re)open
    apis = [Api(gw.url, key) for gw in gateways]
    try:
        stream = apis[0].create(source=served.url, fps=5)
        id = stream["id"]
        state, owner, follower, seen = _owned_and_followed(gateways, apis, id, "frames_processed", 3)
        killed_at = time.monotonic()
        gateways[owner].process.kill()  # SIGKILL: no goodbye, the lease must lapse
        gateways[owner].process.wait(10)
        took_over = poll(
            "another replica owning the stream",
            lambda: (s := apis[follower].get(id))["owner"] != state["owner"] and s["owner"] and s, 30,
        )  # fmt: skip
        owned_after = time.monotonic() - killed_at
        new_owner = _owner(gateways, took_over)
        assert new_owner is not None and new_owner != owner
        poll("events after the takeover", lambda: any(e["at"] > killed_at + 0.5 for e in seen[-3:]), 30)
        resumed = min(e["at"] for e in seen if e["at"] > killed_at) - killed_at
        later = poll("frames analysed by the new owner", lambda: (s := apis[follower].get(id))["state"] == "running"
                     and s["frames_processed"] > 0 and s, 30)  # fmt: skip
        assert later["owner"] == took_over["owner"]
        indices = [e["frame"] for e in seen]
        assert indices == sorted(set(indices)), indices  # the new owner goes on past the old one's frame indices
        rows = [row for e in seen for row in e["data"]]  # real detections, relayed across replicas
        assert rows and all({"name", "class", "confidence", "box"} <= set(row) for row in rows), seen[:3]
        with capsys.disabled():
            print(f"\n[stream takeover] owner SIGKILLed: another replica holds the lease after {owned_after:.1f} s, "
                  f"the next event after {resumed:.1f} s (GATEWAY_STREAM_LEASE_S=3)")  # fmt: skip
        assert resumed < 3 + 12  # the lease time, then a scan, an open and a frame: generous on a busy machine
        assert apis[follower].call("DELETE", f"/v1/streams/{id}").status_code == 200
        survivor = next(i for i in range(3) if i not in (owner, follower))
        assert apis[survivor].call("GET", f"/v1/streams/{id}").status_code == 404
    finally:
        served.stop()


def test_one_replica_creates_another_answers_and_the_per_key_cap_is_global(
    replicas: tuple[list[Gateway], str], tmp_path: Path
) -> None:
    gateways, key = replicas
    apis = [Api(gw.url, key) for gw in gateways]
    made = [apis[i].create(source=f"http://127.0.0.1:{sources.free_port()}/x") for i in range(3)]
    made.append(apis[0].create(source=f"http://127.0.0.1:{sources.free_port()}/x"))  # the default cap is 4
    r = apis[2].call("POST", "/v1/streams", json={"source": "http://127.0.0.1:1025/x", "model": "yolov8n"})
    assert r.status_code == 429 and "GATEWAY_MAX_STREAMS_PER_KEY" in r.json()["message"]
    for stream in made:
        got = [api.get(stream["id"]) for api in apis]
        assert {g["id"] for g in got} == {stream["id"]}
    owners = poll("every stream owned", lambda: all(apis[1].get(s["id"])["owner"] for s in made), 30)
    assert owners
    for stream in made:
        assert apis[1].call("DELETE", f"/v1/streams/{stream['id']}").status_code == 200
    assert requests.get(f"{gateways[0].url}/v1/streams", headers={"x-api-key": key}, timeout=10).json()["data"] == []


def test_a_paused_owner_that_lost_its_lease_is_fenced_off_and_stops(
    replicas: tuple[list[Gateway], str], tmp_path: Path
) -> None:
    """SIGSTOP the owner past its lease: another replica takes the stream over; on SIGCONT the old owner's writes
    are refused (its lease token is stale) and its run ends, so the events stay one owner's at a time: frame
    indices only grow, across the takeover too (the new owner goes on past the old one's checkpoint, and the old
    owner's later frames are never published)."""
    sources.need("ffmpeg")
    gateways, key = replicas
    clip = sources.clip(tmp_path / "clip.mp4", seconds=20)
    served = sources.hls(tmp_path / "hls", clip)
    apis = [Api(gw.url, key) for gw in gateways]
    paused = None
    try:
        id = apis[0].create(source=served.url, fps=5)["id"]
        state, owner, follower, seen = _owned_and_followed(gateways, apis, id, "frames_read", 100)
        paused = gateways[owner].process
        paused.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        took_over = poll(
            "another replica owning the stream",
            lambda: (s := apis[follower].get(id))["owner"] not in (None, state["owner"]) and s, 30,
        )  # fmt: skip
        paused.send_signal(signal.SIGCONT)
        paused = None
        log = gateways[owner].log_path
        poll("the old owner noticing its lease is lost", lambda: "lease lost" in log.read_text(), 30)
        resumed_at = time.monotonic()
        poll("events after the old owner resumed", lambda: sum(e["at"] > resumed_at for e in seen) >= 5, 30)
        after = apis[follower].get(id)
    finally:
        if paused is not None:
            paused.send_signal(signal.SIGCONT)
        served.stop()
    assert after["owner"] == took_over["owner"] and after["state"] == "running", after
    indices = [e["frame"] for e in seen]
    assert indices == sorted(set(indices)), indices  # a stale write, or a new owner counting from 0, would show
    assert any(e["at"] < stopped_at for e in seen) and any(e["at"] > stopped_at for e in seen)
    assert any(e["data"] for e in seen)
    assert apis[follower].call("DELETE", f"/v1/streams/{id}").status_code == 200
