"""What Redis mode costs per request against the keys file: p50 latency and gateway CPU, at concurrency 1 and 8.

    python -m bench.state_overhead --repository .triton/test-cache/repository-<hash> [--rounds 3 --requests 100]

Starts one Triton, one Redis and two gateways (file mode, Redis mode) on loopback, with a rate-limited key in each
(so every request runs the limiter: a Lua script in Redis mode). Two kinds of request: `auth` carries no image, so
it stops with 400 right after the key check and the limiter (the state store's whole cost, undiluted); `predict`
sends a 20×20 PNG through the whole pipeline. Modes alternate in rounds so drifting load on a shared machine hits
both alike. Gateway CPU is read from /proc (user + system of the gateway process) over each batch.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from bench import cpu
from gateway.keys.auth import KeyDraft, create_key
from gateway.keys.redis_store import RedisStore
from tritonlocal import launcher, redisserver


def _gateway(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = launcher.gateway_command("127.0.0.1", port, "--log-level", "warning")
    process = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"gateway on {port} did not start: {log.read_text()[-2000:]}")


def _batch(url: str, key: str, kind: str, image: bytes, n: int, concurrency: int) -> list[float]:
    local = threading.local()

    def one(_: int) -> float:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        files = {"image": ("tiny.png", image)} if kind == "predict" else None
        t0 = time.perf_counter()
        r = session.post(f"{url}/v1/predict/yolov8n", headers={"x-api-key": key}, files=files, timeout=60)
        took = time.perf_counter() - t0
        assert r.status_code == (200 if kind == "predict" else 400), r.text
        return took * 1000

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state_overhead", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100, help="per mode, kind, concurrency and round")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="state-overhead-"))
    triton = launcher.start(args.repository, log_path=work / "triton.log")
    redis = redisserver.start(work / "redis")
    gateways: dict[str, subprocess.Popen[bytes]] = {}
    try:
        keys_file = work / "keys.json"
        file_key = create_key(keys_file, KeyDraft("bench", rate=1e6))[1]

        async def redis_key() -> str:
            store = RedisStore(redis.url, redis.password, timeout_s=2.0)
            try:
                return (await store.create_key(KeyDraft("bench", rate=1e6)))[1]
            finally:
                await store.close()

        keys = {"file": file_key, "redis": asyncio.run(redis_key())}
        base = {**launcher.gateway_environment(triton), "GATEWAY_KEYS_FILE": str(keys_file)}
        ports = {"file": redisserver.free_port(), "redis": redisserver.free_port()}
        gateways["file"] = _gateway(ports["file"], base, work / "file.log")
        gateways["redis"] = _gateway(
            ports["redis"],
            {**base, "GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_PASSWORD": redis.password},
            work / "redis.log",
        )
        ok, png = cv2.imencode(".png", np.full((20, 20, 3), 127, np.uint8))
        image = png.tobytes()
        results: dict[tuple[str, str, int], tuple[list[float], float, int]] = {}
        for kind, n in (("auth", args.requests), ("predict", max(10, args.requests // 3))):
            for concurrency in (1, 8):
                for mode in ("file", "redis"):  # warm-up
                    _batch(f"http://127.0.0.1:{ports[mode]}", keys[mode], kind, image, 20, concurrency)
                for _ in range(args.rounds):
                    for mode in ("file", "redis"):
                        before = cpu.seconds(gateways[mode].pid, children=False)
                        ms = _batch(f"http://127.0.0.1:{ports[mode]}", keys[mode], kind, image, n, concurrency)
                        burnt = cpu.seconds(gateways[mode].pid, children=False) - before
                        lat, total, count = results.get((kind, mode, concurrency), ([], 0.0, 0))
                        results[(kind, mode, concurrency)] = (lat + ms, total + burnt, count + n)
        print(
            "| request | concurrency | p50 file (ms) | p50 Redis (ms) | p50 added | CPU/request file (ms) "
            "| CPU/request Redis (ms) | CPU added |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for kind in ("auth", "predict"):
            for concurrency in (1, 8):
                f_lat, f_cpu, f_n = results[(kind, "file", concurrency)]
                r_lat, r_cpu, r_n = results[(kind, "redis", concurrency)]
                pf, pr = statistics.median(f_lat), statistics.median(r_lat)
                cf, cr = f_cpu / f_n * 1000, r_cpu / r_n * 1000
                print(
                    f"| {kind} | {concurrency} | {pf:.2f} | {pr:.2f} | {pr - pf:+.2f} | {cf:.2f} | {cr:.2f} "
                    f"| {cr - cf:+.2f} |"
                )
        print(
            f"\n{args.rounds} rounds x {args.requests} auth / {max(10, args.requests // 3)} predict requests per "
            "mode and concurrency; CPU from /proc (ticks of 10 ms, so small differences are noise)"
        )
    finally:
        for process in gateways.values():
            process.terminate()
            process.wait(20)
        redis.stop()
        triton.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
