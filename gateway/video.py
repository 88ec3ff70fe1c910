"""Video files: recognised by their bytes, opened with OpenCV's FFmpeg backend, read frame by frame exactly as
Ultralytics' `LoadImagesAndVideos` reads them, and checked against the limits before any frame is decoded.

Synchronous functions, run in a worker thread by `video_flow`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway import pipeline
from gateway.errors import PayloadTooLarge, UnprocessableImage
from gateway.pipeline import Prepared
from gateway.settings import Settings
from gateway.triton import ModelInfo

SNIFF_BYTES = 64
# ISO-BMFF brands of still images (HEIC, AVIF): the same `ftyp` box as MP4/MOV, but not videos.
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
# QuickTime files may open with one of these atoms instead of `ftyp`.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff(head: bytes) -> str | None:
    """The container named by a file's first bytes ("MP4/MOV", "WebM/MKV" or "AVI"), or None when not a video."""
    if head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else "MP4/MOV"
    if head[4:8] in _QUICKTIME_ATOMS:
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM/MKV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


SUFFIX = {"MP4/MOV": ".mp4", "WebM/MKV": ".mkv", "AVI": ".avi"}  # FFmpeg probes the bytes; the name is only a hint


def spool(source: IO[bytes], container: str) -> str:
    """Copy the upload to a named temporary file (in TMPDIR) for FFmpeg, which reads files by name; returns its path.
    The caller deletes it (`remove`)."""
    fd, path = tempfile.mkstemp(prefix="gateway-video-", suffix=SUFFIX[container])
    try:
        with os.fdopen(fd, "wb") as out:
            source.seek(0)
            shutil.copyfileobj(source, out, 1024 * 1024)
    except BaseException:
        remove(path)
        raise
    return path


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Meta:
    """What the container declares. frames: frames to analyse, Ultralytics' int(frame count / vid_stride); 0 when
    the container does not say (then frames are read until the video ends, up to the frame limit)."""

    container: str
    width: int
    height: int
    fps: float  # 0 when unknown (then `time` is null)
    declared_frames: int
    vid_stride: int

    @property
    def frames(self) -> int:
        return self.declared_frames // self.vid_stride

    def public(self) -> dict[str, Any]:
        duration = self.declared_frames / self.fps if self.fps > 0 and self.declared_frames > 0 else None
        return {
            "container": self.container,
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 6) if self.fps > 0 else None,
            "frame_count": self.declared_frames or None,
            "duration": round(duration, 6) if duration is not None else None,
            "vid_stride": self.vid_stride,
        }


