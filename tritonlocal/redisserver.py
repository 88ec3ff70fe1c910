"""A real Redis server on loopback for `make serve STATE=redis` and the tests: password, own folder, stopped by pid.

The binary is Debian's `redis-server` (the Makefile installs it with apt when missing).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tritonlocal.launcher import _die_with_parent

LOOPBACK = "127.0.0.1"


@dataclass
class RedisServer:
    port: int
    password: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The URL without the password (give the password separately: GATEWAY_REDIS_PASSWORD)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def url_with_password(self) -> str:
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL (fault injection)."""
        self.process.kill()
        self.process.wait(5)

    def restart(self) -> None:
        """Start again on the same port, folder and password (after `kill` or `stop`)."""
        self.process = _spawn(self.port, self.password, self.folder)
        _wait_ready(self)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        raise RuntimeError("redis-server not found: install it with `apt-get install redis-server` (make does this)")
    return found


def _spawn(port: int, password: str, folder: Path) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "redis.conf"  # the password goes in a 0600 file, not on the command line (ps shows that)
    config.write_text(
        f"bind {LOOPBACK}\nport {port}\nrequirepass {password}\nprotected-mode yes\ndir {folder}\n"
        "appendonly yes\nappendfsync everysec\nsave 60 1\nlogfile redis.log\ndaemonize no\n"
    )
    config.chmod(0o600)
    return subprocess.Popen(  # noqa: PLW1509 - preexec only sets the parent-death signal
        [binary(), str(config)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def _wait_ready(server: RedisServer, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.folder / "redis.log"
            raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:] if log.exists() else ''}")
        try:
            with socket.create_connection((LOOPBACK, server.port), timeout=1) as s:
                s.sendall(f"AUTH {server.password}\r\nPING\r\n".encode())
                reply = b""
                while b"\r\n" not in reply.partition(b"\r\n")[2] and len(reply) < 1000:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    reply += chunk
                if b"PONG" in reply:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"redis-server did not answer on port {server.port}")


def start(folder: Path, port: int = 0, password: str | None = None) -> RedisServer:
    """Start redis-server with a generated password (or `password`), persisting in `folder`."""
    port = port or free_port()
    password = password or secrets.token_urlsafe(24)
    server = RedisServer(port, password, folder, _spawn(port, password, folder))
    _wait_ready(server)
    return server
