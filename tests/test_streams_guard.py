"""The URL guard on every HTTP request of a stream's reader (gateway/live/relay.py), with real parts on loopback: a
source that redirects to a forbidden address, and an HLS playlist whose segments live on one, are refused with the
guard's reason naming the host, and nothing ever connects there; an allowed redirect is followed.

The gateway allows 127.0.0.1 (GATEWAY_URL_ALLOW_HOSTS, as an operator would allow a private camera); the forbidden
target listens on 127.0.0.2, a loopback address the guard refuses like any private one (it is not in the list), and
counts every TCP connection it accepts."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import sources
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_streams import Api, poll
from tritonlocal import launcher


class Forbidden:
    """A TCP listener on 127.0.0.2 that counts the connections it accepts (and closes them)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(triton, tmp_path_factory.mktemp("guard-gw"), url_allow_hosts="127.0.0.1")
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def api(gw: Gateway) -> Api:
    from gateway.keys.auth import KeyDraft, create_key

    _, key = create_key(gw.keys_file, KeyDraft("guard"))
    return Api(gw.url, key)


@pytest.fixture
def forbidden() -> Iterator[Forbidden]:
    target = Forbidden()
    yield target
    target.stop()


def _refused(api: Api, source: str, forbidden: Forbidden) -> dict[str, Any]:
    """The stream's state once its reader was refused (last_error naming the forbidden host), after checking that
    nothing connected to the forbidden target meanwhile."""
    stream = api.create(source=source)
    host = f"127.0.0.2:{forbidden.port}"
    try:
        state = poll(
            "the guard's refusal in last_error (or a connection to the forbidden target)",
            lambda: forbidden.accepted
            or ((s := api.get(stream["id"]))["last_error"] or "")
            and host in s["last_error"]
            and s,
            60,
        )
    finally:
        api.call("DELETE", f"/v1/streams/{stream['id']}")
    assert forbidden.accepted == 0, f"the reader connected to {host} {forbidden.accepted} times"
    assert isinstance(state, dict) and host in state["last_error"], state
    return state


def test_a_redirect_to_a_forbidden_address_is_refused_and_never_connected(api: Api, forbidden: Forbidden) -> None:
    site = sources.Site({"/cam.mjpg": (302, {"Location": f"http://127.0.0.2:{forbidden.port}/cam.mjpg"}, b"")})
    try:
        state = _refused(api, f"{site.url}/cam.mjpg", forbidden)
    finally:
        site.stop()
    assert state["state"] in ("connecting", "reconnecting") and state["frames_read"] == 0, state
    assert "not allowed" in state["last_error"] and "GATEWAY_URL_ALLOW_HOSTS" in state["last_error"], state


@pytest.mark.parametrize("split", [0, 3])  # 3: the playlist's first bytes ("#EX") arrive alone
def test_hls_segments_on_a_forbidden_host_are_refused_and_never_connected(
    api: Api, forbidden: Forbidden, split: int
) -> None:
    playlist = "\n".join(
        ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
        + [f"#EXTINF:1.0,\nhttp://127.0.0.2:{forbidden.port}/seg{i}.ts" for i in range(3)]
        + ["#EXT-X-ENDLIST", ""]
    ).encode()
    site = sources.Site({"/live.m3u8": (200, {"Content-Type": "application/vnd.apple.mpegurl"}, playlist)}, split)
    try:
        state = _refused(api, f"{site.url}/live.m3u8", forbidden)
    finally:
        site.stop()
    assert state["frames_read"] == 0 and "not allowed" in state["last_error"], state


def test_an_allowed_redirect_is_followed(api: Api, tmp_path: Path) -> None:
    sources.need("ffmpeg")
    served = sources.hls(tmp_path / "hls", sources.clip(tmp_path / "clip.mp4", seconds=3))
    site = sources.Site({"/cam.m3u8": (302, {"Location": served.url}, b"")})
    try:
        stream = api.create(source=f"{site.url}/cam.m3u8", fps=5)
        state = poll(
            "frames through the redirect", lambda: (s := api.get(stream["id"]))["frames_processed"] >= 3 and s, 60
        )
        api.call("DELETE", f"/v1/streams/{stream['id']}")
    finally:
        site.stop()
        served.stop()
    assert state["last_error"] is None, state


def test_a_playlist_is_rewritten_so_every_uri_goes_through_the_relay() -> None:
    from gateway.live.relay import local_url, rewrite, upstream_url

    playlist = "\n".join(
        [
            "#EXTM3U",
            '#EXT-X-KEY:METHOD=AES-128,URI="key.bin"',
            '#EXT-X-MAP:URI="https://cdn.example/init.mp4"',
            "#EXT-X-MEDIA:TYPE=AUDIO,URI=http://10.0.0.2/audio.m3u8,NAME=a",  # unquoted: FFmpeg reads it too
            "#EXTINF:1.0,",
            "seg0.ts",
            "#EXTINF:1.0,",
            "http://10.0.0.1/seg1.ts",
            "#EXT-X-STREAM-INF:BANDWIDTH=1",
            "../low/index.m3u8",
        ]
    )
    out = rewrite(playlist, "https://example.com/live/index.m3u8", 4321).splitlines()
    uris = [line for line in out if line and not line.startswith("#")]
    uris += [uri for line in out if line.startswith("#") for uri in re.findall(r'URI="([^"]*)"', line)]
    assert len(uris) == 6 and all(u.startswith("http://127.0.0.1:4321/u/") for u in uris), out
    assert sorted(upstream_url(u.split("4321", 1)[1]) for u in uris) == [
        "http://10.0.0.1/seg1.ts",
        "http://10.0.0.2/audio.m3u8",
        "https://cdn.example/init.mp4",
        "https://example.com/live/key.bin",
        "https://example.com/live/seg0.ts",
        "https://example.com/low/index.m3u8",
    ]
    assert local_url(1, "http://a/b/c.m3u8").endswith("/c.m3u8")  # the name kept: FFmpeg probes by it too
