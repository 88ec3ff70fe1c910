"""Live stream events are kept and replayable: each event has an SSE `id:` (its number in the stream's event log), and
a client that reconnects with `Last-Event-ID` gets exactly the events it missed, then live ones; an id older than the
log keeps, or one the stream never gave, gets `event: lost` and what is kept. The board's log on its own (memory and
a real Redis: numbers across owners, fencing, trimming, removal), then real gateways over a real MJPEG source: one
in memory, two sharing a real Redis (a client reconnecting to the replica that does not own the stream)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import sources
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_streams import Api, poll
from tests.test_streams_redis import _owner, on_redis
from tritonlocal import launcher, redisserver

if TYPE_CHECKING:
    from gateway.work.board import Board, Event

KEPT = 20  # GATEWAY_STREAM_EVENTS_KEPT of the gateways here: ~4 s of a 5 fps stream


# --- the board's event log ------------------------------------------------------------------------------------------


def _boards(redis_server: redisserver.RedisServer | None) -> Board:
    from gateway.work.board import MemoryBoard

    if redis_server is None:
        return MemoryBoard(events_kept=10)
    from gateway.work.redis_board import RedisBoard

    return RedisBoard(redis_server.url, redis_server.password, 1.0, events_kept=10)


async def _take(events: AsyncIterator[Event | None], count: int, seconds: float = 10) -> list[Event]:
    """The next `count` events (quiet ticks skipped), within `seconds`."""
    out: list[Event] = []
    deadline = time.monotonic() + seconds
    while len(out) < count and time.monotonic() < deadline:
        event = await anext(events)
        if event is not None:
            out.append(event)
    assert len(out) == count, out
    return out


@pytest.mark.parametrize("where", ["memory", "redis"])
def test_the_board_keeps_the_newest_events_numbered_across_owners_fenced_and_removed(
    where: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server") if where == "redis" else None
    id = f"st_replay{where}"

    from gateway.work.board import Event

    async def main() -> None:
        board = _boards(server)
        try:
            assert await board.create("stream", id, "k1", {"state": "starting"}, 0)
            first = await board.acquire("stream", id, "replica-a", 10)
            assert first is not None
            for n in range(3):
                assert await board.publish(first, b'{"frame": %d}' % n)
            await board.release(first)
            second = await board.acquire("stream", id, "replica-b", 10)
            assert second is not None
            assert not await board.publish(first, b"late")  # fenced: the old owner appends nothing
            for n in range(3, 33):
                assert await board.publish(second, b'{"frame": %d}' % n)
            assert (await board.read("stream", id) or {})["last_event"] == "33"  # numbered on, across owners
            async with board.subscribe("stream", id, 0) as events:  # the newest 10 kept: 24..33
                kept = await _take(events, 10)
                assert [e.id for e in kept] == list(range(24, 34))
                assert [e.data for e in kept] == [b'{"frame": %d}' % (n - 1) for n in range(24, 34)]
                assert await anext(events) is None  # nothing more yet: a quiet tick
                assert await board.publish(second, b"live")
                assert await _take(events, 1) == [Event(34, b"live")]
            async with board.subscribe("stream", id, 31) as events:
                assert [e.id for e in await _take(events, 3)] == [32, 33, 34]
            async with board.subscribe("stream", id, 34) as slow:  # a reader that falls behind reads from the log
                for n in range(3):
                    assert await board.publish(second, b"%d" % n)
                assert [e.id for e in await _take(slow, 3)] == [35, 36, 37]
                for n in range(12):  # 38..49: the log keeps 40..49
                    assert await board.publish(second, b"%d" % n)
                assert (await _take(slow, 1))[0].id == 40  # 38, 39 were dropped before it read them: a gap
                await board.remove("stream", id, "k1")
                ended = time.monotonic()
                rest = [e async for e in slow if e is not None]  # what it had read already, then the end
                assert all(e.id > 40 for e in rest) and len(rest) <= 11
                assert time.monotonic() - ended < 5  # ends within a tick or two
            async with board.subscribe("stream", id, 0) as events:
                assert [e async for e in events] == []  # removed with its stream: nothing kept
            if server is not None:  # the log holds only the end mark now, for a few seconds
                redis = board._redis  # type: ignore[attr-defined]
                log = f"yt:work:stream:events:{id}"
                assert await redis.xlen(log) == 1 and 0 < await redis.pttl(log) <= 10_000
        finally:
            await board.close()

    asyncio.run(main())


def test_a_last_event_id_is_a_number_the_stream_gave_or_else_unknown() -> None:
    from gateway.live.replay import Start, start

    assert start(None, 5) == start("", 5) == start("  ", 5) == Start(5)  # none sent: live ones only
    assert start("3", 5) == start(" 3 ", 5) == Start(3) and start("0", 5) == Start(0) and start("5", 5) == Start(5)
    for asked in ("6", "-1", "3.0", "abc", "²", "٣", "1" * 30):  # above the last, or not a plain decimal number
        assert start(asked, 5) == Start(0, asked[:64]), asked
    assert start("x" * 100, 5).unknown == "x" * 64


# --- real gateways ---------------------------------------------------------------------------------------------------


@dataclass
class Sse:
    """One Server-Sent Event: `event:` (message when none), `id:` and the `data:` JSON."""

    kind: str
    id: int | None
    data: Any


def frames(events: list[Sse]) -> list[Sse]:
    return [e for e in events if e.kind == "message"]


def read(api: Api, id: str, until: Callable[[list[Sse]], bool], seconds: float, **kwargs: Any) -> list[Sse]:
    """Stream `id`'s events from one GET (with `kwargs`: headers, params) until `until(events)`, within `seconds`."""
    out: list[Sse] = []
    deadline = time.monotonic() + seconds
    with api.call("GET", f"/v1/streams/{id}/events", stream=True, **kwargs) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        kind, number, data = "message", None, []
        for line in r.iter_lines(decode_unicode=True):
            if line == "" and data:
                out.append(Sse(kind, number, json.loads("\n".join(data))))
                kind, number, data = "message", None, []
                if until(out):
                    return out
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                number = int(line[4:])
            elif line.startswith("data: "):
                data.append(line[6:])
            if time.monotonic() > deadline:
                break
    pytest.fail(f"not within {seconds} s: {[(e.kind, e.id) for e in out]}")