def open_video(path: str, container: str, vid_stride: int, settings: Settings) -> tuple[cv2.VideoCapture, Meta]:
    """The capture and its declared properties, refused (413) when they pass a limit; nothing is decoded here."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise UnprocessableImage(
            f"The {container} video could not be opened: the file is truncated or damaged (an MP4 needs its index, "
            "written at the end), or its codec is not supported. Send a complete MP4, WebM, MOV, AVI or MKV file."
        )
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = cap.get(cv2.CAP_PROP_FPS)
    meta = Meta(
        container,
        _int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        _int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        fps if math.isfinite(fps) and fps > 0 else 0.0,
        _int(count),
        vid_stride,
    )
    try:
        check_pixels(meta.width, meta.height, settings.max_pixels)
        if meta.fps and meta.declared_frames / meta.fps > settings.max_video_seconds:
            raise PayloadTooLarge(
                f"The video lasts {meta.declared_frames / meta.fps:.1f} s; the limit is "
                f"{settings.max_video_seconds:g} s (GATEWAY_MAX_VIDEO_SECONDS). Trim the video and send the parts."
            )
        if meta.frames > settings.max_video_frames:
            raise frame_limit(meta.frames, settings.max_video_frames, vid_stride)
    except BaseException:
        cap.release()
        raise
    return cap, meta


def _int(value: float) -> int:
    return int(value) if math.isfinite(value) and 0 < value < 2**62 else 0


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"The video's frames are {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels per frame. Scale the video down and try again."
        )


def frame_limit(frames: int, limit: int, vid_stride: int) -> PayloadTooLarge:
    more = f"{frames} frames" if frames > limit else f"more than {limit} frames"
    return PayloadTooLarge(
        f"The video has {more} to analyse at vid_stride={vid_stride}; the limit is {limit} frames per request "
        f"(GATEWAY_MAX_VIDEO_FRAMES). Send a larger vid_stride (every n-th frame) or trim the video."
    )


@dataclass
class Reader:
    """Reading position in one video: source frames grabbed so far and frames analysed."""

    cap: cv2.VideoCapture
    meta: Meta
    grabbed: int = 0
    analysed: int = 0
    ended: bool = False
    frame_ms: list[float] = field(default_factory=list)

    def time(self, index: int) -> float | None:
        return round(index / self.meta.fps, 6) if self.meta.fps else None


@dataclass(frozen=True)
class Frame:
    """One analysed frame: its source frame index (0-based), timestamp (s) and model input."""

    index: int
    time: float | None
    item: Prepared
    prepare_ms: float


def read_chunk(reader: Reader, count: int, info: ModelInfo, size: int, rect: bool, settings: Settings) -> list[Frame]:
    """Up to `count` next frames, decoded and made model inputs, as Ultralytics' loader reads them: `vid_stride`
    grabs then one retrieve per frame (source frames n-1, 2n-1, ...), stopping after the declared frames / stride
    (when declared) or when a grab or retrieve fails (`reader.ended`). Past the frame limit: PayloadTooLarge."""
    out: list[Frame] = []
    meta, cap = reader.meta, reader.cap
    while len(out) < count and not reader.ended:
        if meta.frames and reader.analysed >= meta.frames:
            reader.ended = True
            break
        t0 = time.perf_counter()
        ok = False
        for _ in range(meta.vid_stride):
            ok = cap.grab()
            if not ok:
                break
            reader.grabbed += 1
        retrieved: Any = None
        if ok:
            ok, retrieved = cap.retrieve()
        if not ok or retrieved is None:
            reader.ended = True
            break
        image: NDArray[np.uint8] = np.asarray(retrieved, dtype=np.uint8)  # BGR (H, W, 3), as Ultralytics gets it
        if reader.analysed >= settings.max_video_frames:  # the container's count was missing or wrong
            raise frame_limit(reader.analysed + 1, settings.max_video_frames, meta.vid_stride)
        index = reader.grabbed - 1
        seconds = reader.time(index)
        if seconds is not None and seconds > settings.max_video_seconds:
            raise PayloadTooLarge(
                f"The video lasts more than {settings.max_video_seconds:g} s (GATEWAY_MAX_VIDEO_SECONDS). "
                "Trim the video and send the parts."
            )
        check_pixels(image.shape[1], image.shape[0], settings.max_pixels)
        tensor, box = pipeline.model_input(image, info, size, rect, settings.max_pixels)
        reader.analysed += 1
        out.append(Frame(index, seconds, Prepared(None, tensor, box), (time.perf_counter() - t0) * 1000))
    return out


def broken(reader: Reader) -> UnprocessableImage | None:
    """The error for a video that yielded no frame, or ended well before its declared frame count (truncated or
    damaged); None when it was read whole. Some containers only estimate their frame count (from the duration), so
    a shortfall of up to 2 source frames or 1 % is not an error: Ultralytics stops there silently too."""
    meta = reader.meta
    if reader.analysed == 0:
        return UnprocessableImage(
            f"The {meta.container} video contains no frame that could be decoded. Send a video with at least one "
            "frame in a supported codec (H.264, HEVC, VP8/VP9, AV1, MPEG-4, MJPEG)."
        )
    expected = meta.frames * meta.vid_stride
    if meta.frames and reader.analysed < meta.frames and expected - reader.grabbed > max(2, expected // 100):
        return UnprocessableImage(
            f"The {meta.container} video broke off after {reader.grabbed} of its {meta.declared_frames} frames: the "
            f"file is truncated or damaged. The {reader.analysed} frame(s) read are in the response."
        )
    return None
