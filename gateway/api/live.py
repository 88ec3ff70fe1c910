"""The routes of leased work: live streams and the key's webhook secret.

    POST   /v1/streams              JSON {"source", "model", "fps"|"vid_stride", "track", "webhook", ...} -> 201
    GET    /v1/streams              the key's streams
    GET    /v1/streams/{id}         state, input and processed fps, lag, frames dropped, reconnects, last error
    GET    /v1/streams/{id}/events  Server-Sent Events: one per analysed frame (a video frame's JSON), numbered;
                                    `Last-Event-ID` (or ?last_event_id=) replays the kept ones after it
    DELETE /v1/streams/{id}
    POST   /v1/webhooks/secret      a new signing secret for the key's webhooks (shown once)

Each route checks the key first (401/403 like a prediction); a key sees only its own streams.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.api.forms import key_entry
from gateway.errors import envelope, json_response, ok_response
from gateway.live.service import Streams
from gateway.streams import read_capped
from gateway.work.signing import Secrets

MAX_BODY = 8192
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _streams(request: Request) -> Streams:
    streams = request.app.state.streams
    assert isinstance(streams, Streams)
    return streams


async def create_stream(request: Request) -> Response:
    entry = await key_entry(request)
    too_large = f"The body is over {MAX_BODY} bytes; a stream needs only its source, model and a few fields."
    body = await read_capped(request.stream(), MAX_BODY, too_large, request.headers.get("content-length"))
    resource, secret = await _streams(request).create(entry, body)
    message = "Stream created; follow its results at " + resource["events"] + "."
    if secret is not None:
        resource["webhook_secret"] = secret
        message += " Keep the webhook secret: it is shown only this once (POST /v1/webhooks/secret makes a new one)."
    headers = {"Location": f"/v1/streams/{resource['id']}"}
    return json_response(envelope(message, resource), 201, headers)


async def list_streams(request: Request) -> Response:
    found = await _streams(request).list(await key_entry(request))
    return ok_response(found, f"{len(found)} stream(s).")


async def get_stream(request: Request) -> Response:
    found = await _streams(request).get(await key_entry(request), request.path_params["stream_id"])
    return ok_response(found, f"Stream {found['state']}.")


async def delete_stream(request: Request) -> Response:
    found = await _streams(request).delete(await key_entry(request), request.path_params["stream_id"])
    return ok_response(found, "Stream deleted; its owner stops within a second.")


async def stream_events(request: Request) -> Response:
    entry = await key_entry(request)
    # the header first: a browser's EventSource sends it on each reconnect, over the query of the first request
    asked = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    events = await _streams(request).follow(entry, request.path_params["stream_id"], asked)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def rotate_secret(request: Request) -> Response:
    entry = await key_entry(request)
    secrets = request.app.state.secrets
    secret = await secrets.rotate(entry.id) if isinstance(secrets, Secrets) else ""
    return ok_response(
        {"key_id": entry.id, "webhook_secret": secret},
        "New webhook secret: keep it, it is shown only this once; deliveries are signed with it from now on.",
        201,
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/streams", create_stream, methods=["POST"]),
        Route("/v1/streams", list_streams, methods=["GET"]),
        Route("/v1/streams/{stream_id}", get_stream, methods=["GET"]),
        Route("/v1/streams/{stream_id}", delete_stream, methods=["DELETE"]),
        Route("/v1/streams/{stream_id}/events", stream_events, methods=["GET"]),
        Route("/v1/webhooks/secret", rotate_secret, methods=["POST"]),
    ]
