"""Real live sources on loopback for the stream tests: Debian's ffmpeg (a test clip, its HLS playlist served by a
local HTTP server, an MJPEG stream over HTTP) and GStreamer's RTSP server (through Debian's python3-gi). The Makefile's
test tools target installs them; outside CI a test without them is skipped with the reason, under CI it fails."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RTSP_SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
# RTP/JPEG wants 4:2:0 frames (I420); a live test pattern at the size and rate the benchmark names
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=25/1,"
                   "format=I420 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""


def need(*binaries: str) -> None:
    """Skip (fail under CI, where `make test` installs them) when a binary the source needs is missing."""
    missing = [b for b in binaries if not shutil.which(b)]
    if missing:
        message = f"{', '.join(missing)} not installed (`make test` installs ffmpeg and GStreamer's RTSP server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def need_rtsp() -> None:
    need("ffmpeg")
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    if subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode != 0:
        message = "GStreamer's RTSP server for Python is not installed (apt: gir1.2-gst-rtsp-server-1.0, python3-gi)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:`port`, read from /proc (no connection: ffmpeg's `-listen 1` serves
    the first client that connects, and a probe would be that client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"source exited with {process.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


def clip(path: Path, seconds: float = 4, size: str = "640x360", fps: int = 25) -> Path:
    """An H.264 MP4 test clip (a moving test pattern), a key frame every second."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
         "-t", str(seconds), "-c:v", "libx264", "-g", str(fps), "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


@dataclass
class Served:
    """A source process on loopback and the URL to read it at; stopped by its own process id."""

    url: str
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def hls(folder: Path, video: Path) -> Served:
    """The clip as an HLS playlist (its H.264 stream copied into 1 s segments: the frames decode to exactly the
    clip's), served by `python -m http.server`."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(video), "-c", "copy", "-f", "hls", "-hls_time", "1",
         "-hls_list_size", "0", "-hls_playlist_type", "vod", str(folder / "index.m3u8")],
        check=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, process)
    return Served(f"http://127.0.0.1:{port}/index.m3u8", process, port)


def mjpeg(video: Path, port: int | None = None) -> Served:
    """The clip looped in real time as an MJPEG stream over HTTP (multipart/x-mixed-replace), served by ffmpeg
    itself to one client."""
    port = port or free_port()
    process = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video), "-c:v", "mjpeg",
         "-q:v", "5", "-f", "mpjpeg", "-listen", "1", f"http://127.0.0.1:{port}/stream.mjpg"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, process)
    return Served(f"http://127.0.0.1:{port}/stream.mjpg", process, port)


def rtsp(folder: Path) -> Served:
    """GStreamer's RTSP server with a live 640×360 25 fps test pattern at rtsp://127.0.0.1:<port>/live."""
    script = folder / "rtsp_server.py"
    script.write_text(RTSP_SERVER)
    port = free_port()
    process = subprocess.Popen(
        ["/usr/bin/python3", str(script), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, process)
    return Served(f"rtsp://127.0.0.1:{port}/live", process, port)


Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


class Site:
    """An HTTP server on 127.0.0.1 (a thread of the test process) answering each path from `routes`: an answer, or a
    function that makes it when asked (it may wait); other paths get 404. With `split`, a body is sent as its first
    `split` bytes, then the rest a moment later (two TCP segments: a reader must not judge a body by its first)."""

    def __init__(self, routes: dict[str, Answer | Callable[[], Answer]], split: int = 0) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                route = routes.get(self.path, (404, {}, b""))
                status, headers, body = route() if callable(route) else route
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if split:
                    self.wfile.write(body[:split])
                    self.wfile.flush()
                    time.sleep(0.2)  # the server's pacing, not a test's wait
                self.wfile.write(body[split:])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
