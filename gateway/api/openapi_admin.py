"""The OpenAPI description of the admin API (gateway/api/admin.py): keys with the `admin` scope create, list and
revoke keys and read their usage. Part of /openapi.json (openapi.py adds these paths)."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_schemas import ERROR
from gateway.arguments import DIALECT_NAMES
from gateway.keys.ratelimit import MAX_RATE, MIN_RATE


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_KEY = {
    "type": "object",
    "required": ["id", "name", "created", "models", "rate", "revoked", "admin"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "created": {"type": "string"},
        "models": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "rate": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "revoked": {"type": "boolean"},
        "admin": {"type": "boolean"},
        "last_used": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "dialect": {"anyOf": [{"enum": list(DIALECT_NAMES)}, {"type": "null"}]},
        "key": {"type": "string", "description": "The key itself: only in the create response, shown once"},
    },
}
_USAGE_ROW = {
    "type": "object",
    "required": ["day", "model", "requests", "images", "errors", "latency_ms"],
    "properties": {
        "day": {"type": "string"},
        "model": {"type": "string"},
        "requests": {"type": "integer", "minimum": 0},
        "images": {"type": "integer", "minimum": 0},
        "errors": {"type": "object", "additionalProperties": {"type": "integer"}},
        "latency_ms": {"type": "object"},
    },
}
_NEW_KEY = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "models": {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "null"}]},
        "rate": {"anyOf": [{"type": "number", "minimum": MIN_RATE, "maximum": MAX_RATE}, {"type": "null"}]},
        "admin": {"type": "boolean", "default": False},
        "dialect": {
            "anyOf": [{"enum": list(DIALECT_NAMES)}, {"type": "null"}],
            "description": "The dialect its requests are answered in where the route can't tell (README, Dialects)",
        },
    },
}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN_ERRORS = {
    "400": _json(ERROR, "Bad body or argument"),
    "401": _json(ERROR, "Missing, invalid or revoked API key"),
    "403": _json(ERROR, "The key has no admin scope, or the new key would be wider than the key's own scope"),
    "503": _json(ERROR, "The key store (Redis) is unreachable"),
}
_ADMIN: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json({"type": "object", "required": ["success", "data"], "properties": {"data": schema}}, description)


ADMIN_PATHS: dict[str, Any] = {}
ADMIN_PATHS["/v1/keys"] = {
    "post": {
        "summary": "Create an API key (admin); the key is in the answer, once",
        "security": _ADMIN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _NEW_KEY}}},
        "responses": {"201": _ok(_KEY, "The new key"), "413": _json(ERROR, "Body over 4 KiB"), **_ADMIN_ERRORS},
    },
    "get": {
        "summary": "List API keys (admin); never a secret",
        "security": _ADMIN,
        "responses": {"200": _ok({"type": "array", "items": _KEY}, "Every key"), **_ADMIN_ERRORS},
    },
}
ADMIN_PATHS["/v1/keys/{key_id}"] = {
    "delete": {
        "summary": "Revoke an API key (admin): every gateway refuses it within a second",
        "security": _ADMIN,
        "parameters": [_KEY_ID],
        "responses": {"200": _ok(_KEY, "The revoked key"), "404": _json(ERROR, "No such key"), **_ADMIN_ERRORS},
    },
}
ADMIN_PATHS["/v1/keys/{key_id}/usage"] = {
    "get": {
        "summary": "A key's usage per day and model (admin): requests, images, errors by status, latency p50/p95",
        "security": _ADMIN,
        "parameters": [
            _KEY_ID,
            {
                "name": "days",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 400, "default": 7},
            },
        ],
        "responses": {
            "200": _ok({"type": "object", "properties": {"usage": {"type": "array", "items": _USAGE_ROW}}}, "Usage"),
            "404": _json(ERROR, "No such key"),
            **_ADMIN_ERRORS,
        },
    },
}
