"""A video's frames, read exactly as Ultralytics' `LoadImagesAndVideos` reads them (every `vid_stride`-th frame, each
made a model input), a slice of time at a time, within the request's limits and its `Control`.

Synchronous functions, run in the video worker threads by the video flow (gateway/predict/video.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from gateway.errors import GatewayError, PayloadTooLarge, UnprocessableImage
from gateway.modelcard import ModelInfo
from gateway.settings import Settings
from gateway.vision import pipeline
from gateway.vision.pipeline import Prepared
from gateway.vision.videofile import Control, Meta, check_pixels, frame_limit

SLICE_S = 0.25  # a worker call reads frames for at most this long, so videos take turns and stop promptly
SKIPPED_PER_TOKEN = 10  # frames decoded only to be skipped (vid_stride) cost a token per 10 (the video flow charges)
# A seek (CAP_PROP_POS_FRAMES) goes 16 frames back and decodes forward: worth it for strides past about twice that.
SEEK_STRIDE = 32
SEEK_DECODES = 17


@dataclass
class Reader:
    """Reading position in one video: source frames grabbed (decoded) so far, frames analysed, grabs made towards
    the next analysed frame, and the error that stopped reading early (a limit), if any."""

    cap: cv2.VideoCapture
    meta: Meta
    control: Control
    seek: bool = False  # skip frames by seeking (`Scan.seekable`, and a vid_stride past SEEK_STRIDE)
    decoded: int = 0  # frames the decoder decoded: every grab, about SEEK_DECODES a seek
    grabbed: int = 0
    analysed: int = 0
    toward: int = 0
    ended: bool = False
    out_of_time: bool = False  # `control` expired before the video was read whole
    stopped: GatewayError | None = None
    frame_ms: list[float] = field(default_factory=list)
    # the first `resume` frames to analyse were analysed by a job's run before this one (its checkpoint): decoded as
    # ever (an inter-coded frame needs those before it), not retrieved nor made model inputs; they count as analysed
    resume: int = 0

    @property
    def skipped(self) -> int:
        """Frames decoded only to be skipped (vid_stride), so far."""
        return self.decoded - self.analysed

    def time(self, index: int) -> float | None:
        return round(index / self.meta.fps, 6) if self.meta.fps else None


@dataclass(frozen=True)
class Frame:
    """One analysed frame: its source frame index (0-based), timestamp (s) and model input."""

    index: int
    time: float | None
    item: Prepared
    prepare_ms: float


def read_chunk(
    reader: Reader, count: int, info: ModelInfo, size: int, rect: bool, settings: Settings, keep: bool = False
) -> list[Frame]:
    """Up to `count` next frames, decoded and made model inputs (`keep`: with the decoded frame, for BoT-SORT's camera
    motion), as Ultralytics' loader reads them: `vid_stride`
    grabs then one retrieve per frame (source frames n-1, 2n-1, ...), stopping after the declared frames / stride
    (when declared) or when a grab or retrieve fails (`reader.ended`). Past the frame limit: PayloadTooLarge.

    Every grab decodes (OpenCV's FFmpeg backend), skipped frames too: Ultralytics' frames are those of a decoder
    that saw every packet. Where every frame is a key frame (`Reader.seek`) a seek gives the same frame for less.
    Returns after SLICE_S even with fewer frames (the grabs made so far count towards the
    next frame), and ends reading (`reader.out_of_time`) once `reader.control` expires."""
    out: list[Frame] = []
    meta, cap = reader.meta, reader.cap
    began = time.monotonic()
    t0 = time.perf_counter()
    while len(out) < count and not reader.ended:
        if meta.frames and reader.analysed >= meta.frames:
            reader.ended = True
            break
        if reader.control.expired():
            reader.out_of_time = reader.ended = True
            break
        try:
            if reader.seek:
                target = reader.grabbed + meta.vid_stride - 1
                if not cap.set(cv2.CAP_PROP_POS_FRAMES, target) or not cap.grab():
                    reader.ended = True
                    break
                reader.decoded += min(meta.vid_stride, SEEK_DECODES)
                reader.grabbed = target + 1
                reader.toward = meta.vid_stride
            elif reader.toward < meta.vid_stride:
                if not cap.grab():
                    reader.ended = True
                    break
                reader.decoded += 1
                reader.grabbed += 1
                reader.toward += 1
                if reader.toward < meta.vid_stride:
                    if time.monotonic() - began > SLICE_S:
                        break
                    continue
            reader.toward = 0
            if reader.analysed < reader.resume:
                reader.analysed += 1
                if time.monotonic() - began > SLICE_S:
                    break
                continue
            ok, retrieved = cap.retrieve()
        except cv2.error:  # e.g. a frame size that changes midway: OpenCV's reader (Ultralytics' too) fails on it
            reader.stopped = UnprocessableImage(
                f"Frame {max(reader.grabbed - 1, 0)} of the {meta.container} video could not be decoded into an "
                "image (its frame size changes midway, or the data is damaged). Re-encode the video at one frame size."
            )
            reader.ended = True
            break
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
        out.append(
            Frame(index, seconds, Prepared(image if keep else None, tensor, box), (time.perf_counter() - t0) * 1000)
        )
        t0 = time.perf_counter()
        if time.monotonic() - began > SLICE_S:
            break
    return out


def broken(reader: Reader) -> UnprocessableImage | None:
    """The error for a video that yielded no frame, or ended well before its declared frame count (truncated or
    damaged); None when it was read whole. Some containers only estimate their frame count (from the duration), so
    a shortfall of up to 2 source frames or 1 % is not an error: Ultralytics stops there silently too."""
    meta = reader.meta
    if reader.analysed == 0:
        return UnprocessableImage(
            f"The {meta.container} video contains no frame that could be decoded. Send a video with at least one "
            "frame in a supported codec (H.264, HEVC, VP8, VP9, MPEG-4, MJPEG)."
        )
    expected = meta.frames * meta.vid_stride
    if meta.frames and reader.analysed < meta.frames and expected - reader.grabbed > max(2, expected // 100):
        return UnprocessableImage(
            f"The {meta.container} video broke off after {reader.grabbed} of its {meta.declared_frames} frames: the "
            f"file is truncated or damaged. The {reader.analysed} frame(s) read are in the response."
        )
    return None
