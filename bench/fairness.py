"""Fairness under hostile bodies, over real sockets against a real gateway (RELIABILITY.md, "Fairness").

    python -m bench.fairness --repository .triton/test-cache/repository-<hash> [--slow 64] [--junk 4]

One Triton (yolov8n only) and one gateway on loopback, started here and stopped by their pids. Two scenarios:

1. Slow bodies: key A (10 requests/s) opens `--slow` multipart uploads at 10 per second, each declaring a 64 KiB
   body and sending 2 bytes every 0.5 s. Once they are all open, key B sends three ordinary predictions. Prints
   B's statuses and latencies, how many slow uploads were refused at once (and with what), how many were still open
   after `--hold-s`, and what the others ended with and when.
2. Junk files: `--junk` uploads of 20 MiB that start with a JPEG marker and are zeros after it, one after another,
   while /healthz is asked every 20 ms. Prints /healthz's latency (p50, p99, max) while they arrive, and their
   statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.models import ROOT
from gateway.keys.auth import KeyDraft, create_key
from tritonlocal import launcher

BOUNDARY = "fairnessboundary"


def _gateway(triton: launcher.TritonServer, work: Path, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = launcher.free_port()
    log = open(work / "gateway.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        launcher.gateway_command("127.0.0.1", port, "--no-access-log"),
        cwd=ROOT,
        env={**os.environ, **launcher.gateway_environment(triton), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((work / "gateway.log").read_text())
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("gateway did not start")


async def _slow_upload(port: int, key: str, hold_s: float, record: dict[str, object]) -> None:
    """One multipart upload that declares 64 KiB and sends 2 bytes every 0.5 s until answered or `hold_s` passes."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    length = 64 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(
        (
            f"POST /v1/predict/yolov8n HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        + head
    )
    await writer.drain()
    answer = asyncio.ensure_future(reader.readline())
    try:
        while time.monotonic() - started < hold_s:
            done, _ = await asyncio.wait({answer}, timeout=0.5)
            if done:
                line = answer.result().decode(errors="replace").split()
                record["status"] = int(line[1]) if len(line) > 1 and line[1].isdigit() else "closed"
                record["after_s"] = round(time.monotonic() - started, 1)
                return
            try:
                writer.write(b"\0\0")
                await writer.drain()
            except ConnectionError:
                record["status"], record["after_s"] = "reset", round(time.monotonic() - started, 1)
                return
        record["status"] = "open"
    finally:
        answer.cancel()
        writer.close()


async def _slow_bodies(url: str, key_a: str, key_b: str, count: int, hold_s: float, image: bytes) -> None:
    port = int(url.rsplit(":", 1)[1])
    records: list[dict[str, object]] = [{} for _ in range(count)]
    tasks = []
    for i in range(count):  # key A's rate is 10 requests/s: open them at that pace, as the review did
        tasks.append(asyncio.ensure_future(_slow_upload(port, key_a, hold_s, records[i])))
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    at_once = {i for i, r in enumerate(records) if "status" in r}
    refused = sorted(str(records[i]["status"]) for i in at_once)
    print(f"slow uploads: {count} opened, {len(at_once)} answered at once: {refused}")

    def predict() -> tuple[int, float]:
        t = time.perf_counter()
        r = requests.post(
            f"{url}/v1/predict/yolov8n", headers={"x-api-key": key_b}, files={"image": image}, timeout=120
        )
        return r.status_code, time.perf_counter() - t

    for i in range(3):
        code, seconds = await asyncio.to_thread(predict)
        print(f"key B request {i + 1}: {code} in {seconds * 1000:.0f} ms")
    await asyncio.gather(*tasks)
    still = sum(1 for r in records if r.get("status") == "open")
    print(f"slow uploads still open after {hold_s:.0f} s: {still} of {count}")
    ended: dict[str, list[float]] = {}
    for i, r in enumerate(records):
        if i not in at_once and r.get("status") != "open":
            ended.setdefault(str(r["status"]), []).append(float(str(r["after_s"])))
    for status, times in sorted(ended.items()):
        print(f"  the others ended {status}: {len(times)}, after {min(times):.1f}-{max(times):.1f} s")


def _junk(url: str, key: str, count: int) -> None:
    body = b"\xff\xd8\xff" + b"\0" * (20 * 2**20 - 1024)
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with requests.Session() as s:
            while not done.is_set():
                t = time.perf_counter()
                s.get(f"{url}/healthz", timeout=30)
                latencies.append(time.perf_counter() - t)
                time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    statuses = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            r = requests.post(
                f"{url}/v1/predict/yolov8n", headers={"x-api-key": key}, files={"image": ("a.jpg", body)}, timeout=120
            )
            statuses.append(f"{r.status_code} in {(time.perf_counter() - t) * 1000:.0f} ms")
    finally:
        done.set()
        thread.join()
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"junk 20 MiB uploads: statuses {statuses}; /healthz during them: {len(ms)} probes, "
        f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--slow", type=int, default=64)
    parser.add_argument("--hold-s", type=float, default=75.0)
    parser.add_argument("--junk", type=int, default=4)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fairness-"))
    repo = work / "repository"
    repo.mkdir()
    (repo / "yolov8n").symlink_to((args.repository / "yolov8n").resolve())
    triton = launcher.start(repo, log_path=work / "triton.log")
    gateway = None
    try:
        keys = work / "keys.json"
        _, key_a = create_key(keys, KeyDraft("hostile", rate=10))
        _, key_b = create_key(keys, KeyDraft("ordinary", rate=10))
        url, gateway = _gateway(triton, work, {"GATEWAY_KEYS_FILE": str(keys)})
        image = (Path(__import__("ultralytics").utils.ASSETS) / "bus.jpg").read_bytes()
        warm = requests.post(
            f"{url}/v1/predict/yolov8n", headers={"x-api-key": key_b}, files={"image": image}, timeout=120
        )
        print(f"warm-up: {warm.status_code}")
        if args.slow:
            asyncio.run(_slow_bodies(url, key_a, key_b, args.slow, args.hold_s, image))
        if args.junk:
            time.sleep(1.1)  # key B's bucket refills
            _junk(url, key_b, args.junk)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        triton.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
