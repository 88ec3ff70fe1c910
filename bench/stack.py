"""Processes the benchmark drives: the local Triton + gateway stack and the Ultralytics baseline server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.models import ROOT
from tritonlocal import launcher


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not start within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def uvicorn(app: str, workdir: Path, env: dict[str, str], probe: str, factory: bool = False) -> Iterator[Server]:
    """Run `app` under uvicorn on a free loopback port; stopped by its own pid on exit."""
    port = launcher.free_port()
    log = workdir / f"{app.split(':')[0].replace('.', '_')}.log"
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if factory:
        cmd.append("--factory")
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + probe, process, log)
        yield Server(url, process)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def triton_and_gateway(
    repository: Path, workdir: Path, letterbox: str, shared_memory: bool = True
) -> Iterator[tuple[launcher.TritonServer, Server, str]]:
    """(Triton, gateway, API key) on loopback; the gateway as `make serve` runs it (shared memory with Triton) unless
    `shared_memory` is off (tensors in the gRPC messages, as between separate pods)."""
    from gateway.keys.auth import KeyDraft, create_key

    triton = launcher.start(repository, cache=ROOT / ".triton" / "bench-server", log_path=workdir / "tritonserver.log")
    try:
        keys = workdir / "keys.json"
        _, key = create_key(keys, KeyDraft("bench"))
        env = {
            **launcher.gateway_environment(triton, shared_memory),
            "GATEWAY_KEYS_FILE": str(keys),
            "GATEWAY_LETTERBOX": letterbox,
        }
        with uvicorn("gateway.app:create_app", workdir, env, "/healthz", factory=True) as gw:
            yield triton, gw, key
    finally:
        triton.stop()
