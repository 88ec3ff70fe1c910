"""The URL guard on every HTTP request a stream's reader makes: FFmpeg (inside OpenCV's `VideoCapture`) reads an
http(s) source from a relay on 127.0.0.1, never from the network.

FFmpeg on its own follows an HTTP source's redirects and opens an HLS playlist's segment (and variant playlist)
URLs, to whatever hosts they name, resolving names itself: checking the source URL once leaves all of that
unchecked. (Telling FFmpeg to use a proxy would need OPENCV_FFMPEG_CAPTURE_OPTIONS, which the pinned OpenCV 4.11.0
ignores: opencv/opencv#26793.) So each reader gets a `Relay` of its own: FFmpeg opens `http://127.0.0.1:<port>/u/
<the upstream URL, base64url>/<its file name>`, and the relay fetches that URL itself, every hop (the first request
and each redirect, at most MAX_REDIRECTS) checked by the URL guard (gateway/work/guard.py, with the operator's
GATEWAY_URL_ALLOW_HOSTS) and connected at the very address the guard checked (Host header and TLS SNI keep the
name), so a DNS answer that changes after the check can't move it. A playlist (#EXTM3U) is rewritten on its way
to FFmpeg: every URI in it (segments, variant playlists, keys, init sections) becomes a relay URL, so FFmpeg never
connects anywhere else. Manifests of other kinds that name further URLs (DASH, SDP, ffconcat) are refused. A
refused destination is answered `403`, and its reason becomes the stream's `last_error`.

All relays are served by one thread with its own event loop (`Relays`); it moves bytes and rewrites playlists of at
most MAX_PLAYLIST bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from gateway.errors import GatewayError
from gateway.work.guard import Checked

MAX_REDIRECTS = 5
MAX_HEAD = 16 * 1024  # FFmpeg's request head; longer is refused
MAX_PLAYLIST = 4 * 2**20
SNIFF = 1024  # the body's start read before deciding what it is (a playlist, another manifest, media)
PASSED = ("content-type", "content-length", "content-range", "accept-ranges", "last-modified")  # headers FFmpeg reads
URI_ATTRIBUTE = re.compile(r'URI=(?:"([^"]*)"|([^",\s]+))')  # quoted or not: FFmpeg reads both
OTHER_MANIFESTS = (b"<?xml", b"<MPD", b"v=0", b"ffconcat")  # DASH, SDP, concat lists: they name URLs of their own

LOOKUP_THREADS = 2  # name lookups of all relays at once (a slow DNS answer holds one)
NICE = 10  # as the readers' threads (gateway/live/source.py)

Check = Callable[[str], Awaitable[Checked]]  # the URL guard: the checked destination, or a GatewayError


class Refused(Exception):
    """A destination the guard refused (`message` names it and why) or a fetch that failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def local_url(port: int, upstream: str) -> str:
    """The relay URL FFmpeg opens for `upstream` (its last path segment kept: FFmpeg probes formats by name too)."""
    token = base64.urlsafe_b64encode(upstream.encode()).decode().rstrip("=")
    name = urlsplit(upstream).path.rsplit("/", 1)[-1] or "index"
    return f"http://127.0.0.1:{port}/u/{token}/{name}"


def upstream_url(path: str) -> str:
    """The upstream URL of a relay path (`/u/<base64url>/<name>`), or ValueError."""
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "u":
        raise ValueError(path)
    token = parts[2]
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(path) from None


def rewrite(playlist: str, base: str, port: int) -> str:
    """An HLS playlist with every URI (lines and URI="..." attributes, relative ones resolved against `base`, the
    playlist's own URL) turned into relay URLs."""
    out = []
    for line in playlist.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            line = local_url(port, urljoin(base, text))
        elif text.startswith("#"):
            line = URI_ATTRIBUTE.sub(lambda m: f'URI="{local_url(port, urljoin(base, m[1] or m[2] or ""))}"', line)
        out.append(line)
    return "\n".join(out) + "\n"


