"""The URL guard (gateway/predict/fetch.py's public-address rule) for the other URLs the gateway connects to: a live
stream's source and a webhook's receiver.

A source is `rtsp://`, `rtmp://` or `http(s)://` (an HLS playlist or an MJPEG stream); a webhook is `http(s)://`.
The host must resolve, every address it resolves to must be public (unless the host is in GATEWAY_URL_ALLOW_HOSTS),
and the port must be the scheme's default or an unprivileged one: checked before anything connects, and again before
each reconnect. A source may carry a user name and password (cameras need them); they are never shown back
(`redacted`). RTSP and RTMP sources are then opened at the checked address, so a DNS answer that changes between the
check and the connection can't move them; an HTTP(S) source keeps its name (TLS and virtual hosts need it), and
its reader connects through gateway/live/proxy.py, which checks every destination (redirects and HLS segment URLs
too) here and connects to the checked address.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from gateway.errors import BadRequest
from gateway.predict.fetch import Resolver, is_public, system_resolver

SOURCE_SCHEMES = {"rtsp": 554, "rtmp": 1935, "http": 80, "https": 443}
WEBHOOK_SCHEMES = {"http": 80, "https": 443}
MAX_URL = 2048


@dataclass(frozen=True)
class Checked:
    """A URL that passed the guard: what to connect to (`connect`: the checked address in place of the name where
    the scheme allows it) and what may be shown (`shown`: without credentials)."""

    connect: str
    shown: str
    host: str
    address: str = ""  # the first address the host resolved to (what gateway/live/proxy.py connects to)
    port: int = 0


def redacted(parts: SplitResult) -> str:
    """The URL without user name and password (and without its query string, which may hold a token)."""
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def check_url(
    raw: str,
    what: str,
    schemes: dict[str, int],
    allow_hosts: tuple[str, ...],
    resolve: Resolver = system_resolver,
    credentials: bool = False,
) -> Checked:
    """`raw` checked (see the module docstring), or BadRequest naming `what` ("source", "webhook")."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_URL:
        raise BadRequest(f"The {what} URL must be a string of 1 to {MAX_URL} characters.")
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise BadRequest(f"The {what} URL is not a valid URL.") from None
    names = ", ".join(f"{s}://" for s in schemes)
    if parts.scheme.lower() not in schemes or not host:
        raise BadRequest(f"The {what} URL must start with one of {names} and name a host.")
    scheme = parts.scheme.lower()
    if (parts.username or parts.password) and not credentials:
        raise BadRequest(f"The {what} URL must not contain a user name or password.")
    port = port or schemes[scheme]
    if port != schemes[scheme] and port < 1024:
        raise BadRequest(f"The {what} URL's port {port} is not allowed: use the scheme's default or one from 1024 up.")
    # 400, not an image url's 502: nothing is fetched yet, the stream's URL is refused (the client fixes the name)
    unresolved = f"The {what} URL's host '{host[:100]}' could not be resolved: check the host name."
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError):
        raise BadRequest(unresolved) from None
    if not addresses:
        raise BadRequest(unresolved)
    if host.lower() not in allow_hosts and not all(is_public(a) for a in addresses):
        raise BadRequest(
            f"The {what} URL is not allowed: its host must be a public address (an operator may allow private hosts "
            "with GATEWAY_URL_ALLOW_HOSTS)."
        )
    connect = raw.strip()
    address = addresses[0].split("%", 1)[0]
    if scheme in ("rtsp", "rtmp"):
        literal = f"[{address}]" if ":" in address else address
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@{literal}:{port}" if auth else f"{literal}:{port}"
        connect = urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))
    return Checked(connect, redacted(parts), host.lower(), address, port)


async def check_source(raw: str, allow_hosts: tuple[str, ...], resolve: Resolver = system_resolver) -> Checked:
    return await check_url(raw, "source", SOURCE_SCHEMES, allow_hosts, resolve, credentials=True)


async def check_webhook(raw: str, allow_hosts: tuple[str, ...], resolve: Resolver = system_resolver) -> Checked:
    return await check_url(raw, "webhook", WEBHOOK_SCHEMES, allow_hosts, resolve)
