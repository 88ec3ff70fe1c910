"""Video files: recognised by their bytes, spooled to TMPDIR (and swept from it), opened with OpenCV's FFmpeg
backend, and checked against the limits before any frame is decoded (videoreader.py reads their frames).

Before the decoder sees a frame, `scan` reads every packet without decoding it (OpenCV's raw mode) and checks the
size that packet's own headers declare (video_headers.py): a container's width and height are only a hint, the
decoder allocates what the bitstream says. Work on a video stops at a per-request budget of time (`Control`), and
within a second of the client leaving.

Synchronous functions, run in the video worker threads by the video flow (gateway/predict/video.py).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

import cv2
import numpy as np

from gateway.errors import BadRequest, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
from gateway.settings import Settings
from gateway.vision import video_headers
from gateway.vision.video_headers import CODECS, HELD, MJPEG, RAW, Header

log = logging.getLogger("gateway")

SNIFF_BYTES = 64
PREFIX = "gateway-video-"  # our spooled videos in TMPDIR: gateway-video-<pid>-<random>.<ext>
# One FFmpeg decoding thread per video (its default is one per CPU): a video then uses at most the core of the video
# worker that reads it, whatever its codec. Decoding is bit-exact whatever the thread count (the parity tests).
DECODER_PARAMS = [cv2.CAP_PROP_N_THREADS, 1]
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


def spool(source: IO[bytes], container: str, folder: str | None = None) -> str:
    """Copy the upload to a named temporary file (in `folder`, by default TMPDIR) for FFmpeg, which reads files by
    name; returns its path. The caller deletes it (`remove`)."""
    fd, path = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=SUFFIX[container], dir=folder)
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


def sweep(folder: str | None = None) -> int:
    """Remove the videos a previous gateway process left in TMPDIR when it died mid-request; the count removed.

    Only our own files (`PREFIX`), and only those of no living process: the process id in the name is ours (a
    restarted container reuses its ids, and this process has spooled nothing yet) or no longer runs. Files of other
    gateway processes sharing the folder (`uvicorn --workers`) are kept. Names without a process id are from earlier
    versions of the gateway, which left them the same way."""
    folder = folder or tempfile.gettempdir()
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        owner = entry.name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError as exc:
            log.warning("could not remove a left-over video %s: %s", entry.path, exc)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass
class Control:
    """When work on one video stops, read between frames by the worker threads and the flow: at `deadline`
    (time.monotonic()), the budget of `seconds` that `setting` sets, or as soon as `cancelled` is set (the client
    left, or the request ended). Cooperative: nothing is interrupted mid-frame or mid-batch."""

    deadline: float
    seconds: float
    setting: str
    cancelled: bool = False

    def expired(self) -> bool:
        return self.cancelled or time.monotonic() >= self.deadline

    def time_limit(self, analysed: int, decoded: int) -> PayloadTooLarge:
        """The error that ends a video whose time ran out, naming the limit and how to stay under it."""
        streamed = self.setting == "GATEWAY_VIDEO_STREAM_TIMEOUT_S"
        advice = "send it in parts" if streamed else "send stream=true (frames are then sent as they are done) or parts"
        return PayloadTooLarge(
            f"The video was not done within the {self.seconds:g} s a {'streamed' if streamed else 'non-streamed'} "
            f"answer may take ({self.setting}): {analysed} frame(s) analysed ({decoded} decoded), and they are in "
            f"this answer. For a longer video, {advice}."
        )


@dataclass(frozen=True)
class Scan:
    """What the packets of a video's stream declare, read without decoding: its codec, its packet count (one coded
    frame each) and the largest frame size any packet (or the codec configuration) declares, with the frames of that
    size its decoder may hold."""

    codec: str
    packets: int
    largest: Header
    # every packet a key frame (MJPEG, uncompressed) at the timestamp of its index: OpenCV's seek then lands on the
    # frame sequential reading would, so frames skipped by vid_stride need not be decoded
    seekable: bool = False

    def decoder_bytes(self, max_pixels: int) -> int:
        """The decoder's memory at its peak: `held` frames of the largest size (the limit when none is declared), at
        most 3 bytes a pixel (4:4:4, or 10-bit 4:2:0)."""
        return (self.largest.pixels or max_pixels) * 3 * self.largest.held


def scan(path: str, container: str, settings: Settings, control: Control) -> Scan:
    """Read every packet of the video stream without decoding it, and refuse the video before a frame is decoded
    when a packet declares a frame over the pixel limit (413), when it has more frames to decode than a request may
    (413), or when its codec is not one whose frame sizes can be checked (415)."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])  # raw mode: packets, never decoded
    try:
        if not cap.isOpened():
            raise _unopenable(container)
        tag = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
        codec = CODECS.get(tag.to_bytes(4, "little"))
        if codec is None:
            name = tag.to_bytes(4, "little").decode("latin-1").strip("\0") or "unknown"
            raise UnsupportedMediaType(
                f"The {container} video's codec ({name}) is not one the server decodes. Send H.264, HEVC, VP8, VP9, "
                "MPEG-4 or MJPEG video (e.g. re-encode it: ffmpeg -i in.mov -c:v libx264 out.mp4)."
            )
        width, height = _int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), _int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        largest = Header(width, height, 0)  # frames held: what the headers say, else the codec's most (below)
        check_pixels(width, height, settings.max_pixels)
        ok, extradata = cap.retrieve(None, int(cap.get(cv2.CAP_PROP_CODEC_EXTRADATA_INDEX)))
        if ok and extradata is not None:
            for header in video_headers.extradata_headers(codec, bytes(np.asarray(extradata).ravel())):
                largest = _bigger(largest, header, settings.max_pixels, None)
        packets, sizes, seekable = 0, set(), codec in (MJPEG, RAW)
        while cap.grab():
            if packets % 64 == 0 and control.expired():
                raise control.time_limit(0, 0)
            if packets >= settings.max_video_decoded_frames:
                limit = settings.max_video_decoded_frames
                raise PayloadTooLarge(
                    f"The video has more than {limit} frames; the limit is {limit} frames decoded per request "
                    "(GATEWAY_MAX_VIDEO_DECODED_FRAMES), and every frame is decoded whatever vid_stride (as Ultralytics"
                    " reads a video). Trim the video or send it in parts."
                )
            ok, packet = cap.retrieve()
            data = bytes(np.asarray(packet).ravel()) if ok and packet is not None else b""
            for header in video_headers.headers(codec, data, height):
                largest = _bigger(largest, header, settings.max_pixels, packets)
            if codec == RAW:
                sizes.add(len(data))
            seekable = (
                seekable and cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) == 1 and cap.get(cv2.CAP_PROP_PTS) == packets
            )
            packets += 1
        if codec == RAW and not all(width * height <= size <= width * height * 8 for size in sizes):
            # fourcc 0 is also what OpenCV reports for decoders without a code: only uncompressed frames pass
            raise UnsupportedMediaType(
                f"The {container} video's codec is not one the server decodes. Send H.264, HEVC, VP8, VP9, MPEG-4 "
                "or MJPEG video."
            )
        if not largest.held:
            largest = Header(largest.width, largest.height, HELD[codec])
        return Scan(codec, packets, largest, seekable)
    finally:
        cap.release()


