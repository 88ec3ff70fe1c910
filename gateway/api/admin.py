"""The admin API: create, list and revoke keys and read their usage (keys with the `admin` scope only).

    POST   /v1/keys               {"name", "models"?, "rate"?, "admin"?, "dialect"?} -> 201, the key (shown once)
    GET    /v1/keys               every key, never a secret
    DELETE /v1/keys/{id}          revoke (every replica refuses it within a second)
    GET    /v1/keys/{id}/usage    per day and model: requests, images, errors by status, latency p50/p95

Works the same on either state store (gateway/keys/store.py). A key creates keys only within its own scope: no model it
may not use, no rate above its own (403 otherwise), so a narrowly scoped admin key cannot mint a wider one.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.api.forms import api_key
from gateway.arguments import DIALECT_NAMES
from gateway.errors import BadRequest, Forbidden, NotFound, ok_response
from gateway.keys.auth import KEY_ID, KeyDraft, KeyEntry
from gateway.keys.ratelimit import MAX_RATE, MIN_RATE, check_rate
from gateway.keys.store import Store
from gateway.observability import record_of
from gateway.services import services_of
from gateway.streams import json_object, read_capped

MAX_BODY = 4096
MAX_MODELS = 64
MAX_DAYS = 400  # usage is kept about 13 months
DAYS = re.compile(r"[0-9]{1,3}")  # ASCII digits only: `str.isdigit` also takes '²', which int() refuses


async def _admin(request: Request) -> tuple[Store, KeyEntry]:
    """The store and the caller's key, which must have the admin scope."""
    store = services_of(request).store
    key, header = api_key(request)
    entry = await store.authenticate(key, None, header)
    record_of(request).key_id = entry.id
    if not entry.admin:
        raise Forbidden("This API key may not manage keys: it needs the admin scope (`make key ADMIN=1`).")
    return store, entry


def _public(entry: KeyEntry) -> dict[str, Any]:
    return entry.public()


def _key_id(request: Request) -> str:
    key_id = str(request.path_params["key_id"])
    if not KEY_ID.fullmatch(key_id):
        raise NotFound(f"No key with id '{key_id[:32]}'. GET /v1/keys lists the keys.")
    return key_id


def parse_new_key(raw: bytes) -> KeyDraft:
    """The new key a POST /v1/keys body asks for, or BadRequest naming the field."""
    hint = 'Send a JSON object like {"name": "alice", "models": ["yolov8n"], "rate": 10, "admin": false}.'
    body = json_object(raw, hint)
    unknown = sorted(set(body) - {"name", "models", "rate", "admin", "dialect"})
    if unknown:
        raise BadRequest(f"Unknown field '{str(unknown[0])[:32]}'. {hint}")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 64 or not name.isprintable():
        raise BadRequest(
            "'name' must be a string of 1 to 64 printable characters (who or what the key is for; "
            "no control characters)."
        )
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list)
        or not 0 < len(models) <= MAX_MODELS
        or not all(isinstance(m, str) and 0 < len(m) <= 64 and m.isprintable() for m in models)
    ):
        raise BadRequest(f"'models' must be null (every model) or a list of 1 to {MAX_MODELS} model ids.")
    rate = body.get("rate")
    if rate is not None:
        try:
            rate = check_rate(rate)
        except ValueError:
            raise BadRequest(
                f"'rate' must be null (unlimited) or images per second from {MIN_RATE:g} to {MAX_RATE:g}, e.g. 10."
            ) from None
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise BadRequest("'admin' must be true or false.")
    dialect = body.get("dialect")
    if dialect is not None and dialect not in DIALECT_NAMES:
        raise BadRequest(
            f"'dialect' must be null (each route's own) or one of {', '.join(DIALECT_NAMES)} (README, Dialects)."
        )
    return KeyDraft(name.strip(), tuple(models) if models is not None else None, rate, admin, dialect)


def check_within(caller: KeyEntry, draft: KeyDraft) -> None:
    """Forbidden unless the new key is no wider than the caller's own key (its models and its rate)."""
    models, rate = draft.models, draft.rate
    if caller.models is not None:
        outside = sorted(set(models or ()) - set(caller.models)) if models is not None else ["every model"]
        if outside:
            raise Forbidden(
                f"This API key may only use {', '.join(caller.models) or 'no model'}, so the keys it creates may not "
                f"use {outside[0][:64]}: set 'models' to some of those."
            )
    if caller.rate is not None and (rate is None or rate > caller.rate):
        raise Forbidden(
            f"This API key is limited to {caller.rate:g} images per second, so the keys it creates must set 'rate' "
            "to at most that."
        )


async def create(request: Request) -> Response:
    store, caller = await _admin(request)
    too_large = f"The body is over {MAX_BODY} bytes; a key needs only a name and a few fields."
    raw = await read_capped(request.stream(), MAX_BODY, too_large, request.headers.get("content-length"))
    draft = parse_new_key(raw)
    check_within(caller, draft)
    entry, key = await store.create_key(draft)
    return ok_response({**_public(entry), "key": key}, "Key created. Keep it safe: it is shown only this once.", 201)


async def list_keys(request: Request) -> Response:
    store, _ = await _admin(request)
    entries = await store.list_keys()
    return ok_response([_public(e) for e in entries], f"{len(entries)} key(s).")


async def revoke(request: Request) -> Response:
    store, _ = await _admin(request)
    key_id = _key_id(request)
    entry = await store.revoke_key(key_id)
    if entry is None:
        raise NotFound(f"No key with id '{key_id}'. GET /v1/keys lists the keys.")
    return ok_response(_public(entry), f"Key {key_id} revoked; every gateway refuses it within a second.")


async def usage(request: Request) -> Response:
    store, _ = await _admin(request)
    key_id = _key_id(request)
    days_text = request.query_params.get("days", "7")
    if not DAYS.fullmatch(days_text) or not 1 <= int(days_text) <= MAX_DAYS:
        raise BadRequest(f"'days' must be a whole number from 1 to {MAX_DAYS} in ASCII digits (default 7).")
    days = int(days_text)
    if await store.get_key(key_id) is None:
        raise NotFound(f"No key with id '{key_id}'. GET /v1/keys lists the keys.")
    rows = await store.usage(key_id, days)
    return ok_response({"key_id": key_id, "days": days, "usage": rows}, f"Usage of key {key_id}.")


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/keys", create, methods=["POST"]),
        Route("/v1/keys", list_keys, methods=["GET"]),
        Route("/v1/keys/{key_id}", revoke, methods=["DELETE"]),
        Route("/v1/keys/{key_id}/usage", usage, methods=["GET"]),
    ]
