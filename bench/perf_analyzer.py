"""Triton's own load generator, `perf_analyzer`: installed under .triton/perf-analyzer, run per level, CSV parsed.

The PyPI `perf-analyzer` wheels need a newer glibc than Debian 12's. The binary inside the tritonclient==2.51.0
manylinux wheel runs here once it finds libb64.so.0d (Debian's `libb64-0d`) and libcudart.so.12 (PyPI's
`nvidia-cuda-runtime-cu12`; linked for CUDA shared memory, which the benchmark does not use). The main venv is
never touched: the wheel is downloaded and unzipped, not installed (the venv keeps tritonclient 2.73), and the CUDA
runtime goes into its own `pip install --target` folder, because the venv already holds torch's CUDA 13 wheels in
the same `nvidia` namespace and every later `pip install` there would have to keep a stray CUDA 12 runtime consistent.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.models import ROOT

HOME = ROOT / ".triton" / "perf-analyzer"
# Both pinned with their hashes in requirements/perf-analyzer.txt (`make lock`); the versions are chosen in
# requirements/lockfile.py: Triton 2.51's client, and CUDA 12.6, the toolkit Triton 2.51 (release 24.10) was built with.
LOCKED = ROOT / "requirements" / "perf-analyzer.txt"
TRITONCLIENT = "tritonclient"
CUDART = "nvidia-cuda-runtime-cu12"
WINDOWS = 3  # perf_analyzer judges stability over its last 3 windows; it reports their merged numbers

# CSV column (microseconds per request) -> stage name in the result rows (milliseconds).
STAGES = {
    "Client Send": "client_send",
    "Network+Server Send/Recv": "network_and_server_send_recv",
    "Server Queue": "server_queue",
    "Server Compute Input": "server_compute_input",
    "Server Compute Infer": "server_compute_infer",
    "Server Compute Output": "server_compute_output",
    "Client Recv": "client_recv",
}


class ToolError(RuntimeError):
    """perf_analyzer could not be installed or started; the message says what to do."""


class RunError(RuntimeError):
    """perf_analyzer ran and failed (its output tail is in the message)."""


@dataclass(frozen=True)
class Tool:
    binary: Path
    env: dict[str, str]


def tool(home: Path = HOME) -> Tool:
    """Where the binary lives and the environment it needs (LD_LIBRARY_PATH with the private CUDA runtime)."""
    libs = [str(home / "cuda" / "nvidia" / "cuda_runtime" / "lib")]
    existing = os.environ.get("LD_LIBRARY_PATH")
    return Tool(
        home / "bin" / "perf_analyzer",
        {**os.environ, "LD_LIBRARY_PATH": ":".join(libs + ([existing] if existing else []))},
    )


def version(t: Tool) -> str:
    """`perf_analyzer --version`, or ToolError with the loader's complaint (a missing library, usually)."""
    if not t.binary.exists():
        raise ToolError(f"{t.binary} is missing; run `python -m bench tools` (or `make bench-tools`)")
    out = subprocess.run(
        [str(t.binary), "--version"], env=t.env, capture_output=True, text=True, timeout=30, check=False
    )
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0 or "Perf Analyzer Version" not in text:
        raise ToolError(
            f"{t.binary} does not start: {text[-500:]}\nrun `python -m bench tools` to install what it needs"
        )
    return text.splitlines()[-1].removeprefix("Perf Analyzer Version ").strip()


def _run(cmd: list[str], say: Callable[[str], None], what: str, hint: str) -> None:
    say("$ " + " ".join(cmd))
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False
    )
    if out.returncode != 0:
        raise ToolError(f"{what} failed ({hint}):\n{(out.stdout + out.stderr).strip()[-1500:]}")