def upto(last: int) -> Callable[[list[Sse]], bool]:
    return lambda out: bool(frames(out)) and (frames(out)[-1].id or 0) >= last


class Reference:
    """A client connected the whole time, from a thread: every frame event it gets, by id."""

    def __init__(self, api: Api, id: str) -> None:
        self.got: dict[int, Any] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(api, id), daemon=True)
        self.thread.start()

    def _read(self, api: Api, id: str) -> None:
        def until(out: list[Sse]) -> bool:
            for event in frames(out)[len(self.got) :]:
                self.got[event.id or 0] = event.data
            return self.done.is_set()

        read(api, id, until, 300)


def _reconnect_exactly(apis: list[Api], id: str) -> None:
    """One client reads 3 events from apis[0], disconnects, frames pass, and it reconnects to apis[-1] with
    Last-Event-ID: exactly the missed events come, in order, then live ones, equal (by frame index and content) to
    what a client connected the whole time (to apis[-1]) got. The query parameter does the same."""
    reference = Reference(apis[-1], id)
    poll("the reference client's first event", lambda: reference.got, 60)
    before = read(apis[0], id, lambda out: len(frames(out)) >= 3, 60)
    assert before[0].kind == "state" and all(e.id is not None for e in frames(before))
    last = frames(before)[-1].id or 0
    missed = poll(
        "frames analysed while disconnected", lambda: (n := apis[0].get(id)["last_event"]) >= last + 6 and n, 60
    )
    after = read(apis[-1], id, upto(missed + 3), 60, headers={"Last-Event-ID": str(last)})
    assert after[0].kind == "state" and not [e for e in after if e.kind == "lost"], after[:3]
    got = frames(before) + frames(after)
    ids = [e.id or 0 for e in got]
    assert ids == list(range(ids[0], ids[-1] + 1)), ids  # no duplicate, no gap
    indices = [e.data["frame"] for e in got]
    assert indices == sorted(set(indices)), indices
    assert frames(after)[0].id == last + 1 and ids[-1] >= missed + 3  # the missed ones, then live ones
    poll("the reference client at the same event", lambda: max(reference.got) >= ids[-1], 60)
    reference.done.set()
    assert [e.data for e in got if e.id in reference.got] == [reference.got[i] for i in ids if i in reference.got]
    assert set(range(last + 1, missed + 1)) <= set(reference.got)  # compared over every missed event at least
    assert any(e.data["data"] for e in got)  # real detections, not empty frames
    query = read(apis[-1], id, upto(missed), 60, params={"last_event_id": str(last)})
    assert [e.data for e in frames(query) if (e.id or 0) <= missed] == [
        e.data for e in frames(after) if (e.id or 0) <= missed
    ]


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(triton, tmp_path_factory.mktemp("replay-gw"), url_allow_hosts="127.0.0.1",
                            stream_events_kept=str(KEPT))  # fmt: skip
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def api(gw: Gateway) -> Api:
    from gateway.keys.auth import KeyDraft, create_key

    return Api(gw.url, create_key(gw.keys_file, KeyDraft("replay"))[1])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sources.need("ffmpeg")
    return sources.clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=3)


def test_a_client_that_reconnects_with_last_event_id_gets_exactly_the_missed_events_then_live_ones(
    api: Api, clip: Path
) -> None:
    served = sources.mjpeg(clip)
    try:
        stream = api.create(source=served.url, fps=5)
        _reconnect_exactly([api], stream["id"])
        assert api.call("DELETE", f"/v1/streams/{stream['id']}").status_code == 200
    finally:
        served.stop()


