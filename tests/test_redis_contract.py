"""The HTTP contract and parity with Ultralytics, once more against a gateway whose keys, limits and usage live in
Redis: the same test functions as in file mode (imported here), with `gateway` bound to the Redis-mode gateway."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import Gateway

# Imported test functions run again in this module, where `gateway` below is the Redis-mode gateway.
from tests.test_api import (  # noqa: F401
    test_bad_argument_is_400_naming_it,
    test_corrupt_png_is_422,
    test_curl_snippet_from_the_hub_docs_works_unchanged,
    test_missing_key_is_401,
    test_neither_image_nor_url_is_400,
    test_python_snippet_from_the_hub_docs_works_unchanged,
    test_response_carries_server_timing,
    test_service_keeps_serving_after_bad_inputs,
    test_tampered_key_with_known_id_is_401,
    test_text_file_is_415,
    test_unknown_model_is_404,
    test_wrong_key_is_401,
)
from tests.test_parity import reference, test_parity_normalized  # noqa: F401


@pytest.fixture
def gateway(gateway_redis: Gateway) -> Gateway:
    return gateway_redis


@pytest.fixture(scope="module", autouse=True)
def redis_answering(gateway_redis: Gateway) -> None:
    """tests/test_redis.py SIGKILLs and SIGSTOPs the session's Redis on purpose; it recovers within its documented 5 s
    (README, "Redis down or slow"), and these tests are about the contract, so they start once it has."""
    deadline = time.monotonic() + 10
    while (
        requests.get(f"{gateway_redis.url}/v1/keys", headers={"x-api-key": gateway_redis.key}, timeout=5).status_code
        == 503
    ):
        assert time.monotonic() < deadline, "the Redis-mode gateway did not recover within 10 s"
        time.sleep(0.2)
