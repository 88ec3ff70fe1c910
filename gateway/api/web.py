"""The try-it page at `/`: plain HTML, CSS and JavaScript shipped in the package (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def routes() -> list[BaseRoute]:
    return [Route("/", index, methods=["GET"]), Mount("/static", app=StaticFiles(directory=STATIC), name="static")]
