"""The Starlette application, wired: the routing table, the middleware and the lifespan that opens the services."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from gateway.api import admin, jobs, live, models, routes, web
from gateway.api.failures import HANDLERS
from gateway.keys.store import open_store
from gateway.metrics import Metrics
from gateway.observability import RequestContext, configure_logging
from gateway.services import Services, finished, open_services
from gateway.settings import Settings
from gateway.work.board import Board, MemoryBoard
from gateway.work.signing import FileSecrets, RedisSecrets, Secrets
from gateway.work.webhooks import Deliveries


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    configure_logging()
    metrics = Metrics()
    store = open_store(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, metrics, store) as services, open_work(app, services):
            app.state.services = services
            yield

    table = [
        Route("/v1/predict/{model_id:path}", routes.predict, methods=["POST"]),
        Route("/api/models/{slug:path}/predict", routes.predict_platform, methods=["POST"]),
        Route("/", routes.predict_dedicated, methods=["POST"]),
        Route("/v1/models", routes.list_models, methods=["GET"]),
        Route("/v1/models/{model_id}", routes.get_model, methods=["GET"]),  # as PUT/DELETE: the same ids match
        *models.routes(),
        *admin.routes(),
        *live.routes(),
        *jobs.routes(),
        *web.routes(),
        Route("/openapi.json", routes.openapi_json, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
        # the Ultralytics dialects' other doors (gateway/dialects/): hub-sdk's login, dedicated endpoints, base paths
        Route("/v1/auth", routes.auth, methods=["POST"]),
        Route("/api/deployments/{owner}/{deployment}/predict", routes.predict_deployment, methods=["POST"]),
        Route("/predict", routes.predict_key_platform, methods=["POST"]),
        Route("/dedicated/{model_id}/predict", routes.predict_bound_platform, methods=["POST"]),
        Route("/dedicated/{model_id}", routes.predict_bound, methods=["POST"]),
        Route("/dialects/{dialect}", routes.predict_dedicated, methods=["POST"]),  # a base URL POSTed as is
        Mount("/dialects/{dialect}", routes=routes.dialect_routes()),
    ]
    return Starlette(
        routes=table,
        exception_handlers=HANDLERS,
        middleware=[Middleware(RequestContext, finished=finished(metrics, store))],
        lifespan=lifespan,
    )


@contextlib.asynccontextmanager
async def open_work(app: Starlette, services: Services) -> AsyncIterator[None]:
    """Leased work (live streams) and its webhooks: the board and secrets in Redis when the keys are,
    else in this process (gateway/work/board.py); this replica starts claiming at once and hands back at the end."""
    from gateway.jobs.service import Jobs
    from gateway.live.service import Streams

    settings = services.settings
    board: Board
    secrets: Secrets
    if settings.redis_url:
        from gateway.work.redis_board import RedisBoard

        board = RedisBoard(
            settings.redis_url, settings.redis_password, settings.redis_timeout_s, settings.stream_events_kept
        )
        secrets = RedisSecrets(settings.redis_url, settings.redis_password, settings.redis_timeout_s)
    else:
        board, secrets = MemoryBoard(events_kept=settings.stream_events_kept), FileSecrets(settings.keys_file)
    replica = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    deliveries = Deliveries(settings, secrets)
    streams = Streams(services, board, secrets, deliveries, replica)
    app.state.streams, app.state.secrets = streams, secrets
    app.state.jobs = video_jobs = Jobs(services, board, secrets, deliveries, replica)
    deliveries.start()
    streams.owner.start()
    video_jobs.start()
    try:
        yield
    finally:
        await video_jobs.close()
        await streams.close()
        await deliveries.close()
        await secrets.close()
        await board.close()
