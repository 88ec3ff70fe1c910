"""Webhook deliveries: signed, retried with backoff, batched, and never in the way of inference.

`Deliveries.offer` only appends to this replica's bounded queue (GATEWAY_WEBHOOK_QUEUE; when full, the oldest
waiting delivery is dropped and counted): a stream's loop never waits on a receiver. WORKERS tasks send them, each
attempt within GATEWAY_WEBHOOK_TIMEOUT_S; an answer other than 2xx, or none, is retried after
GATEWAY_WEBHOOK_BACKOFF_S, doubled each time, GATEWAY_WEBHOOK_RETRIES times, with the same `webhook-id` (a receiver
drops duplicates by it). Every attempt goes through the URL guard again and connects to the address it checked.
Redirects are not followed. `Batch` gathers a stream's frames: one delivery every GATEWAY_WEBHOOK_BATCH_FRAMES
frames or GATEWAY_WEBHOOK_BATCH_S seconds. Deliveries waiting in a replica are lost with it (at most once per
replica).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets as random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from gateway.errors import GatewayError
from gateway.predict.fetch import Resolver, system_resolver
from gateway.settings import Settings
from gateway.work import guard
from gateway.work.signing import Secrets, headers

log = logging.getLogger("gateway")
WORKERS = 4  # deliveries in flight at once per replica


@dataclass
class Delivery:
    key_id: str
    url: str
    body: bytes
    message_id: str = field(default_factory=lambda: "msg_" + random.token_hex(12))
    attempt: int = 0


@dataclass
class Counts:
    delivered: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    dropped: int = 0


class Deliveries:
    """This replica's webhook queue and senders (see the module docstring)."""

    def __init__(self, settings: Settings, secrets: Secrets, resolve: Resolver = system_resolver) -> None:
        self.settings = settings
        self.secrets = secrets
        self.resolve = resolve
        self.counts = Counts()
        self._queue: collections.deque[Delivery] = collections.deque()
        self._waiting = asyncio.Event()
        self._retrying: set[asyncio.TimerHandle] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"webhooks-{i}") for i in range(WORKERS)]

    async def close(self) -> None:
        for handle in self._retrying:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._retrying)

    def offer(self, key_id: str, url: str, payload: dict[str, Any]) -> None:
        """Queue one delivery of `payload` (JSON) to `url`, signed with the key's secret; never waits."""
        self._put(Delivery(key_id, url, orjson.dumps(payload)))

    def _put(self, delivery: Delivery) -> None:
        if self.pending >= self.settings.webhook_queue and self._queue:
            self._queue.popleft()
            self.counts.dropped += 1
        self._queue.append(delivery)
        self._waiting.set()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._waiting.clear()
                await self._waiting.wait()
            delivery = self._queue.popleft()
            try:
                ok = await self._send(delivery)
            except Exception as exc:  # never let one delivery stop a sender
                log.warning("webhook %s: %s", delivery.message_id, exc)
                ok = False
            if ok:
                self.counts.delivered += 1
                continue
            self.counts.failed_attempts += 1
            if delivery.attempt >= self.settings.webhook_retries:
                self.counts.given_up += 1
                log.warning("webhook %s to %s given up after %d attempts", delivery.message_id,
                            delivery.url[:100], delivery.attempt + 1)  # fmt: skip
                continue
            delay = self.settings.webhook_backoff_s * 2**delivery.attempt
            delivery.attempt += 1
            self._later(delay, delivery)

    def _later(self, delay: float, delivery: Delivery) -> None:
        handle: asyncio.TimerHandle | None = None

        def again() -> None:
            if handle is not None:
                self._retrying.discard(handle)
            self._put(delivery)

        handle = asyncio.get_running_loop().call_later(delay, again)
        self._retrying.add(handle)

    async def _send(self, delivery: Delivery) -> bool:
        secret = await self.secrets.get(delivery.key_id)
        if secret is None:
            log.warning("webhook %s: key %s has no webhook secret", delivery.message_id, delivery.key_id)
            return True  # nothing to sign with: a retry would not help
        try:
            checked = await guard.check_webhook(delivery.url, self.settings.url_allow_hosts, self.resolve)
        except GatewayError as exc:
            log.warning("webhook %s refused: %s", delivery.message_id, exc.message)
            return False
        url = httpx.URL(delivery.url)
        address = (await self.resolve(checked.host, url.port or (443 if url.scheme == "https" else 80)))[0]
        sent = {
            **headers(secret, delivery.message_id, delivery.body),
            "content-type": "application/json",
            "host": url.netloc.decode("ascii", "replace"),
            "user-agent": "yolo-triton-gateway",
        }
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request = self._client.build_request(
            "POST",
            url.copy_with(host=address.split("%", 1)[0]),
            content=delivery.body,
            headers=sent,
            extensions=extensions,
            timeout=self.settings.webhook_timeout_s,
        )
        with contextlib.suppress(httpx.HTTPError):
            response = await self._client.send(request)
            await response.aclose()
            return 200 <= response.status_code < 300
        return False


class Batch:
    """One stream's frames on their way to its webhook: handed over every `frames` frames or `seconds` seconds."""

    def __init__(self, deliveries: Deliveries, key_id: str, url: str, stream_id: str, frames: int, seconds: float):
        self.deliveries, self.key_id, self.url, self.stream_id = deliveries, key_id, url, stream_id
        self.frames, self.seconds = frames, seconds
        self._events: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def add(self, event: dict[str, Any]) -> None:
        if not self._events:
            self._since = time.monotonic()
        self._events.append(event)
        self.tick()

    def tick(self) -> None:
        """Hand the batch over when it is full or old enough (called with every frame and at least every second)."""
        if self._events and (
            len(self._events) >= self.frames or time.monotonic() - self._since >= self.seconds
        ):  # fmt: skip
            payload = {"type": "stream.frames", "stream": self.stream_id, "frames": self._events}
            self.deliveries.offer(self.key_id, self.url, payload)
            self._events = []
