"""A live source read in a thread of its own, as Ultralytics' stream loader reads it (OpenCV `VideoCapture`, FFmpeg
backend): newest frame wins, and a source that drops is reopened with backoff.

The thread grabs every frame the source sends (so the decoder and the socket never fall behind), retrieves only the
frames the stream analyses (every `vid_stride`-th, or at most `fps` a second) and keeps the newest of those in one
slot. The stream's loop takes it when it is ready for the next one; a frame replaced before it was taken is counted
as dropped, so the lag stays bounded by one inference whatever the source's rate. A source that reads faster than
real time (a file or a finished HLS playlist: it declares a frame count) is paced at its own frame rate.

A read that fails or times out (GATEWAY_STREAM_READ_TIMEOUT_S) closes the capture; the thread waits 0.5 s, doubled on
each failure up to GATEWAY_STREAM_BACKOFF_MAX_S, re-checks the URL (`reopen`, the URL guard) and opens it again
within GATEWAY_STREAM_OPEN_TIMEOUT_S. Frame indices go on counting across reconnects. An http(s) source is read
through the stream's relay (gateway/live/relay.py: every request FFmpeg makes, redirects and HLS segments included,
passes the URL guard); a destination it refuses becomes the error.

A reader's share of the gateway: one thread, at nice +10 (the requests' threads come first when CPU is short), with
one FFmpeg decoding thread (FFmpeg's default is one per CPU); its memory is the decoder's and one selected frame in the
slot, and a source whose declared frame size is over GATEWAY_MAX_PIXELS is refused at open (then retried with
backoff, like a source that does not answer). A replica runs at most GATEWAY_MAX_STREAMS readers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway.live.relay import Relay

FIRST_BACKOFF_S = 0.5
MAX_PACED_FPS = 240.0  # a declared rate above this is not believed (no pacing)
RATE_WINDOW_S = 2.0  # the input rate is measured over this long
NICE = 10  # the reading thread's niceness above the process's (as the video decoding threads)


@dataclass(frozen=True)
class Grabbed:
    """One frame to analyse: its index among the frames the source sent since the stream started (counted on
    from the stream's checkpoint after a takeover: gateway/live/resume.py), the BGR image
    (H, W, 3) uint8, and when it was read (time.monotonic())."""

    index: int
    image: NDArray[np.uint8]
    at: float


class Source:
    """The reading thread of one stream (see the module docstring). `reopen()` gives the URL to open next (it may
    raise to refuse it: the thread then reports the error and backs off); `wake()` is called, from the thread, when
    a frame is ready."""

    def __init__(
        self,
        reopen: Callable[[], str],
        wake: Callable[[], None],
        open_timeout_s: float,
        read_timeout_s: float,
        backoff_max_s: float,
        vid_stride: int = 1,
        fps: float = 0.0,
        max_pixels: int = 0,
        relay: Relay | None = None,
        first: int = 0,
    ) -> None:
        self._reopen, self._wake, self._relay = reopen, wake, relay
        self.open_timeout_s, self.read_timeout_s, self.backoff_max_s = open_timeout_s, read_timeout_s, backoff_max_s
        self.vid_stride, self.fps, self.max_pixels = vid_stride, fps, max_pixels
        self.first = first  # the index of this reader's first frame (a takeover goes on from the old owner's)
        self.state = "connecting"  # connecting, running, reconnecting, stopped
        self.error = ""
        self.read = 0  # frames the source sent (grabbed)
        self.dropped = 0  # selected frames replaced before the stream took them
        self.reconnects = 0
        self._slot: Grabbed | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._times: list[float] = []
        self._last_selected = 0.0
        self._thread = threading.Thread(target=self._run, name="stream-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def take(self) -> Grabbed | None:
        """The newest selected frame not taken yet, or None."""
        with self._lock:
            frame, self._slot = self._slot, None
        return frame

    @property
    def input_fps(self) -> float:
        """Frames a second the source sent, over the last RATE_WINDOW_S."""
        with self._lock:
            times = [t for t in self._times if t > time.monotonic() - RATE_WINDOW_S]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def _open(self) -> cv2.VideoCapture | None:
        try:
            url = self._reopen()
        except Exception as exc:  # refused by the guard, or the host no longer resolves
            self.error = str(getattr(exc, "message", exc))[:300]
            return None
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.read_timeout_s * 1000),
            cv2.CAP_PROP_N_THREADS,
            1,
        ]
        if self._relay is not None and url.lower().startswith(("http://", "https://")):
            self._relay.refused = ""
            url = self._relay.url(url)  # FFmpeg reads it from the relay, every hop checked (gateway/live/relay.py)
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            self.error = self._refused() or (
                "The source could not be opened (no answer, refused, or not a stream OpenCV reads)."
            )
            return None
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.max_pixels and width * height > self.max_pixels:
            cap.release()
            self.error = (
                f"The source's frames are {width}x{height}, over the gateway's limit of {self.max_pixels} pixels "
                "(GATEWAY_MAX_PIXELS)."
            )
            return None
        return cap

    def _run(self) -> None:
        try:  # raising one's own niceness needs no privilege (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        except OSError:
            pass
        backoff = FIRST_BACKOFF_S
        first = True
        while not self._stop.is_set():
            if not first:
                self.state = "reconnecting"
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, max(self.backoff_max_s, FIRST_BACKOFF_S))
                self.reconnects += 1
            first = False
            cap = self._open()
            if cap is None:
                continue
            try:
                if self._read(cap):
                    backoff = FIRST_BACKOFF_S
            finally:
                cap.release()
        self.state = "stopped"

    def _read(self, cap: cv2.VideoCapture) -> bool:
        """Read until the source fails or the thread is stopped; whether any frame came."""
        declared = cap.get(cv2.CAP_PROP_FPS)
        paced = cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0 and 0 < declared <= MAX_PACED_FPS
        opened, count = time.monotonic(), 0
        while not self._stop.is_set():
            if not cap.grab():
                if count or self._refused():
                    self.error = self._refused() or "The source stopped sending frames."
                return count > 0
            now = time.monotonic()
            count += 1
            self.read += 1
            if count == 1:
                self.state, self.error = "running", ""
            with self._lock:
                self._times = [t for t in self._times if t > now - RATE_WINDOW_S] + [now]
            if self._selected(now):
                ok, image = cap.retrieve()
                if ok and image is not None:
                    self._put(Grabbed(self.first + self.read - 1, np.asarray(image, dtype=np.uint8), now))
            if paced:  # a file or a finished playlist: no faster than real time
                ahead = opened + count / declared - time.monotonic()
                if ahead > 0 and self._stop.wait(ahead):
                    break
        return count > 0

    def _refused(self) -> str:
        """Why the relay refused a destination this capture was led to (gateway/live/relay.py), or ""."""
        return self._relay.refused if self._relay is not None else ""

    def _selected(self, now: float) -> bool:
        if self.fps > 0:
            if now - self._last_selected < 1.0 / self.fps:
                return False
            self._last_selected = now
            return True
        return self.read % self.vid_stride == 0

    def _put(self, frame: Grabbed) -> None:
        with self._lock:
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
        self._wake()
