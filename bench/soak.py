"""Soak the 3-replica Redis stack: mixed valid and invalid traffic for a while, every process's memory sampled.

    python -m bench.soak --repository .triton/test-cache/repository-<hash> --minutes 20

One Triton, one Redis and three gateways on loopback (as `make serve GATEWAYS=3 STATE=redis`). A few client threads
send, round-robin over the gateways: predictions with a valid key, unknown keys (401), a revoked key (401), a key
scoped to another model (403), requests without an image (400), and a rate-limited key (429). Passes when no
answer was a 5xx other than a deliberate 503, and every process's resident memory grew less than 20 MiB over the
second half of the run. Prints the memory curve (MiB per process, once a minute) and the status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import requests

from gateway.keys.auth import KeyDraft
from gateway.keys.redis_store import RedisStore
from tritonlocal import launcher, redisserver


def rss_mib(pid: int) -> float:
    """Resident memory of pid and its descendants (Triton's python-backend stubs), from /proc."""
    from bench import cpu

    total = 0
    for p in cpu.tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=60)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    triton = launcher.start(args.repository, log_path=work / "triton.log")
    redis = redisserver.start(work / "redis")
    gateways: list[subprocess.Popen[bytes]] = []
    try:

        async def keys() -> dict[str, str]:
            store = RedisStore(redis.url, redis.password, timeout_s=2.0)
            try:
                made = {
                    "valid": (await store.create_key(KeyDraft("soak")))[1],
                    "scoped": (await store.create_key(KeyDraft("soak-scoped", ("yolov8n-pose",))))[1],
                    "limited": (await store.create_key(KeyDraft("soak-limited", rate=2)))[1],
                }
                revoked, made["revoked"] = await store.create_key(KeyDraft("soak-revoked"))
                await store.revoke_key(revoked.id)
                return made
            finally:
                await store.close()

        key = asyncio.run(keys())
        ports = [redisserver.free_port() for _ in range(3)]
        env = {
            **os.environ,
            **launcher.gateway_environment(triton),
            "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_REDIS_PASSWORD": redis.password,
            "GATEWAY_KEYS_FILE": str(work / "unused.json"),
        }
        for port in ports:
            cmd = launcher.gateway_command("127.0.0.1", port, "--no-access-log")
            gateways.append(
                subprocess.Popen(cmd, env=env, stdout=(work / f"gw{port}.log").open("wb"), stderr=subprocess.STDOUT)
            )
        for port in ports:
            for _ in range(300):
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.2)
        ok, png = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8))
        image = png.tobytes()
        kinds = ["valid", "valid", "valid", "unknown", "revoked", "scoped", "noimage", "limited"]
        statuses: Counter[tuple[str, int]] = Counter()
        stop = threading.Event()

        def client(n: int) -> None:
            session = requests.Session()
            for i in itertools.count(n):
                if stop.is_set():
                    return
                kind = kinds[i % len(kinds)]
                url = f"http://127.0.0.1:{ports[i % 3]}/v1/predict/yolov8n"
                k = f"yk_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}" if kind == "unknown" else key.get(kind, "")
                files = None if kind == "noimage" else {"image": ("a.jpg", image)}
                try:
                    status = session.post(
                        url, headers={"x-api-key": k or key["valid"]}, files=files, timeout=60
                    ).status_code
                except requests.RequestException:
                    status = -1
                statuses[(kind, status)] += 1

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.threads)]
        for t in threads:
            t.start()
        names = ["triton", "redis", "gateway1", "gateway2", "gateway3"]
        pids = [triton.process.pid, redis.process.pid, *(g.pid for g in gateways)]
        curve: list[list[float]] = []
        start = time.monotonic()
        print("minute " + " ".join(f"{n:>9}" for n in names), flush=True)
        while time.monotonic() - start < args.minutes * 60:
            curve.append([rss_mib(p) for p in pids])
            print(f"{(time.monotonic() - start) / 60:6.1f} " + " ".join(f"{m:9.1f}" for m in curve[-1]), flush=True)
            time.sleep(args.sample_s)
        curve.append([rss_mib(p) for p in pids])
        stop.set()
        for t in threads:
            t.join(90)
        half = curve[len(curve) // 2]
        growth = {n: curve[-1][i] - half[i] for i, n in enumerate(names)}
        bad = {k: v for k, v in statuses.items() if k[1] >= 500 and k[1] != 503 or k[1] == -1}
        print(f"\nstatuses (kind, status): {dict(sorted(statuses.items()))}")
        print("growth over the second half (MiB): " + ", ".join(f"{n} {g:+.1f}" for n, g in growth.items()))
        passed = not bad and all(g < 20 for g in growth.values())
        print("PASS" if passed else f"FAIL: {bad or growth}")
        return 0 if passed else 1
    finally:
        for g in gateways:
            g.terminate()
            g.wait(20)
        redis.stop()
        triton.stop()


if __name__ == "__main__":
    raise SystemExit(main())
