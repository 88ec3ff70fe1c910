"""Where an image's bytes come from when they are not uploaded: a `url`, fetched without becoming a proxy into
private networks (SSRF guard), or a base64 `source`.

Every hop (first request and each redirect, at most `url_max_redirects`) is checked: http/https only, no
credentials in the URL, default or unprivileged ports, and every address the host resolves to must be public.
The connection then goes to the address that was checked (Host header and TLS SNI keep the name), so a DNS answer
that changes between check and connect can't redirect us. Hosts in `url_allow_hosts` skip the address check (tests,
private deployments). The request's record gets the host only: paths and query strings of signed URLs hold tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urljoin

import httpx

from gateway.errors import BadGateway, BadRequest, PayloadTooLarge
from gateway.observability import RequestRecord
from gateway.streams import read_capped

Resolver = Callable[[str, int], Awaitable[list[str]]]
NOT_ALLOWED = "The image URL is not allowed: it must be a public http or https address."
HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "yolo-triton-gateway"}


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (SIIT, RFC 2765)
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # IPv4-compatible (deprecated, still routed by some stacks)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # NAT64 well-known prefix (RFC 6052)
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # NAT64 local-use prefix (RFC 8215), any RFC 6052 length
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
# Where public IPv6 addresses are: IANA's IPv6 address space registry allocates only 2000::/3 as global unicast. The
# rest is reserved, and `ipaddress` calls some of it global: site-local fec0::/10 (deprecated, RFC 3879), the SRv6
# SIDs 5f00::/16 (RFC 9602), the dummy prefix 100:0:0:1::/64 (RFC 9780). (The IPv4 wrappers are judged before this.)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# Rows of IANA's special-purpose address registries that are not globally reachable but that `ipaddress.is_global`
# of Python 3.11 (or later) calls global; tests/test_fetch.py checks every row of both registries against is_public.
_NOT_GLOBAL: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    # IETF protocol assignments (3.11 knows only .0/29 and .170/31 in it). The block's anycast services (.9 PCP,
    # .10 TURN) are globally reachable but never image servers: refused with the block, whatever the Python version.
    ipaddress.IPv4Network("192.0.0.0/24"),
    ipaddress.IPv4Network("192.88.99.0/24"),  # the deprecated 6to4 relay anycast (RFC 7526), 6a44 relay (RFC 6751)
    ipaddress.IPv6Network("2001::/23"),  # IETF protocol assignments, as above (newer Pythons carve services out)
    ipaddress.IPv6Network("3fff::/20"),  # documentation (RFC 9637), beside 2001:db8::/32
)


def _bits(value: int, start: int, count: int) -> int:
    """`count` bits of a 128-bit address from bit `start` (0 = most significant)."""
    return (value >> (128 - start - count)) & ((1 << count) - 1)


def _local_nat64(value: int) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address a 64:ff9b:1::/48 address can carry. The operator picks the prefix length (RFC 6052), which
    the address doesn't say: the /96 reading always counts, the /64 one (bits 72-103) when its reserved bits 64-71
    and 104-127 are zero. (The /48 and /56 layouts leave bits 96-127 zero, which the /96 reading sees as 0.0.0.0 and
    refuses: the safe side of an ambiguous address.)"""
    out = [ipaddress.IPv4Address(value & 0xFFFFFFFF)]
    if _bits(value, 64, 8) == 0 and _bits(value, 104, 24) == 0:
        out.append(ipaddress.IPv4Address(_bits(value, 72, 32)))
    return out


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 address(es) an IPv6 address wraps (mapped, translated, compatible, NAT64, 6to4, Teredo), or None.

    Traffic to such an address ends at the IPv4 inside (a NAT64 gateway on an IPv6-only cluster, a 6to4 or Teredo
    relay, a dual stack), so that is the address to judge: 64:ff9b::a9fe:a9fe is the metadata service.
    """
    value = int(ip)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _COMPATIBLE or ip in _NAT64:
        return [low]
    if ip in _NAT64_LOCAL:
        return _local_nat64(value)
    if ip in _SIX_TO_FOUR:
        return [ipaddress.IPv4Address(_bits(value, 16, 32))]
    if ip in _TEREDO:
        server, client = ip.teredo or (low, low)
        return [server, client]
    return None


def is_public(address: str) -> bool:
    """Whether `address` (an IP literal, maybe with a %zone) is a public unicast address, judging the IPv4 inside any
    IPv6 wrapper: the wrapper's own verdict from `ipaddress` varies with the Python version and misses most of them."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return all(_global(v4) for v4 in inner)
        if ip not in _GLOBAL_UNICAST:
            return False
    return _global(ip)


def _global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """`ipaddress`'s copy of IANA's registries (is_global), with the rows it lacks, and never multicast."""
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _NOT_GLOBAL)


def _port_allowed(port: int) -> bool:
    return port in (80, 443) or port >= 1024


