"""What requests share, created in the app's lifespan (one per event loop), and how a route finds it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.budget import MemoryBudget
from gateway.metrics import Metrics
from gateway.ratelimit import KeySlots
from gateway.settings import Settings
from gateway.state import State as Store
from gateway.triton import Triton
from gateway.workers import Workers


@dataclass
class Services:
    """The gateway's long-lived parts, shared by every request (the lifespan creates and closes them)."""

    settings: Settings
    triton: Triton
    store: Store  # keys, rate limits and usage: the keys file or Redis (gateway/state.py)
    workers: Workers  # threads for decode, letterbox and post-processing
    metrics: Metrics
    budget: MemoryBudget
    key_slots: KeySlots  # each key's requests in progress in this process (GATEWAY_MAX_INFLIGHT_PER_KEY)
    inflight: int = 0
    video_workers: Workers | None = None  # threads for video decoding (GATEWAY_VIDEO_WORKERS); None: `workers`


def services_of(request: HTTPConnection) -> Services:
    """The services of the app serving `request` (set by the lifespan)."""
    services = request.app.state.services
    assert isinstance(services, Services)
    return services
