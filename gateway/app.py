"""The Starlette application, wired: the routing table, the middleware and the lifespan that opens the services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.api import admin, routes, web
from gateway.errors import HANDLERS
from gateway.keys.store import open_store
from gateway.metrics import Metrics
from gateway.observability import RequestContext, configure_logging
from gateway.services import finished, open_services
from gateway.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    configure_logging()
    metrics = Metrics()
    store = open_store(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, metrics, store) as services:
            app.state.services = services
            yield

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
        middleware=[Middleware(RequestContext, finished=finished(metrics, store))],
        lifespan=lifespan,
    )