async def _check(url: httpx.URL, allow_hosts: tuple[str, ...], resolve: Resolver, what: str = "image") -> str:
    """The address to connect to for `url`, or BadRequest (BadGateway when its host does not resolve)."""
    if url.scheme not in ("http", "https") or not url.host:
        raise BadRequest(f"The {what} URL must start with http:// or https://.")
    if url.userinfo:
        raise BadRequest(f"The {what} URL must not contain a user name or password.")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not _port_allowed(port):
        raise BadRequest(f"The {what} URL's port {port} is not allowed: use 80, 443 or a port from 1024 up.")
    try:
        addresses = await resolve(url.host, port)
    except (OSError, UnicodeError):
        raise BadGateway(f"The {what} URL's host '{url.host[:100]}' could not be resolved.") from None
    if not addresses:
        raise BadGateway(f"The {what} URL's host '{url.host[:100]}' could not be resolved.")
    if url.host.lower() not in allow_hosts and not all(is_public(a) for a in addresses):
        raise BadRequest(NOT_ALLOWED.replace("image", what, 1))
    return addresses[0]


async def fetch_image(
    raw_url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    allow_hosts: tuple[str, ...] = (),
    resolve: Resolver = system_resolver,
    record: RequestRecord | None = None,
) -> bytes:
    """The body of `raw_url` (following checked redirects), at most `max_bytes`, within `timeout_s` in total. The
    hosts it was fetched from go into `record`."""
    try:
        async with asyncio.timeout(timeout_s):
            async with opened(raw_url, max_redirects, allow_hosts, resolve, record) as response:
                too_large = f"The image at the URL is larger than the {max_bytes // 2**20} MiB limit."
                declared = response.headers.get("content-length")
                return await read_capped(response.aiter_bytes(), max_bytes, too_large, declared)
    except TimeoutError:
        raise BadGateway(f"The image URL did not answer within {timeout_s:g} seconds.") from None


def _parse(raw: str, base: str = "") -> httpx.URL | None:
    """`raw` (relative to `base`) as a URL whose host can be read, or None."""
    try:
        url = httpx.URL(urljoin(base, raw) if base else raw)
        url.host  # noqa: B018 -- IDNA decoding happens here: 'xn--a' parses, then fails
    except (httpx.InvalidURL, ValueError):  # (IDNA and Unicode errors are ValueErrors)
        return None
    return url


@contextlib.asynccontextmanager
async def opened(
    raw_url: str,
    max_redirects: int,
    allow_hosts: tuple[str, ...],
    resolve: Resolver,
    record: RequestRecord | None = None,
    what: str = "image",
) -> AsyncIterator[httpx.Response]:
    """The 200 response of `raw_url` (every hop checked, redirects followed), its body not read yet: read it (in
    the `with`) as it arrives. Errors name `what` ("image", "video"): 400 for a URL refused, 502 for a server that
    failed (also while its body is read)."""
    parsed = _parse(raw_url)
    if parsed is None:
        raise BadRequest(f"The {what} URL is not a valid URL.")
    url = parsed
    first_host = url.host
    if record is not None:
        record.url_host = first_host[:100]
    headers = {**HEADERS, "Accept": f"{what}/*"}
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=httpx.Timeout(5.0)) as client:
        for _ in range(max_redirects + 1):
            address = await _check(url, allow_hosts, resolve, what)
            host_header = url.netloc.decode("ascii", "replace")
            extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
            request = client.build_request(
                "GET",
                url.copy_with(host=address),
                headers={"Host": host_header, **headers},
                extensions=extensions,
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise BadGateway(f"The {what} URL could not be fetched ({type(exc).__name__}).") from None
            except (httpx.InvalidURL, ValueError):  # httpx reads a redirect's Location (IDNA errors escape it)
                raise BadGateway(f"The {what} URL redirected to an invalid URL.") from None
            try:
                if response.is_redirect:
                    parsed = _parse(response.headers.get("location", ""), base=str(url))
                    if parsed is None:
                        raise BadGateway(f"The {what} URL redirected to an invalid URL.")
                    url = parsed
                    if url.host != first_host and record is not None:
                        record.url_redirect_host = url.host[:100]
                    continue
                if response.status_code != 200:
                    raise BadGateway(f"The {what} URL answered HTTP {response.status_code}, not 200.")
                yield response
                return
            except httpx.HTTPError as exc:
                raise BadGateway(f"The {what} URL could not be fetched ({type(exc).__name__}).") from None
            finally:
                await response.aclose()
    raise BadGateway(f"The {what} URL redirected more than {max_redirects} times.")


SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: str) -> bool:
    """`source` names a resource (`scheme://...`) rather than carrying the image in base64."""
    return bool(SCHEME.match(source))


def decode_source(source: str, max_bytes: int) -> bytes:
    """The image bytes of a base64 `source` (plain, URL-safe, or a `data:image/...;base64,` URI); 400 when it is not
    base64, 413 past `max_bytes` (checked from its length before decoding)."""
    text = source.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest("Invalid 'source' value: a data URI must be base64 (data:image/jpeg;base64,...).")
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    if len(text) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLarge(
            f"The 'source' image is larger than the {max_bytes // 2**20} MiB upload limit. Send a smaller image."
        )
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "Invalid 'source' value: send an http(s) image URL or the image's bytes in base64 (optionally as a "
            "data:image/...;base64, URI)."
        ) from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The 'source' image is larger than the {max_bytes // 2**20} MiB upload limit. Send a smaller image."
        )
    return data
