"""This replica's side of leased work of one kind: claim, renew, run, hand back.

Every SCAN_S the owner loop renews the leases it holds (when a third of the lease time has passed since the last
renewal) and claims active records nobody holds while it has room; each claimed record runs as a task,
`run(record, lease)`. A lease that can't be renewed (it lapsed, another replica took it, the record was removed, or
the shared state is unreachable) is marked `lost`, which the run checks between frames and ends on; a record that
asks for a stop sets `lease.stop`. When the gateway shuts down, runs are stopped and their leases released at once,
so another replica takes over within a scan rather than after the lease time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

from gateway.predict.fetch import Resolver, system_resolver
from gateway.services import Services
from gateway.settings import Settings
from gateway.work.board import Board, Lease
from gateway.work.signing import Secrets
from gateway.work.webhooks import Deliveries

log = logging.getLogger("gateway")
SCAN_S = 0.5  # how often active records without an owner are looked for (takeover takes the lease time plus this)
STOP_WAIT_S = 5.0  # at shutdown, how long runs get to end on their own before they are cancelled

Run = Callable[[dict[str, str], Lease], Awaitable[None]]


class Owner:
    """Claims and runs records of `kind` (see the module docstring); at most `capacity` at once."""

    def __init__(self, board: Board, kind: str, owner_id: str, capacity: int, lease_s: float, run: Run) -> None:
        self.board, self.kind, self.owner_id = board, kind, owner_id
        self.capacity, self.lease_s = capacity, lease_s
        self._run = run
        self._runs: dict[str, tuple[Lease, asyncio.Task[None]]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._renewed = 0.0
        self._lock = asyncio.Lock()

    @property
    def running(self) -> int:
        return len(self._runs)

    def owns(self, id: str) -> bool:
        return id in self._runs

    def start(self) -> None:
        self._loop = asyncio.create_task(self._scan_forever(), name=f"owner-{self.kind}")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        runs = list(self._runs.values())
        for lease, _ in runs:
            lease.lost = True  # the runs' own signal to end (a cancelled gRPC call is no clean stop)
        tasks = [task for _, task in runs]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for lease, _ in runs:
            with contextlib.suppress(Exception):
                await self.board.release(lease)

    async def claim(self, id: str) -> bool:
        """Try to take `id` now (a record this replica just created); False when full or someone holds it."""
        async with self._lock:
            if self.running >= self.capacity or id in self._runs:
                return False
            lease = await self.board.acquire(self.kind, id, self.owner_id, self.lease_s)
            if lease is None:
                return False
            record = await self.board.read(self.kind, id)
            if record is None:
                await self.board.release(lease)
                return False
            task = asyncio.create_task(self._guarded(record, lease), name=f"{self.kind}-{id}")
            self._runs[id] = (lease, task)
            return True

    async def _guarded(self, record: dict[str, str], lease: Lease) -> None:
        try:
            await self._run(record, lease)
        except Exception:
            log.exception("%s %s failed", self.kind, lease.id)
        finally:
            self._runs.pop(lease.id, None)
            if not lease.lost:
                with contextlib.suppress(Exception):
                    await self.board.release(lease)

    async def _scan_forever(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception as exc:  # the shared state unreachable: leases lapse, runs end; try again
                log.warning("%s owner loop: %s", self.kind, exc)
                for lease, _ in list(self._runs.values()):
                    if time.monotonic() - self._renewed > self.lease_s:
                        lease.lost = True
            await asyncio.sleep(SCAN_S)

    async def scan(self) -> None:
        """Renew what is held (when due), then claim what nobody holds, while there is room."""
        if time.monotonic() - self._renewed >= self.lease_s / 3:
            for lease, _ in list(self._runs.values()):
                if not await self.board.renew(lease, self.lease_s):
                    log.warning("%s %s: lease lost; its run ends here", self.kind, lease.id)
            self._renewed = time.monotonic()
        if self.running >= self.capacity:
            return
        for id in await self.board.active(self.kind):
            if self.running >= self.capacity:
                break
            if id not in self._runs:
                await self.claim(id)


class Work:
    """What every kind of leased work (live streams, video jobs) runs with on this replica: the app's services, the
    shared board, the keys' webhook secrets and deliveries, the resolver the URL guard uses, and an `Owner` of its
    `kind` that claims up to `capacity(settings)` records at once (leases of GATEWAY_STREAM_LEASE_S) and runs each
    with `_run`. A kind adds its own state in `_setup`."""

    kind: ClassVar[str]

    def __init__(
        self,
        services: Services,
        board: Board,
        secrets_: Secrets,
        deliveries: Deliveries,
        replica: str,
        resolve: Resolver = system_resolver,
    ) -> None:
        self.services, self.board, self.secrets, self.deliveries = services, board, secrets_, deliveries
        self.settings = services.settings
        self.resolve = resolve
        capacity = self.capacity(self.settings)
        self.owner = Owner(board, self.kind, replica, capacity, self.settings.stream_lease_s, self._run)
        self._setup()

    @staticmethod
    def capacity(settings: Settings) -> int:
        """How many records of this kind one replica runs at once."""
        raise NotImplementedError

    def _setup(self) -> None:
        """The kind's own state, made once the common parts are."""

    async def _run(self, record: dict[str, str], lease: Lease) -> None:
        raise NotImplementedError
