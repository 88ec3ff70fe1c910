"""Start, wait for and stop a local `tritonserver` on loopback.

The `nvidia-pytriton` wheel ships Triton 2.51 with the python backend. We run its binary directly on our own model
repository, the way the official container would, with two environment fixes found on this kind of machine:
the python-backend stub must see this virtual environment's `bin/` first on PATH (else it imports a mismatched
NumPy and tensors arrive garbled), and LD_LIBRARY_PATH must hold this interpreter's `lib/` and the wheel's libs.

Model control is explicit (issue #27): Triton loads everything in the repository at start (`--load-model=*`), then
only what the export worker asks it to load or unload (export/triton_control.py). Measured on Triton 2.51 here:
with `--strict-readiness=true`, /v2/health/ready answers 400 while any model loads and stays 400 after a failed load
or an unload, so readiness is not strict (the gateway judges it from the READY models); with `--exit-on-error=true`
one broken model directory stops Triton at start, so errors don't stop it (that model is UNAVAILABLE, the rest load).
With `admin_key`, the repository API (load, unload, index) needs the `admin-key` header, over HTTP and gRPC.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
# Accept the gateway's keepalive pings (gateway/triton/client.py CHANNEL_ARGS: every 60 s, also with no call in flight);
# Triton's defaults (pings only during calls, at most one per 5 min) answer them with GOAWAY too_many_pings.
# The Helm chart passes the same flags (tests/test_deploy.py checks they agree).
KEEPALIVE_ARGS = ("--grpc-keepalive-permit-without-calls=1", "--grpc-http2-min-recv-ping-interval-without-data=30000")


class TritonStartError(RuntimeError):
    pass


def control_args(admin_key: str = "") -> list[str]:
    """Explicit model control, everything in the repository loaded at start; a failed load stops nothing."""
    args = [
        "--model-control-mode=explicit",
        "--load-model=*",
        "--strict-readiness=false",
        "--exit-on-error=false",
    ]
    if admin_key:
        args += [
            f"--http-restricted-api=model-repository:admin-key={admin_key}",
            f"--grpc-restricted-protocol=model-repository:admin-key={admin_key}",
        ]
    return args


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, however it dies (uvicorn re-raises
    SIGTERM after draining, which ends `make serve` without running its `finally`; a SIGKILL runs nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class TritonServer:
    """A running tritonserver process and where it listens."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    admin_key: str = field(default="", repr=False)

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def model_states(self) -> dict[str, str]:
        """Model name → state in the repository index ("READY", "UNAVAILABLE", "LOADING"; "" before a first load)."""
        headers = {"admin-key": self.admin_key} if self.admin_key else {}
        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", b"{}", headers, method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            return {m["name"]: m.get("state", "") for m in json.loads(r.read())}

    def started(self) -> bool:
        """Up, and done with the loads it started with (none LOADING)."""
        if not self.ready():
            return False
        try:
            return all(state != "LOADING" for state in self.model_states().values())
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM tritonserver by its own pid (it drains and unloads), SIGKILL after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._log_file:
            self._log_file.close()
            self._log_file = None


def pytriton_root() -> Path:
    import pytriton

    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonStartError(f"tritonserver binary not found under {root}; is nvidia-pytriton installed?")
    return root


def backend_directory(cache: Path) -> Path:
    """A backends/ folder with the python backend and the stub built for this interpreter (as PyTriton does)."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonStartError(f"no python-backend stub for Python {version} in {stub.parent.parent}")
    python = cache / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.name == "__pycache__":
            continue
        link = python / item.name
        if not link.exists():
            link.symlink_to(item)
    target = python / stub.name
    if not target.exists() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    return cache / "backends"


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    import pytriton

    libs = [
        sysconfig.get_config_var("LIBDIR") or "",
        str(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"),
    ]
    existing = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + ([existing] if existing else []))
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return env


# The local stack runs the gateway beside Triton on one host, so tensors go through Triton's system shared memory
# and inference requests over its HTTP port (gateway/triton/shm.py, gateway/triton/http.py): 1-2 ms less gateway CPU per
# image than gRPC messages (bench/RESULTS.md, "Cost per image"). 256 MiB of /dev/shm covers 64 requests in flight.
SHARED_MEMORY_BYTES = 256 * 2**20


def gateway_environment(server: TritonServer, shared_memory: bool = True) -> dict[str, str]:
    """GATEWAY_* variables that point a gateway on this host at `server`."""
    env = {"GATEWAY_TRITON_URL": server.grpc_url}
    if shared_memory:
        env |= {"GATEWAY_TRITON_SHM_BYTES": str(SHARED_MEMORY_BYTES), "GATEWAY_TRITON_HTTP_URL": server.http_url}
    return env


def gateway_command(host: str, port: int, *extra: str) -> list[str]:
    """The command line that runs the gateway app (uvicorn, app factory) on host:port, plus uvicorn's `extra` flags;
    with the image's protocol (deploy/Dockerfile), which drains connections at shutdown (gateway/server.py)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "gateway.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        *extra,
        "--http=gateway.server:DrainingProtocol",
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start(
    repository: Path,
    *,
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
    cache: Path = Path(".triton"),
    log_path: Path | None = None,
    timeout: float = 600.0,
    echo: bool = False,
    extra_args: list[str] | None = None,
    admin_key: str = "",
) -> TritonServer:
    """Start tritonserver on loopback and return once it answers and has loaded (or failed to load) every model in
    the repository. admin_key: restrict the repository API to callers that send it (header `admin-key`)."""
    repository = repository.resolve()
    if not repository.is_dir() or not any(repository.glob("*/config.pbtxt")):
        raise TritonStartError(f"{repository} holds no models (no */config.pbtxt); run `make export` first")
    cache = cache.resolve()
    backends = backend_directory(cache)
    ports = [p or free_port() for p in (http_port, grpc_port, metrics_port)]
    log_path = (log_path or cache / "tritonserver.log").resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        *control_args(admin_key),
        f"--http-address={LOOPBACK}",
        f"--http-port={ports[0]}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={ports[1]}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        f"--metrics-address={LOOPBACK}",
        f"--metrics-port={ports[2]}",
        "--exit-timeout-secs=10",
        "--log-info=true",
        *KEEPALIVE_ARGS,
        *(extra_args or []),
    ]
    log_file = None if echo else open(log_path, "wb")  # noqa: SIM115 - closed by TritonServer.stop
    process = subprocess.Popen(
        command,
        env=server_environment(),
        stdout=None if echo else log_file,
        stderr=subprocess.STDOUT if not echo else None,
        start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop Triton ourselves
        preexec_fn=_die_with_parent,
    )
    server = TritonServer(process, ports[0], ports[1], ports[2], log_path, log_file, admin_key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise TritonStartError(f"tritonserver exited with code {process.returncode}:\n{tail}")
        if server.started():
            return server
        time.sleep(0.2)
    tail = server.log_tail()
    server.stop()
    raise TritonStartError(f"tritonserver not ready after {timeout:.0f} s:\n{tail}")
