"""Live streams: what the routes ask (create, read, list, delete, follow) and how this replica runs the streams it
owns (gateway/work/owner.py claims them; gateway/live/stream.py runs one).

A stream is a record of kind "stream" on the board (gateway/work/board.py; fields below), active until deleted.
Any replica answers for any stream; the owner writes its state and rates there every second and appends one event
per analysed frame to the stream's event log (numbered 1, 2, ...; the newest GATEWAY_STREAM_EVENTS_KEPT kept), which
GET /v1/streams/{id}/events relays as Server-Sent Events from whichever replica the client reached, from the event
after a client's `Last-Event-ID` (gateway/live/replay.py).

Record fields: key (the key id), model, source (as given: it may hold the camera's credentials), shown (the source
without them), args (JSON: the prediction arguments as strings, read by `parse_args`), fps, track ("1" or ""),
webhook, created (Unix s), state, error, stats (JSON), updated, owner, token, stop, checkpoint (JSON: where a
takeover goes on, gateway/live/resume.py), last_event (the number of the last event appended to its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson

from gateway.arguments import parse_args
from gateway.errors import Forbidden, GatewayError, NotFound, ServiceUnavailable, TooManyRequests
from gateway.keys.auth import KeyEntry
from gateway.live import followers, replay, resume, stream
from gateway.live.relay import Relays
from gateway.live.request import StreamRequest, parse
from gateway.live.source import Source
from gateway.predict import tracked
from gateway.settings import Settings
from gateway.work import guard
from gateway.work.board import Lease
from gateway.work.owner import Work
from gateway.work.webhooks import Batch

log = logging.getLogger("gateway")
KIND = "stream"
KEEPALIVE_TICKS = 15  # an SSE comment after this many quiet ticks (proxies close idle connections)
RETRY_S = 1.0  # a run that can't start (model not ready) tries again after this


class Streams(Work):
    """The live streams of this replica's app (see the module docstring)."""

    kind = KIND

    @staticmethod
    def capacity(settings: Settings) -> int:
        return settings.max_streams

    def _setup(self) -> None:
        self.relays = Relays()  # http(s) sources are read through them, every hop guarded (gateway/live/relay.py)
        self.followers = followers.Followers(self.settings.max_stream_followers_per_key,
                                             self.settings.max_stream_followers)  # fmt: skip

    async def close(self) -> None:
        """Stop this replica's runs (handing their leases back), then the readers' relays."""
        await self.owner.close()
        self.relays.close()

    async def create(self, entry: KeyEntry, body: bytes) -> tuple[dict[str, Any], str | None]:
        """A new stream for `entry` from a POST /v1/streams body; (its resource, the webhook secret when it was made
        just now, else None)."""
        request = parse(body)
        if entry.models is not None and request.model not in entry.models:
            allowed = ", ".join(entry.models) or "none"
            raise Forbidden(f"This API key is not allowed to use model '{request.model}'. It may use: {allowed}.")
        return await self._create(entry, request)

    async def _create(self, entry: KeyEntry, request: StreamRequest) -> tuple[dict[str, Any], str | None]:
        settings = self.settings
        info = await self.services.triton.model(request.model)
        args = parse_args(request.fields, info.imgsz)  # the HUB's defaults (iou 0.45; confidence 0.1 when tracking)
        tracked.check(info, args)  # 422 for a classifier, as on videos
        checked = await guard.check_source(request.source, settings.url_allow_hosts, self.resolve)
        secret, hook = None, None
        if request.webhook:
            hook = await guard.check_webhook(request.webhook, settings.url_allow_hosts, self.resolve)
            made, fresh = await self.secrets.ensure(entry.id)
            secret = made if fresh else None
        id = "st_" + secrets.token_hex(8)
        record = {
            "key": entry.id,
            "model": info.name,
            "source": request.source,
            "shown": checked.shown,
            "args": orjson.dumps(request.fields).decode(),
            "vid_stride": str(args.vid_stride),
            "fps": f"{request.fps:g}" if request.fps else "",
            "track": "1" if args.track else "",
            "tracker": args.tracker if args.track else "",
            "webhook": request.webhook,
            "webhook_shown": hook.shown if hook else "",
            "created": f"{time.time():.3f}",
            "state": "starting",
            "error": "",
            "stats": "{}",
        }
        if not await self.board.create(KIND, id, entry.id, record, settings.max_streams_per_key):
            raise TooManyRequests(
                f"This API key already runs {settings.max_streams_per_key} streams "
                "(GATEWAY_MAX_STREAMS_PER_KEY): DELETE /v1/streams/{id} one first.",
                5,
            )
        if not await self.owner.claim(id) and self.board.kind == "memory":
            await self.board.remove(KIND, id, entry.id)
            raise ServiceUnavailable(
                f"This gateway already runs {settings.max_streams} streams (GATEWAY_MAX_STREAMS). Retry later.", 5
            )  # (with shared state, another replica with room takes it within a second: it stays `starting`)
        return public(id, await self.board.read(KIND, id) or record), secret

    async def _mine(self, entry: KeyEntry, id: str) -> dict[str, str]:
        record = await self.board.read(KIND, id) if id.startswith("st_") and len(id) < 64 else None
        if record is None or record.get("key") != entry.id:
            raise NotFound(f"No stream with id '{id[:64]}' for this API key. GET /v1/streams lists yours.")
        return record

    async def get(self, entry: KeyEntry, id: str) -> dict[str, Any]:
        return public(id, await self._mine(entry, id))

    async def list(self, entry: KeyEntry) -> list[dict[str, Any]]:
        out = []
        for id in await self.board.active(KIND, entry.id):
            record = await self.board.read(KIND, id)
            if record is not None:
                out.append(public(id, record))
        return out

    async def delete(self, entry: KeyEntry, id: str) -> dict[str, Any]:
        record = await self._mine(entry, id)
        await self.board.remove(KIND, id, entry.id)  # the owner's next renewal fails: it stops within a second
        return {**public(id, record), "state": "deleted"}

    async def follow(self, entry: KeyEntry, id: str, last_event_id: str | None = None) -> AsyncIterator[bytes]:
        """Server-Sent Events for stream `id` (after checking it is `entry`'s): `event: state` first (the resource),
        then one event per analysed frame (`id:` its number, `data:` its JSON): from the one after `last_event_id`
        when given (the kept ones, then live ones), else from the next one analysed; `event: lost` where events
        were no longer kept, comments while quiet, and `event: end` when the stream ends."""
        record = await self._mine(entry, id)
        start = replay.start(last_event_id, int(record.get("last_event") or 0))
        release = self.followers.claim(entry.id)  # 429 past the key's (or this replica's) followers
        return followers.holding(self._events(id, public(id, record), start), release)

    async def _events(self, id: str, first: dict[str, Any], start: replay.Start) -> AsyncIterator[bytes]:
        quiet = 0
        position, gaps = start.after, start.unknown is None  # (after an unknown id, the first event is no gap)
        async with self.board.subscribe(KIND, id, start.after) as events:
            # the state as it was when the log was at `after`: with it, a client sees every event after that
            yield b"event: state\ndata: " + orjson.dumps(first) + b"\n\n"
            if start.unknown is not None:
                yield replay.lost(None, None, start.unknown, self.settings.stream_events_kept)
            async for event in events:
                if event is None:
                    quiet += 1
                    if quiet % KEEPALIVE_TICKS == 0:
                        yield b": keep-alive\n\n"
                    continue
                quiet = 0
                if gaps and event.id > position + 1:  # the log dropped these before they were read
                    yield replay.lost(position, event.id, None, self.settings.stream_events_kept)
                position, gaps = event.id, True
                yield b"id: %d\ndata: %b\n\n" % (event.id, event.data)
        yield b'event: end\ndata: {"id": "' + id.encode() + b'"}\n\n'

    async def _entry(self, key_id: str) -> KeyEntry | None:
        found = await self.services.store.get_key(key_id)
        return None if found is None or found.revoked else found

    async def _run(self, record: dict[str, str], lease: Lease) -> None:
        """Run one stream while this replica holds its lease (see gateway/live/stream.py)."""
        settings, board = self.settings, self.board
        entry = await self._entry(record["key"])
        if entry is None:
            await board.write(lease, {"state": "failed", "error": "The stream's API key was revoked."})
            return
        while True:
            try:
                info = await self.services.triton.model(record["model"])
                break
            except GatewayError as exc:
                await board.write(lease, {"error": exc.message[:300]})
                await asyncio.sleep(RETRY_S)
                if lease.lost or lease.stop:
                    return
        fields = orjson.loads(record["args"])
        if record.get("track"):  # (a record written before `track` was kept among the arguments)
            fields.setdefault("track", "true")
        args = parse_args(fields, info.imgsz)
        first, tracker = await asyncio.to_thread(resume.restore, lease.id, record, info, args)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(ready.set)

        def reopen() -> str:
            check = guard.check_source(record["source"], settings.url_allow_hosts, self.resolve)
            return asyncio.run_coroutine_threadsafe(check, loop).result(settings.stream_open_timeout_s).connect

        def check(url: str) -> Awaitable[guard.Checked]:
            return guard.check_source(url, settings.url_allow_hosts, self.resolve)

        timeout_s = max(settings.stream_open_timeout_s, settings.stream_read_timeout_s)
        relay = await self.relays.open(check, timeout_s)
        source = Source(
            reopen,
            wake,
            settings.stream_open_timeout_s,
            settings.stream_read_timeout_s,
            settings.stream_backoff_max_s,
            args.vid_stride,
            float(record.get("fps") or 0),
            settings.max_pixels,
            relay,
            first,
        )
        batch = None
        if record.get("webhook"):
            batch = Batch(self.deliveries, entry.id, record["webhook"], lease.id,
                          settings.webhook_batch_frames, settings.webhook_batch_s)  # fmt: skip
        saver = resume.Saver(board, lease, settings.stream_checkpoint_s, first, tracker)
        run = stream.Run(self.services, board, lease, record, entry, info, args, source, batch, tracker, saver)
        await board.write(lease, {"state": "connecting", "error": ""})
        source.start()
        try:
            await stream.loop(run, ready, lambda: self._entry(record["key"]))
            if lease.lost:  # given up (a shutdown: the write goes in) or taken (refused): the next owner goes on
                await saver.last()
        finally:
            source.stop()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(source.join, 1.0)
            await self.relays.drop(relay)
            if batch is not None:
                batch.tick()


def public(id: str, record: dict[str, str]) -> dict[str, Any]:
    """The stream resource (never the source's credentials)."""
    try:
        figures = orjson.loads(record.get("stats") or "{}")
    except orjson.JSONDecodeError:
        figures = {}
    return {
        "id": id,
        "state": record.get("state", ""),
        "source": record.get("shown", ""),
        "model": record.get("model", ""),
        "vid_stride": int(record.get("vid_stride") or 1),
        "fps": float(record["fps"]) if record.get("fps") else None,
        "track": bool(record.get("track")),
        "tracker": record.get("tracker") or None,
        "webhook": record.get("webhook_shown") or None,
        "created": float(record.get("created") or 0),
        "owner": record.get("owner") or None,
        "last_error": record.get("error") or None,
        "events": f"/v1/streams/{id}/events",
        "last_event": int(record.get("last_event") or 0),
        **{
            name: figures.get(name, 0)
            for name in (
                "input_fps",
                "processed_fps",
                "lag_ms",
                "frames_read",
                "frames_processed",
                "frames_dropped",
                "frames_rate_limited",
                "frames_failed",
                "reconnects",
                "width",
                "height",
            )
        },  # fmt: skip
    }
