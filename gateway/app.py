"""The Starlette application: its lifespan (which creates the services requests share), and the routing table."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway import admin, routes, video, web
from gateway.budget import MemoryBudget, default_budget, memory_limit
from gateway.errors import HANDLERS
from gateway.metrics import Metrics
from gateway.modelcard import UNTRAINED_WARNING
from gateway.observability import RequestContext, configure_logging
from gateway.ratelimit import KeySlots
from gateway.settings import Settings
from gateway.services import Services
from gateway.state import open_state
from gateway.triton import Triton
from gateway.workers import Workers

log = logging.getLogger("gateway")
VIDEO_NICE = (
    10  # the video threads' niceness above the process's (a tenth of an image thread's CPU share when both run)
)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    configure_logging()
    meters = Metrics()
    store = open_state(settings)

    def record_usage(context: dict[str, Any], status: int, seconds: float) -> None:
        model = context.get("model", "")  # as in /metrics: only models Triton served, so the counters stay bounded
        store.record(
            context["key_id"], model if model in meters.models else "other", context.get("images", 0), status, seconds
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        triton = Triton(
            settings.triton_url,
            settings.triton_timeout_s,
            settings.model_cache_s,
            settings.triton_shm_bytes,
            settings.triton_http_url,
            lambda transport: meters.child(meters.triton_requests, transport).inc(),
        )
        if (pool := triton.shm) is not None:
            meters.shared_memory.set_function(lambda: pool.used_bytes)
        threads = Workers(settings.workers)
        # lower CPU priority: a decoding video takes the CPU the images leave, not the other way round
        video_threads = Workers(settings.video_workers, nice=VIDEO_NICE, name="video")
        if removed := video.sweep():
            log.warning("removed %d video file(s) a previous gateway process left in the temporary folder", removed)
        budget = MemoryBudget(
            settings.decode_budget_bytes or default_budget(memory_limit()), settings.decode_budget_wait_s
        )
        log.info("memory budget for images in flight: %d MiB", budget.capacity // 2**20)
        meters.budget_capacity.set(budget.capacity)
        meters.budget_used.set_function(lambda: budget.used)
        slots = KeySlots(settings.per_key_inflight)
        app.state.services = Services(
            settings, triton, store, threads, meters, budget, slots, video_workers=video_threads
        )
        await store.start()
        try:
            for model in await triton.ready_models():
                if model.untrained:
                    log.warning("model %s: %s", model.name, UNTRAINED_WARNING)
        except Exception as exc:  # Triton may still be starting; /readyz reports it
            log.warning("inference server not reachable at start-up (%s): %s", settings.triton_url, exc)
        yield
        await store.close()
        await triton.close()
        video_threads.close()
        threads.close()

    table = [
        Route("/v1/predict/{model_id:path}", routes.predict, methods=["POST"]),
        Route("/api/models/{slug:path}/predict", routes.predict_platform, methods=["POST"]),
        Route("/", routes.predict_dedicated, methods=["POST"]),
        Route("/v1/models", routes.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", routes.get_model, methods=["GET"]),
        *admin.routes(),
        *web.routes(),
        Route("/openapi.json", routes.openapi_json, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
    ]
    return Starlette(
        routes=table,
        exception_handlers=HANDLERS,
        middleware=[Middleware(RequestContext, metrics=meters, usage=record_usage)],
        lifespan=lifespan,
    )