def _bigger(largest: Header, header: Header, max_pixels: int, packet: int | None) -> Header:
    """The larger of two declared sizes (the most frames held of either), refusing one over the pixel limit."""
    if header.pixels > max_pixels:
        where = "Its codec configuration declares frames" if packet is None else f"Frame {packet} of the video is"
        raise PayloadTooLarge(
            f"{where} {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels (the container says "
            f"{largest.width}x{largest.height}); the limit is {max_pixels / 1e6:g} megapixels per frame "
            "(GATEWAY_MAX_PIXELS), checked before decoding. Scale the video down and try again."
        )
    if header.pixels > largest.pixels:
        return Header(header.width, header.height, max(header.held, largest.held))
    return Header(largest.width, largest.height, max(header.held, largest.held))


def _unopenable(container: str) -> UnprocessableImage:
    return UnprocessableImage(
        f"The {container} video could not be opened: the file is truncated or damaged (an MP4 needs its index, "
        "written at the end), or its codec is not supported. Send a complete MP4, WebM, MOV, AVI or MKV file."
    )


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


def open_video(
    path: str, container: str, vid_stride: int, settings: Settings, control: Control
) -> tuple[cv2.VideoCapture, Meta, Scan]:
    """The capture, its declared properties and what its packets declare (`scan`), refused (413, 415) when they pass
    a limit and (400) when `vid_stride` leaves no frame to analyse; nothing is decoded here."""
    found = scan(path, container, settings, control)
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, DECODER_PARAMS)
    if not cap.isOpened():
        cap.release()
        raise _unopenable(container)
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
        frames = meta.declared_frames or found.packets
        if frames and vid_stride > frames:  # Ultralytics analyses frames vid_stride-1, 2*vid_stride-1, ...: none
            raise BadRequest(
                f"vid_stride={vid_stride} is more than the video's {frames} frames, so no frame would be analysed "
                f"(every vid_stride-th frame is). Send a vid_stride of at most {frames}."
            )
    except BaseException:
        cap.release()
        raise
    return cap, meta, found


def _int(value: float) -> int:
    return int(value) if math.isfinite(value) and 0 < value < 2**62 else 0


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"The video's frames are {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels per frame (GATEWAY_MAX_PIXELS). Scale the video down and try again."
        )


def frame_limit(frames: int, limit: int, vid_stride: int) -> PayloadTooLarge:
    more = f"{frames} frames" if frames > limit else f"more than {limit} frames"
    return PayloadTooLarge(
        f"The video has {more} to analyse at vid_stride={vid_stride}; the limit is {limit} frames per request "
        f"(GATEWAY_MAX_VIDEO_FRAMES). Send a larger vid_stride (every n-th frame) or trim the video."
    )
