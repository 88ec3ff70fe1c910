"""The URL guard refuses private targets before any connection (injected resolver; no traffic leaves loopback)."""

from __future__ import annotations

import asyncio

import pytest

from gateway import fetch
from gateway.errors import BadRequest


def _never_connect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to send a request; the guard must stop before it."""
    attempts: list[str] = []

    async def send(self: object, request: object, **kwargs: object) -> None:
        attempts.append(str(getattr(request, "url", request)))
        raise AssertionError("connection attempted")

    monkeypatch.setattr(fetch.httpx.AsyncClient, "send", send)
    return attempts


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "127.0.0.1", "0.0.0.0", "100.64.0.1",
     "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "ff02::1"],
)
def test_private_and_special_addresses_are_refused_before_connecting(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    attempts = _never_connect(monkeypatch)

    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    with pytest.raises(BadRequest, match="not allowed"):
        asyncio.run(fetch.fetch_image("http://images.example.com/a.jpg", max_bytes=1000, timeout_s=5, max_redirects=3, resolve=resolve))
    assert attempts == []


def test_one_private_address_among_public_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = _never_connect(monkeypatch)

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(BadRequest):
        asyncio.run(fetch.fetch_image("https://mixed.example/a.jpg", max_bytes=1000, timeout_s=5, max_redirects=3, resolve=resolve))
    assert attempts == []


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/"])
def test_literal_private_ips_are_refused_with_the_system_resolver(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    attempts = _never_connect(monkeypatch)
    with pytest.raises(BadRequest):
        asyncio.run(fetch.fetch_image(url, max_bytes=1000, timeout_s=5, max_redirects=3))
    assert attempts == []


def test_public_addresses_pass_the_check() -> None:
    assert fetch.is_public("93.184.216.34") and fetch.is_public("2606:2800:220:1:248:1893:25c8:1946")
    assert not fetch.is_public("::ffff:127.0.0.1")
