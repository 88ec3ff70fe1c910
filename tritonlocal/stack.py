"""`make serve GATEWAYS=N STATE=redis`: one Redis (generated password), the Triton that serve.py started, the export
worker for uploaded models (its registry in that Redis, beside the keys), and N gateway processes on ports
PORT..PORT+N-1, all on loopback. Everything is stopped by its process id on exit.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.keys.cli import REDIS_URL_FILE
from tritonlocal import launcher, redisserver

REDIS_FOLDER = Path(".triton/redis")  # the dev stack's Redis data (append-only file), kept between runs


def start_redis() -> redisserver.RedisServer:
    """Redis on loopback with a password generated once (kept, with the URL, in data/redis.url, mode 0600)."""
    password = ""
    if REDIS_URL_FILE.exists():
        password = REDIS_URL_FILE.read_text().strip().split("@")[0].rpartition(":")[2]
    server = redisserver.start(REDIS_FOLDER.resolve(), password=password or secrets.token_urlsafe(24))
    REDIS_URL_FILE.parent.mkdir(parents=True, exist_ok=True)
    REDIS_URL_FILE.touch(mode=0o600)
    REDIS_URL_FILE.chmod(0o600)
    REDIS_URL_FILE.write_text(server.url_with_password + "\n")
    return server


def ensure_first_key(redis_url: str, password: str) -> None:
    """Like the keys file: an empty Redis gets a development key, printed once."""
    import asyncio

    from gateway.keys.auth import KeyDraft
    from gateway.keys.redis_store import RedisStore

    async def run() -> str | None:
        store = RedisStore(redis_url, password, timeout_s=2.0)
        try:
            if await store.list_keys():
                return None
            return (await store.create_key(KeyDraft("development")))[1]
        finally:
            await store.close()

    key = asyncio.run(run())
    if key:
        print(f"\nCreated a development API key (stored hashed in Redis):\n\n    {key}\n", flush=True)


def run_gateways(host: str, port: int, count: int, server: launcher.TritonServer, env: dict[str, str]) -> int:
    """Start `count` gateways, wait until all answer, then until one exits or Ctrl-C; stop them all."""
    processes: list[subprocess.Popen[bytes]] = []
    environ = {**os.environ, **launcher.gateway_environment(server), **env}
    try:
        for i in range(count):
            cmd = launcher.gateway_command(host, port + i, "--timeout-graceful-shutdown", "20")
            processes.append(subprocess.Popen(cmd, env=environ, preexec_fn=launcher._die_with_parent))  # noqa: PLW1509
        for i in range(count):
            _wait_healthy(f"http://{host}:{port + i}", processes[i])
        urls = ", ".join(f"http://{host}:{port + i}" for i in range(count))
        print(f"[serve] {count} gateway(s): {urls}", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(25)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway for {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"the gateway for {url} did not start within {timeout_s:.0f} s")


def serve(
    host: str, port: int, gateways: int, state: str, server: launcher.TritonServer, repository: Path | None = None
) -> int:
    """`repository`: the Triton repository for the export worker (None: no worker)."""
    from tritonlocal.serve import start_worker, stop_worker

    redis: redisserver.RedisServer | None = None
    worker: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = {}
    try:
        if state == "redis":
            redis = start_redis()
            print(f"[serve] Redis on {redis.url} (password in {REDIS_URL_FILE}; data in {REDIS_FOLDER})", flush=True)
            env = {"GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_PASSWORD": redis.password}
            ensure_first_key(redis.url, redis.password)
        elif gateways > 1:
            print(
                "[serve] note: with the keys file each gateway has its own rate-limit buckets and usage counters; "
                "STATE=redis shares them",
                flush=True,
            )
        if repository is not None:
            worker = start_worker(repository, server, env)
        return run_gateways(host, port, gateways, server, env)
    finally:
        if worker is not None:
            stop_worker(worker)
        if redis is not None:
            print("[serve] stopping Redis ...", file=sys.stderr, flush=True)
            redis.stop()
