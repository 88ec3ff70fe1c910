"""The admin API: create, list and revoke keys and read their usage (keys with the `admin` scope only).

    POST   /v1/keys               {"name", "models"?, "rate"?, "admin"?} -> 201, the key itself (shown once)
    GET    /v1/keys               every key, never a secret
    DELETE /v1/keys/{id}          revoke (every replica refuses it within a second)
    GET    /v1/keys/{id}/usage    per day and model: requests, images, errors by status, latency p50/p95

Works the same on either state store (gateway/state.py).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth import KeyEntry
from gateway.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from gateway.forms import api_key
from gateway.state import State

MAX_BODY = 4096
MAX_MODELS = 64


def _store(request: Request) -> State:
    store: State = request.app.state.gateway.store
    return store


async def _admin(request: Request) -> State:
    store = _store(request)
    key, header = api_key(request)
    entry = await store.authenticate(key, None, header)
    request.scope.setdefault("state", {}).setdefault("context", {})["key_id"] = entry.id
    if not entry.admin:
        raise Forbidden("This API key may not manage keys: it needs the admin scope (`make key ADMIN=1`).")
    return store


def _ok(data: Any, message: str, status: int = 200) -> Response:
    body = orjson.dumps({"success": True, "message": message, "data": data})
    return Response(body, status_code=status, media_type="application/json")


def _public(entry: KeyEntry) -> dict[str, Any]:
    return entry.public()


def _key_id(request: Request) -> str:
    key_id = str(request.path_params["key_id"])
    if not (0 < len(key_id) <= 32 and key_id.isalnum() and key_id.isascii()):
        raise NotFound(f"No key with id '{key_id[:32]}'. GET /v1/keys lists the keys.")
    return key_id


def parse_new_key(raw: bytes) -> tuple[str, list[str] | None, float | None, bool]:
    """(name, models, rate, admin) from a POST /v1/keys body, or BadRequest naming the field."""
    hint = 'Send a JSON object like {"name": "alice", "models": ["yolov8n"], "rate": 10, "admin": false}.'
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(f"The body is not valid JSON. {hint}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The body must be a JSON object. {hint}")
    unknown = sorted(set(body) - {"name", "models", "rate", "admin"})
    if unknown:
        raise BadRequest(f"Unknown field '{str(unknown[0])[:32]}'. {hint}")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 64:
        raise BadRequest("'name' must be a string of 1 to 64 characters (who or what the key is for).")
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list)
        or not 0 < len(models) <= MAX_MODELS
        or not all(isinstance(m, str) and 0 < len(m) <= 64 for m in models)
    ):
        raise BadRequest(f"'models' must be null (every model) or a list of 1 to {MAX_MODELS} model ids.")
    rate = body.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or not 0 < rate <= 1e6
    ):
        raise BadRequest("'rate' must be null (unlimited) or images per second, above 0 and at most 1e6, e.g. 10.")
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise BadRequest("'admin' must be true or false.")
    return name.strip(), models, float(rate) if rate is not None else None, admin


async def create(request: Request) -> Response:
    store = await _admin(request)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"The body is over {MAX_BODY} bytes; a key needs only a name and a few fields.")
    name, models, rate, admin = parse_new_key(raw)
    entry, key = await store.create_key(name, models, rate, admin)
    return _ok({**_public(entry), "key": key}, "Key created. Keep it safe: it is shown only this once.", 201)


async def list_keys(request: Request) -> Response:
    store = await _admin(request)
    entries = await store.list_keys()
    return _ok([_public(e) for e in entries], f"{len(entries)} key(s).")


async def revoke(request: Request) -> Response:
    store = await _admin(request)
    key_id = _key_id(request)
    entry = await store.revoke_key(key_id)
    if entry is None:
        raise NotFound(f"No key with id '{key_id}'. GET /v1/keys lists the keys.")
    return _ok(_public(entry), f"Key {key_id} revoked; every gateway refuses it within a second.")


async def usage(request: Request) -> Response:
    store = await _admin(request)
    key_id = _key_id(request)
    days_text = request.query_params.get("days", "7")
    if not days_text.isdigit() or not 1 <= int(days_text) <= 400:
        raise BadRequest("'days' must be a whole number from 1 to 400 (default 7).")
    if await store.get_key(key_id) is None:
        raise NotFound(f"No key with id '{key_id}'. GET /v1/keys lists the keys.")
    rows = await store.usage(key_id, int(days_text))
    return _ok({"key_id": key_id, "days": int(days_text), "usage": rows}, f"Usage of key {key_id}.")


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/keys", create, methods=["POST"]),
        Route("/v1/keys", list_keys, methods=["GET"]),
        Route("/v1/keys/{key_id}", revoke, methods=["DELETE"]),
        Route("/v1/keys/{key_id}/usage", usage, methods=["GET"]),
    ]