def locked(name: str, folder: Path) -> Path:
    """A requirements file holding only `name`'s entry of the lock (version and hashes), for `pip --require-hashes`."""
    entry: list[str] = []
    for line in LOCKED.read_text().splitlines():
        if line.startswith(f"{name}=="):
            entry = [line]
        elif entry and line.startswith("    --hash="):
            entry.append(line)
        elif entry:
            break
    if not entry:
        raise ToolError(f"{name} is not in {LOCKED}; run `make lock`")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.txt"
    path.write_text("\n".join(entry) + "\n")
    return path


def _libb64_present() -> bool:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    return "libb64.so.0d" in out.stdout


def install(home: Path = HOME, say: Callable[[str], None] = print) -> Tool:
    """Download, unpack and check perf_analyzer (idempotent: a working install returns at once)."""
    t = tool(home)
    try:
        version(t)
        return t
    except ToolError:
        pass  # install what is missing below
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    if not t.binary.exists():
        wheels = home / "wheel"
        wheels.mkdir(parents=True, exist_ok=True)
        if not list(wheels.glob("tritonclient-2.51.0-*.whl")):
            _run(
                [
                    *pip,
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--require-hashes",
                    "-r",
                    str(locked(TRITONCLIENT, home)),
                    "-d",
                    str(wheels),
                ],  # fmt: skip
                say,
                f"downloading {TRITONCLIENT}",
                "is PyPI reachable? offline, copy the wheel into " + str(wheels),
            )
        (wheel,) = wheels.glob("tritonclient-2.51.0-*.whl")
        with zipfile.ZipFile(wheel) as z:
            member = next((n for n in z.namelist() if n.endswith(".data/data/bin/perf_analyzer")), None)
            if member is None:
                raise ToolError(f"{wheel.name} holds no perf_analyzer binary (no wheel with one for this platform?)")
            say(f"unpacking {member} from {wheel.name}")
            t.binary.parent.mkdir(parents=True, exist_ok=True)
            part = t.binary.with_suffix(
                f".part{os.getpid()}"
            )  # renamed into place: a concurrent run never sees half a file
            with z.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
        part.chmod(0o755)
        os.replace(part, t.binary)
    if not _libb64_present():
        if not shutil.which("apt-get"):
            raise ToolError("libb64.so.0d is missing and there is no apt-get; install libb64 (Debian: libb64-0d)")
        if os.geteuid() != 0:
            raise ToolError("libb64.so.0d is missing; as root: apt-get install libb64-0d")
        say("installing Debian's libb64-0d (perf_analyzer links libb64.so.0d)")
        hint = "needs a Debian mirror; by hand: apt-get update && apt-get install libb64-0d"
        _run(["apt-get", "update", "-qq"], say, "apt-get update", hint)
        _run(
            ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "libb64-0d"],
            say,
            "apt-get install libb64-0d",
            hint,
        )
    cudart = home / "cuda" / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12"
    if not cudart.exists():
        say(f"installing {CUDART} into {home / 'cuda'} (its own folder, not the venv)")
        part = home / f"cuda.part{os.getpid()}"
        _run(
            [
                *pip,
                "install",
                "-q",
                "--no-deps",
                "--require-hashes",
                "--target",
                str(part),
                "-r",
                str(locked(CUDART, home)),
            ],  # fmt: skip
            say,
            f"pip install {CUDART}",
            "is PyPI reachable?",
        )
        shutil.rmtree(home / "cuda", ignore_errors=True)
        part.rename(home / "cuda")
    say(f"perf_analyzer {version(t)} ready: {t.binary}")
    return t


