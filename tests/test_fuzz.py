"""Schemathesis against the real gateway from its own OpenAPI description: no 5xx, every response as documented."""

from __future__ import annotations

import zlib
from collections import Counter

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.keys.auth import KeyDraft, create_key
from gateway.api.openapi import SPEC
from tests.conftest import MODELS, Gateway

schema = schemathesis.openapi.from_dict(SPEC)
CALLS: Counter[int] = Counter()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_served_openapi_is_the_spec(gateway: Gateway) -> None:
    assert requests.get(f"{gateway.url}/openapi.json", timeout=5).json() == SPEC


@schema.parametrize()
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_api(case: schemathesis.Case, gateway: Gateway) -> None:
    _call(case, gateway)


def _call(case: schemathesis.Case, gateway: Gateway) -> None:
    # Half the cases aim at real models with a valid key, so generated arguments and bodies reach the decoder.
    if "model_id" in (case.path_parameters or {}) and zlib.crc32(str(case.query).encode()) % 2 == 0:
        case.path_parameters["model_id"] = MODELS[zlib.crc32(str(case.body).encode()) % len(MODELS)]
    if case.path == "/v1/streams" and case.method == "POST" and isinstance(case.body, dict):
        if zlib.crc32(str(case.body).encode()) % 2 == 0:  # half with a real model: the source reaches the URL guard
            case.body["model"] = MODELS[zlib.crc32(str(case.body).encode()) % len(MODELS)]
    key = _admin_key(gateway) if case.path.startswith("/v1/keys") else gateway.key  # the admin API needs the scope
    try:
        response = case.call_and_validate(base_url=gateway.url, headers={"x-api-key": key}, checks=CHECKS, timeout=60)
    finally:
        if case.path.startswith("/v1/streams"):
            _delete_streams(gateway.url, key)
    CALLS[response.status_code] += 1


def _delete_streams(url: str, key: str) -> None:
    """No stream a case started outlives it (nor takes the key's streams cap from the next case)."""
    headers = {"x-api-key": key}
    for stream in requests.get(f"{url}/v1/streams", headers=headers, timeout=30).json()["data"]:
        assert requests.delete(f"{url}/v1/streams/{stream['id']}", headers=headers, timeout=30).status_code == 200


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_api_in_redis_mode(case: schemathesis.Case, gateway_redis: Gateway) -> None:
    """The same contract with keys, limits and usage in Redis (a shorter run)."""
    _call(case, gateway_redis)


def _admin_key(gateway: Gateway, made: dict[str, str] = {}) -> str:  # noqa: B006 - one admin key per session
    if gateway.admin_key:
        return gateway.admin_key
    if gateway.url not in made:
        made[gateway.url] = create_key(gateway.keys_file, KeyDraft("fuzz-admin", admin=True))[1]
    return made[gateway.url]


def test_fuzzing_ran_enough_cases() -> None:
    """Runs after the fuzz test (file order): the bounded run must still be a real one."""
    assert sum(CALLS.values()) >= 500, CALLS
    assert CALLS[200] > 0 and CALLS[400] > 0, CALLS