def test_an_id_older_than_the_log_or_unknown_gets_event_lost_then_what_is_kept(api: Api, clip: Path) -> None:
    served = sources.mjpeg(clip)
    try:
        stream = api.create(source=served.url, fps=5)
        id = stream["id"]
        last = poll("more events than are kept", lambda: (n := api.get(id)["last_event"]) >= KEPT + 5 and n, 90)
        old = read(api, id, upto(last + 2), 60, headers={"Last-Event-ID": "2"})
        assert [e.kind for e in old[:2]] == ["state", "lost"], old[:3]
        got = frames(old)
        lost = old[1].data
        assert lost["after"] == 2 and lost["next"] == got[0].id and lost["lost"] == (got[0].id or 0) - 3
        assert "GATEWAY_STREAM_EVENTS_KEPT" in lost["message"] and str(lost["lost"]) in lost["message"]
        assert last - KEPT < (got[0].id or 0) <= last - KEPT + 3  # the oldest kept: KEPT back, give or take a frame
        ids = [e.id or 0 for e in got]
        assert ids == list(range(ids[0], ids[-1] + 1))
        for asked in ("not-an-id", "99999999", "-3", "²"):  # never given by this stream: what is kept, from the oldest
            unknown = read(api, id, lambda out: len(frames(out)) >= 3, 60, headers={"Last-Event-ID": asked})
            assert [e.kind for e in unknown[:2]] == ["state", "lost"], unknown[:3]
            assert unknown[1].data["after"] is None and unknown[1].data["lost"] is None
            assert asked in unknown[1].data["message"]
            first = frames(unknown)[0].id or 0
            assert first > 2 and first <= api.get(id)["last_event"] - KEPT + 3
            assert not [e for e in unknown[2:] if e.kind == "lost"]  # one signal, not a second for the same gap
        live = read(api, id, lambda out: len(frames(out)) >= 2, 60)  # no id: live ones only, as before
        assert frames(live)[0].id == live[0].data["last_event"] + 1 and live[0].kind == "state"
        assert api.call("DELETE", f"/v1/streams/{id}").status_code == 200
    finally:
        served.stop()


@pytest.mark.load
def test_reconnecting_to_the_replica_that_does_not_own_the_stream_replays_from_redis(
    triton: launcher.TritonServer,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two gateways on a Redis of their own (the session's Redis has other gateways that would claim the stream); then
    the owner is SIGKILLed and the events go on, numbered on by its successor."""
    sources.need("ffmpeg")  # HLS: a real-time paced source the successor can open again (ffmpeg's MJPEG serves one)
    served = sources.hls(tmp_path / "hls", sources.clip(tmp_path / "clip.mp4", seconds=30))
    try:
        with on_redis(triton, tmp_path_factory, "replay", 2, stream_events_kept=str(KEPT)) as (gateways, key):
            apis = [Api(gw.url, key) for gw in gateways]
            stream = apis[0].create(source=served.url, fps=5)
            state = poll("an owner", lambda: (s := apis[0].get(stream["id"]))["owner"] and s, 60)
            mine = _owner(gateways, state)
            assert mine is not None, state
            other = 1 - mine
            _reconnect_exactly([apis[mine], apis[other]], stream["id"])  # from the owner to the other replica
            last = apis[other].get(stream["id"])["last_event"]
            gateways[mine].process.kill()  # SIGKILL: the other replica takes the stream over once the lease lapses
            gateways[mine].process.wait(10)
            poll("a new owner", lambda: (o := apis[other].get(stream["id"])["owner"]) and o != state["owner"], 60)
            again = read(
                apis[other], stream["id"], lambda out: len(frames(out)) >= 3, 60, headers={"Last-Event-ID": str(last)}
            )
            ids = [e.id for e in frames(again)]
            assert ids == list(range(last + 1, last + 1 + len(ids))), ids  # numbered on by the new owner, no gap
            assert not [e for e in again if e.kind == "lost"], again[:3]
            ending: list[Sse] = []
            connected = threading.Event()

            def ended(out: list[Sse]) -> bool:
                connected.set()  # (its first event, the state, came: it follows the stream)
                return out[-1].kind == "end"

            follower = threading.Thread(target=lambda: ending.extend(read(apis[other], stream["id"], ended, 60)))
            follower.start()
            assert connected.wait(30)
            deleted = time.monotonic()
            assert apis[other].call("DELETE", f"/v1/streams/{stream['id']}").status_code == 200
            follower.join(30)
            took = time.monotonic() - deleted
            assert ending and ending[-1].kind == "end" and ending[-1].data == {"id": stream["id"]}, ending[-3:]
            with capsys.disabled():
                print(f"\n[stream replay] Redis: event: end {took:.2f} s after the DELETE")
            assert took < 5, took  # at once (the log's end mark): generous on a busy machine
    finally:
        served.stop()
