"""Triton's model repository API on every Triton the gateways use: load, unload, and which models are READY where.

Triton runs in explicit model-control mode (tritonlocal/launcher.py): it loads everything in the repository at start
(so a Triton that starts later serves what is current), and afterwards only what the export worker asks for. The
repository API may be restricted to callers that send a key (Triton's --grpc-restricted-protocol and
--http-restricted-api with `model-repository:admin-key=<key>`); the worker sends GATEWAY_TRITON_ADMIN_KEY when it is
set. Over gRPC Triton expects the key in the header `triton-grpc-protocol-<name>` (measured on 2.51: a plain
`admin-key` header is refused with "expecting header 'triton-grpc-protocol-admin-key'"); over HTTP in `<name>`.

`url` is the gateway's GATEWAY_TRITON_URL: `host:port`, or `dns:///name:port` for a Kubernetes headless Service,
whose name resolves to every Triton pod's address: each of them is an endpoint, asked on its own. Several such
addresses may be given, separated by commas (Tritons that are not behind one name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

log = logging.getLogger("export.worker")
INDEX_TIMEOUT_S = 5.0
KEY_HEADER = "admin-key"  # the name in --grpc-restricted-protocol=model-repository:admin-key=<key>
GRPC_KEY_PREFIX = "triton-grpc-protocol-"  # Triton's gRPC server reads restricted-protocol keys under this prefix


class TritonControlError(Exception):
    """A repository call failed on one Triton; the message names the Triton, the model and Triton's reason."""


@dataclass
class TritonFleet:
    url: str
    admin_key: str = field(default="", repr=False)
    load_timeout_s: float = 300.0
    _clients: dict[str, grpcclient.InferenceServerClient] = field(default_factory=dict, init=False, repr=False)

    @property
    def headers(self) -> dict[str, str] | None:
        return {f"{GRPC_KEY_PREFIX}{KEY_HEADER}": self.admin_key} if self.admin_key else None

    async def endpoints(self) -> list[str]:
        """Every Triton behind `url` (`host:port` each), resolved now: replicas come and go."""
        found: list[str] = []
        for url in (u.strip() for u in self.url.split(",") if u.strip()):
            for endpoint in await _resolve(url):
                if endpoint not in found:
                    found.append(endpoint)
        return found

    def client(self, endpoint: str) -> grpcclient.InferenceServerClient:
        if endpoint not in self._clients:
            self._clients[endpoint] = grpcclient.InferenceServerClient(endpoint)
        return self._clients[endpoint]

    async def close(self) -> None:
        for c in self._clients.values():
            with contextlib.suppress(Exception):
                await c.close()
        self._clients.clear()

    async def index(self, endpoint: str) -> dict[str, str]:
        """Model name → state ("READY", "UNAVAILABLE", "LOADING", ...) on one Triton."""
        try:
            answer: Any = await self.client(endpoint).get_model_repository_index(
                headers=self.headers, as_json=True, client_timeout=INDEX_TIMEOUT_S
            )
        except InferenceServerException as exc:
            raise TritonControlError(f"Triton at {endpoint}: the model index failed: {exc.message()}") from None
        return {m["name"]: m.get("state", "") for m in answer.get("models", [])}

    async def load(self, name: str, endpoints: list[str] | None = None) -> None:
        """Load (or load again) `name` from the repository on every Triton; the first failure raises."""
        for endpoint in endpoints if endpoints is not None else await self.endpoints():
            try:
                await self.client(endpoint).load_model(name, headers=self.headers, client_timeout=self.load_timeout_s)
            except InferenceServerException as exc:
                raise TritonControlError(f"Triton at {endpoint} could not load {name}: {exc.message()}") from None

    async def unload(self, name: str, endpoints: list[str] | None = None) -> list[str]:
        """Ask every Triton to unload `name`; the problems, if any. Triton answers at once and unloads in the background
        (measured: about 3 s for a python-backend model), after the requests in flight have finished."""
        problems = []
        for endpoint in endpoints if endpoints is not None else await self.endpoints():
            try:
                await self.client(endpoint).unload_model(name, headers=self.headers, client_timeout=self.load_timeout_s)
            except InferenceServerException as exc:
                problems.append(f"Triton at {endpoint} could not unload {name}: {exc.message()}")
        return problems


async def _resolve(url: str) -> list[str]:
    target = url.removeprefix("dns:///").removeprefix("dns:")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return [url]
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve the Triton address %s: %s", url, exc)
        return []
    found = []
    for family, *_, address in infos:
        ip = str(address[0])
        found.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return found
