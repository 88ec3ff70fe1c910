"""Event followers (`GET /v1/streams/{id}/events`) are capped per key and per replica against the real gateway over
sockets: past GATEWAY_MAX_STREAM_FOLLOWERS_PER_KEY the key gets 429 naming it while other keys still follow; past
GATEWAY_MAX_STREAM_FOLLOWERS every key does; a follower that goes away gives its place back. Before the cap one key
could hold any number of followers (each, with Redis, a connection of the board's pool while it waits)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import pytest
import requests

from gateway.keys.auth import KeyDraft, create_key
from gateway.live.followers import Followers, holding
from tests import sources
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_streams import Api, poll
from tritonlocal import launcher


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(triton, tmp_path_factory.mktemp("followers-gw"), url_allow_hosts="127.0.0.1",
                            max_stream_followers_per_key="2", max_stream_followers="3")  # fmt: skip
    yield gateway
    stop_gateway(gateway)


def _api(gw: Gateway, name: str) -> Api:
    _, key = create_key(gw.keys_file, KeyDraft(name))
    return Api(gw.url, key)


def _follow(stack: ExitStack, api: Api, id: str) -> requests.Response:
    """An open follower of stream `id` (its first event, the state, read), or the refusal."""
    session = stack.enter_context(requests.Session())
    r = stack.enter_context(session.get(f"{api.url}/v1/streams/{id}/events", headers={"x-api-key": api.key},
                                        stream=True, timeout=30))  # fmt: skip
    if r.status_code == 200:
        lines = r.iter_lines(decode_unicode=True)
        assert next(lines) == "event: state"
        stack.callback(lines.close)  # kept until the stack closes: a dropped reader closes its connection (urllib3)
    return r


def _said(r: requests.Response) -> str:
    """A refusal's body, for a failed assertion's message (an accepted follower's body never ends)."""
    return f"{r.status_code} {r.text}" if r.status_code != 200 else "200: following"


def test_followers_are_capped_per_key_and_per_replica_and_places_come_back(gw: Gateway) -> None:
    a, b = _api(gw, "followers-a"), _api(gw, "followers-b")
    stream_a = a.create(source=f"http://127.0.0.1:{sources.free_port()}/x")["id"]  # (nothing listens: it stays)
    stream_b = b.create(source=f"http://127.0.0.1:{sources.free_port()}/x")["id"]
    with ExitStack() as stack:
        first = _follow(stack, a, stream_a)
        assert _follow(stack, a, stream_a).status_code == 200
        refused = _follow(stack, a, stream_a)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5", _said(refused)
        body = refused.json()
        assert body["success"] is False and "GATEWAY_MAX_STREAM_FOLLOWERS_PER_KEY" in body["message"], body
        assert _follow(stack, b, stream_b).status_code == 200  # another key still follows: 3 of 3 now
        full = _follow(stack, b, stream_b)
        assert full.status_code == 429 and "(GATEWAY_MAX_STREAM_FOLLOWERS)" in full.json()["message"], _said(full)
        first.close()  # the client goes away: its place comes back once the gateway sees it gone
        with ExitStack() as later:
            poll("a place given back", lambda: _follow(later, b, stream_b).status_code == 200, 30)
    for api, id in ((a, stream_a), (b, stream_b)):
        assert api.call("DELETE", f"/v1/streams/{id}").status_code == 200


def test_a_place_comes_back_however_the_events_end() -> None:
    import asyncio

    followers = Followers(per_key=1, total=5)

    async def events() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def read_all() -> list[bytes]:
        return [chunk async for chunk in holding(events(), followers.claim("k"))]

    assert asyncio.run(read_all()) == [b"a", b"b"] and followers.held("k") == 0  # ended

    async def read_one() -> None:
        stream = holding(events(), followers.claim("k"))
        assert await anext(stream) == b"a"
        await stream.aclose()  # the client went away mid-stream

    asyncio.run(read_one())
    assert followers.held("k") == 0
    dropped = holding(events(), followers.claim("k"))  # never started: no `finally` of its own runs
    with pytest.raises(Exception, match="GATEWAY_MAX_STREAM_FOLLOWERS_PER_KEY"):
        followers.claim("k")
    del dropped
    gc.collect()
    assert followers.held() == 0
    release = followers.claim("k")
    release()
    release()  # given back once only
    assert followers.held() == 0 and followers.claim("other")
