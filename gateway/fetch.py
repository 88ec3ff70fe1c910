"""Fetch an image from a user-supplied `url` without becoming a proxy into private networks (SSRF guard).

Every hop (first request and each redirect, at most `url_max_redirects`) is checked: http/https only, no
credentials in the URL, default or unprivileged ports, and every address the host resolves to must be public.
The connection then goes to the address that was checked (Host header and TLS SNI keep the name), so a DNS answer
that changes between check and connect can't redirect us. Hosts in `url_allow_hosts` skip the address check (tests,
private deployments).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin

import httpx

from gateway.errors import BadGateway, BadRequest, PayloadTooLarge

Resolver = Callable[[str, int], Awaitable[list[str]]]
NOT_ALLOWED = "The image URL is not allowed: it must be a public http or https address."


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _port_allowed(port: int) -> bool:
    return port in (80, 443) or port >= 1024


async def _check(url: httpx.URL, allow_hosts: tuple[str, ...], resolve: Resolver) -> str:
    """The address to connect to for `url`, or BadRequest."""
    if url.scheme not in ("http", "https") or not url.host:
        raise BadRequest("The image URL must start with http:// or https://.")
    if url.userinfo:
        raise BadRequest("The image URL must not contain a user name or password.")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not _port_allowed(port):
        raise BadRequest(f"The image URL's port {port} is not allowed: use 80, 443 or a port from 1024 up.")
    try:
        addresses = await resolve(url.host, port)
    except (OSError, UnicodeError):
        raise BadGateway(f"The image URL's host '{url.host[:100]}' could not be resolved.") from None
    if not addresses:
        raise BadGateway(f"The image URL's host '{url.host[:100]}' could not be resolved.")
    if url.host.lower() not in allow_hosts and not all(is_public(a) for a in addresses):
        raise BadRequest(NOT_ALLOWED)
    return addresses[0]


async def fetch_image(
    raw_url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    allow_hosts: tuple[str, ...] = (),
    resolve: Resolver = system_resolver,
) -> bytes:
    """The body of `raw_url` (following checked redirects), at most `max_bytes`, within `timeout_s` in total."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _fetch(raw_url, max_bytes, max_redirects, allow_hosts, resolve)
    except TimeoutError:
        raise BadGateway(f"The image URL did not answer within {timeout_s:g} seconds.") from None


async def _fetch(raw_url: str, max_bytes: int, max_redirects: int, allow_hosts: tuple[str, ...], resolve: Resolver) -> bytes:
    try:
        url = httpx.URL(raw_url)
    except (httpx.InvalidURL, ValueError):
        raise BadRequest("The image URL is not a valid URL.") from None
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=httpx.Timeout(5.0)) as client:
        for _ in range(max_redirects + 1):
            address = await _check(url, allow_hosts, resolve)
            host_header = url.netloc.decode("ascii", "replace")
            extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
            request = client.build_request(
                "GET",
                url.copy_with(host=address),
                headers={"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "yolo-triton-gateway"},
                extensions=extensions,
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise BadGateway(f"The image URL could not be fetched ({type(exc).__name__}).") from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    url = httpx.URL(urljoin(str(url), location))
                    continue
                if response.status_code != 200:
                    raise BadGateway(f"The image URL answered HTTP {response.status_code}, not 200.")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise PayloadTooLarge(f"The image at the URL is larger than the {max_bytes // 2**20} MiB limit.")
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise PayloadTooLarge(f"The image at the URL is larger than the {max_bytes // 2**20} MiB limit.")
                    chunks.append(chunk)
                return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise BadGateway(f"The image URL could not be fetched ({type(exc).__name__}).") from None
            finally:
                await response.aclose()
    raise BadGateway(f"The image URL redirected more than {max_redirects} times.")