def write_input(tensor: NDArray[np.uint8], folder: Path, name: str = "image") -> Path:
    """An --input-data folder: one raw file per input, the batch-1 tensor in row-major order.

    tensor: (H, W, 3) uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(np.ascontiguousarray(tensor).tobytes())
    return folder


def window_ms(seconds: float) -> int:
    """Measurement window so that the level's 3 windows fill --seconds (at least 1 s each: shorter ones often count
    no request)."""
    return max(1000, round(seconds * 1000 / WINDOWS))


def command(
    t: Tool,
    model: str,
    url: str,
    shape: tuple[int, ...],
    data: Path,
    concurrency: int,
    csv_path: Path,
    bound: list[str],
) -> list[str]:
    return [
        str(t.binary),
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        url,
        "-b",
        "1",
        "--shape",
        f"image:{','.join(map(str, shape))}",
        "--input-data",
        str(data),
        # explicit end: sync mode, one thread per request in flight
        f"--concurrency-range={concurrency}:{concurrency}:1",
        *bound,
        "-f",
        str(csv_path),
        "--verbose-csv",
    ]


def time_bound(seconds: float) -> list[str]:
    """Options that end a level after 3 windows filling `seconds`, whatever their spread."""
    # perf_analyzer repeats windows until 3 agree within -s %, and fails after --max-trials; we bound each level by
    # time like the other modes instead, so any 3 windows are accepted (a stability threshold it always meets).
    return [
        "--measurement-mode=time_windows",
        f"--measurement-interval={window_ms(seconds)}",
        f"--max-trials={WINDOWS}",
        "--stability-percentage=100000",
    ]


def parse_csv(text: str) -> dict[int, dict[str, Any]]:
    """perf_analyzer's -f CSV (one row per concurrency, microseconds) as result summaries keyed by concurrency."""
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        ms = {k: float(v) / 1000 for k, v in row.items() if k and v and k.endswith("latency")}
        out[int(row["Concurrency"])] = {
            "throughput": round(float(row["Inferences/Second"]), 3),
            "p50_ms": round(ms["p50 latency"], 2),
            "p90_ms": round(ms["p90 latency"], 2),
            "p99_ms": round(ms["p99 latency"], 2),
            "mean_ms": round(ms.get("Avg latency", float("nan")), 2),
            "stages_ms": {name: round(float(row[col]) / 1000, 3) for col, name in STAGES.items() if row.get(col)},
        }
    return out


def request_count(stdout: str) -> int:
    """The client-side request count of the (single) level perf_analyzer printed."""
    found = re.search(r"Client:\s*\n\s*Request count: (\d+)", stdout)
    if not found:
        raise RunError(f"no request count in perf_analyzer's output:\n{stdout[-1500:]}")
    return int(found.group(1))


def warm_up(t: Tool, model: str, url: str, shape: tuple[int, ...], data: Path, requests: int) -> None:
    """`requests` requests at concurrency 1, results discarded (perf_analyzer 2.51 has no warm-up option)."""
    cmd = command(
        t, model, url, shape, data, 1, data.parent / "perf-analyzer-warmup.csv", [f"--request-count={requests}"]
    )
    _execute(cmd, t, timeout=600)


def level(
    t: Tool, model: str, url: str, shape: tuple[int, ...], data: Path, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One bounded run at `concurrency`, as the same summary `load.Run.summary()` gives the other modes."""
    csv_path = data.parent / f"perf-analyzer-c{concurrency}.csv"
    started = time.perf_counter()
    cmd = command(t, model, url, shape, data, concurrency, csv_path, time_bound(seconds))
    # The timeout only guards against a hang: 3 windows plus the requests still in flight when the last one closes.
    out = _execute(cmd, t, timeout=WINDOWS * window_ms(seconds) / 1000 + 300)
    (summary,) = parse_csv(csv_path.read_text()).values()
    n = request_count(out.stdout)
    # perf_analyzer stops at its first failed request (exit code != 0), so a finished level has no errors.
    return {
        **summary,
        "requests": n,
        "ok": n,
        "errors": 0,
        "statuses": {"200": n},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _execute(cmd: list[str], t: Tool, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(cmd, env=t.env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"perf_analyzer did not finish within {timeout:.0f} s: {' '.join(cmd)}") from exc
    if out.returncode != 0:
        raise RunError(f"perf_analyzer exited with {out.returncode}:\n{(out.stdout + out.stderr).strip()[-1500:]}")
    return out