class Relay:
    """One reader's relay (see the module docstring). `refused`: why the last destination was refused, "" when none
    was since the reader cleared it."""

    def __init__(self, check: Check, timeout_s: float) -> None:
        self.check, self.timeout_s = check, timeout_s
        self.port = 0
        self.refused = ""
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def url(self, upstream: str) -> str:
        return local_url(self.port, upstream)

    async def start(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.timeout_s)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.close()
        if self._client is not None:
            await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout_s)
            lines = head.decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            ranged = {k.strip().lower(): v.strip() for k, v in headers.items()}.get("range")
            try:
                if method != "GET":
                    raise Refused(405, "The stream relay takes GET only.")
                try:
                    upstream = upstream_url(path)
                except ValueError:
                    raise Refused(404, "Not a relay URL.") from None
                await self._relay(upstream, ranged, writer)
            except Refused as exc:
                body = exc.message.encode()
                writer.write(
                    f"HTTP/1.1 {exc.status} Refused\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # FFmpeg sees the connection close and reports the source as failing
        finally:
            self._open.discard(writer)
            writer.close()

    async def _relay(self, url: str, ranged: str | None, writer: asyncio.StreamWriter) -> None:
        assert self._client is not None
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(url, ranged)
            try:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                chunks = response.aiter_raw()
                first = await _sniffed(chunks)
                start = first.lstrip(b"\xef\xbb\xbf \t\r\n")
                if start.startswith(b"#EXTM3U"):
                    text = (first + await _rest(chunks)).decode("utf-8", "replace")
                    body = rewrite(text, str(url), self.port).encode()
                    writer.write(_head(response, len(body)) + body)
                    await writer.drain()
                    return
                if start.startswith(OTHER_MANIFESTS) or b"<MPD" in first[:512]:
                    raise Refused(403, "The source is a manifest the gateway does not read (DASH, SDP or a list).")
                writer.write(_head(response, None) + first)
                async for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                return
            except httpx.HTTPError:
                return  # the upstream dropped: close, FFmpeg sees the end
            finally:
                await response.aclose()
        raise Refused(502, f"The source redirected more than {MAX_REDIRECTS} times.")

    async def _send(self, url: str, ranged: str | None) -> httpx.Response:
        """The response of one hop, sent to the address the guard checked."""
        assert self._client is not None
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            self.refused = f"Refused {url[:100]!r}: the source led to a URL that is not http(s)."
            raise Refused(403, self.refused)
        try:
            checked = await self.check(url)
        except GatewayError as exc:
            where = urlsplit(url).netloc.rpartition("@")[2]
            self.refused = (
                f"Refused a connection to {where[:100]} (the source, a redirect or an HLS playlist's URI): "
                f"{exc.message}"
            )[:300]
            raise Refused(403, self.refused) from None
        target = httpx.URL(url)
        headers = {
            "Host": target.netloc.decode("ascii", "replace"),
            "User-Agent": "yolo-triton-gateway",
            "Accept-Encoding": "identity",  # the bytes pass through as they come, Content-Length with them
        }
        if ranged:
            headers["Range"] = ranged
        request = self._client.build_request(
            "GET",
            target.copy_with(host=checked.address),
            headers=headers,
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        try:
            return await self._client.send(request, stream=True)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise Refused(502, f"The source could not be fetched ({type(exc).__name__}).") from None


async def _sniffed(chunks: AsyncIterator[bytes]) -> bytes:
    """The body's first SNIFF bytes at least (all of it when shorter), however the server splits it: a playlist
    sent a few bytes at a time must still be seen as one."""
    out = b""
    async for chunk in chunks:
        out += chunk
        if len(out) >= SNIFF:
            break
    return out


async def _rest(chunks: AsyncIterator[bytes]) -> bytes:
    out = bytearray()
    async for chunk in chunks:
        out += chunk
        if len(out) > MAX_PLAYLIST:
            raise Refused(502, f"The source's playlist is over {MAX_PLAYLIST // 2**20} MiB.")
    return bytes(out)


def _nice_then(run: Callable[[], object]) -> None:
    """`run()` in this thread at nice +NICE (raising one's own niceness needs no privilege; Linux: per thread)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + NICE)
    run()


def _head(response: httpx.Response, length: int | None) -> bytes:
    """The status line and the headers FFmpeg reads (Content-Length replaced for a rewritten body)."""
    lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase or 'OK'}"]
    for name in PASSED:
        value = response.headers.get(name)
        if name == "content-length" and length is not None:
            value = str(length)
        if value is not None and "\r" not in value and "\n" not in value:
            lines.append(f"{name}: {value}")
    return ("\r\n".join([*lines, "Connection: close", "", ""])).encode("latin-1", "replace")


class Relays:
    """The thread and event loop that serve every relay of this process's readers, and the loop's LOOKUP_THREADS
    for name lookups (the guard's and the connections'); all made at start and run at nice +NICE, as the readers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="stream-relay-lookup")
        started = threading.Barrier(LOOKUP_THREADS + 1)
        for _ in range(LOOKUP_THREADS):  # each waits for the others: the pool starts all its threads now
            lookups.submit(_nice_then, started.wait)
        started.wait()
        self.loop.set_default_executor(lookups)
        self._thread = threading.Thread(target=_nice_then, args=(self.loop.run_forever,), name="stream-relay")
        self._thread.daemon = True
        self._thread.start()

    async def open(self, check: Check, timeout_s: float) -> Relay:
        """A new relay, listening (called from the app's event loop; `check` runs on the relays' loop)."""
        relay = Relay(check, timeout_s)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(relay.start(), self.loop))
        return relay

    async def drop(self, relay: Relay) -> None:
        """Stop listening, close the relay's connections and its client."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(relay.close(), self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(2.0)
