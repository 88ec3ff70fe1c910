"""The gateway's HTTP connections under uvicorn: its httptools protocol, with a shutdown that drops nothing accepted.

On SIGTERM uvicorn stops accepting, lets the requests in flight finish (up to `--timeout-graceful-shutdown`), and
closes every other connection at once: a kept-alive connection between two requests, and a connection it accepted
whose request it has not read yet. A client that had just sent its request on one of those sees the connection
closed without an answer, and clients do not retry a POST. Here such a connection stays open for DRAIN_S more: a
request that arrives in that time is answered (with `Connection: close`), and the connection is closed once idle.
Connections the kernel had queued but uvicorn had not accepted yet are still refused: in Kubernetes the gateway's
`preStop` pause keeps new connections away by then (deploy/helm, `gateway.shutdown`).

uvicorn uses it with `--http gateway.server:DrainingProtocol` (the image's entrypoint, `make serve`, the tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long, after SIGTERM, an idle connection may still bring a request: one sent just before the signal arrives in
# well under this even on a busy machine. Shutdown waits for it only while such connections are open, and within
# uvicorn's graceful timeout (20 s in the image and the chart).
DRAIN_S = 2.0


class DrainingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; at shutdown an idle connection is closed after DRAIN_S instead of at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self.drain_timer: asyncio.TimerHandle | None = None

    def shutdown(self) -> None:
        """Called by uvicorn once it stopped accepting: answer what is in flight or arrives within DRAIN_S; close."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # in flight: answered, then closed (uvicorn's own behaviour)
            return
        self.draining = True
        self.drain_timer = self.loop.call_later(DRAIN_S, self._close_if_idle)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with `Connection: close`, then the connection closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        super().connection_lost(exc)

    def _close_if_idle(self) -> None:
        """DRAIN_S after shutdown: close unless a request is being answered (that one closes the connection itself);
        a request still only partly received by now is not waited for."""
        if self.cycle is None or self.cycle.response_complete:
            if not self.transport.is_closing():
                self.transport.close()
