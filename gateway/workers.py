"""The worker threads that decode, letterbox and post-process off the event loop: GATEWAY_WORKERS of them.

A hop to a thread and back is on every request's path twice, so it is kept lean: calls go through one
`queue.SimpleQueue` (C) to plain threads, which hand the result back with one `call_soon_threadsafe`. anyio's
`to_thread.run_sync` (a capacity limiter and cancel scopes around each call, each asking for the running task, a
`getpid()` syscall on Python 3.11) and `loop.run_in_executor` (a concurrent future chained to an asyncio one) cost
more event-loop CPU per hop (bench/RESULTS.md, "Cost per image"). What anyio's guarantee gave is kept: a caller
that is cancelled still waits for its call to finish before it leaves, so whatever the call uses (the memory
reserved for a decoded image, a shared-memory slot) is released only after the thread is done with it. A call that
no thread has started yet is dropped instead: its caller leaves at once (a client that left a queue of videos).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Call:
    __slots__ = ("loop", "future", "fn", "args", "finished", "waiter", "started", "dropped")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.fn = fn
        self.args = args
        self.finished = False
        self.waiter: asyncio.Future[None] | None = None  # made when the caller was cancelled and waits for the end
        self.started = False  # a thread took it (under Workers.lock)
        self.dropped = False  # its caller was cancelled before that: no thread will run it

    def deliver(self, result: Any, error: BaseException | None) -> None:
        """In the event loop: hand the outcome to the caller (unless it was cancelled) and wake a waiting one."""
        self.finished = True
        if not self.future.done():
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Workers:
    def __init__(self, threads: int, nice: int = 0, name: str = "worker") -> None:
        """`threads` threads, at `nice` more than the process's CPU niceness (Linux: per thread)."""
        self.nice = nice
        self.queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # orders a thread taking a call against its caller dropping it
        self.threads = [
            threading.Thread(target=self._work, name=f"gateway-{name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread (queued while all are busy); its result, or its exception re-raised."""
        call = _Call(asyncio.get_running_loop(), fn, args)
        self.queue.put(call)
        try:
            result: T = await call.future
            return result
        except asyncio.CancelledError:
            with self.lock:
                call.dropped = not call.started
            while not call.dropped and not call.finished:  # a call that runs cannot be stopped: wait for its end
                call.waiter = call.waiter or call.loop.create_future()
                try:
                    await call.waiter
                except asyncio.CancelledError:
                    call.waiter = None
            raise

    def close(self) -> None:
        """Stop the threads once the calls already queued are done."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()

    def _work(self) -> None:
        if self.nice:
            try:  # raising one's own niceness needs no privilege
                os.setpriority(
                    os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.nice
                )
            except OSError:
                pass
        while (call := self.queue.get()) is not None:
            with self.lock:
                call.started = not call.dropped
            if call.dropped:
                continue
            try:
                result, error = call.fn(*call.args), None
            except BaseException as exc:  # handed to the caller, who re-raises it
                result, error = None, exc
            try:
                call.loop.call_soon_threadsafe(call.deliver, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del call, result, error
