"""The frame sizes a video's packets declare (gateway/vision/video_headers.py), read from real encodes: each codec the
gateway accepts, written with PyAV (FFmpeg's own encoders) in the containers it comes in, then read packet by packet
with OpenCV's raw mode as `video.scan` reads it, and compared with what the decoder then makes of it."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.vision import video_headers
from gateway.vision.video_headers import CODECS, HEVC, MJPEG, MPEG4, VP8, VP9, H264, Header


def encode(path: Path, codec: str, size: tuple[int, int], frames: int = 6, **options: str) -> Path:
    import av

    pix = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = pix
        stream.options = options
        for i in range(frames):
            image = np.full((size[1], size[0], 3), (i * 40 % 256, 90, 160), np.uint8)
            cv2.putText(image, str(i), (4, size[1] // 2), 0, 1, (255, 255, 255), 2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def read(path: Path, decode: bool = True) -> tuple[str, list[list[Header]], list[Header], tuple[int, int]]:
    """(codec, each packet's headers, the extradata's, the first decoded frame's (width, height), or (0, 0) when
    not `decode`)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    codec = CODECS[(int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little")]
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    ok, extradata = cap.retrieve(None, int(cap.get(cv2.CAP_PROP_CODEC_EXTRADATA_INDEX)))
    config = video_headers.extradata_headers(codec, bytes(extradata.ravel())) if ok and extradata is not None else []
    packets = []
    while cap.grab():
        ok, packet = cap.retrieve()
        packets.append(video_headers.headers(codec, bytes(packet.ravel()), height))
    cap.release()
    if not decode:
        return codec, packets, config, (0, 0)
    decoded = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ok, frame = decoded.read()
    decoded.release()
    assert ok
    return codec, packets, config, (frame.shape[1], frame.shape[0])


@pytest.mark.parametrize(
    "name,encoder,codec,options",
    [
        ("mjpeg.avi", "mjpeg", MJPEG, {}),
        ("mjpeg.mkv", "mjpeg", MJPEG, {}),
        ("mjpeg.mov", "mjpeg", MJPEG, {}),
        ("h264.mp4", "libx264", H264, {}),
        ("h264.mkv", "libx264", H264, {}),
        ("h264.avi", "libx264", H264, {}),
        ("hevc.mp4", "libx265", HEVC, {"x265-params": "log-level=none"}),
        ("hevc.mkv", "libx265", HEVC, {"x265-params": "log-level=none"}),
        ("mpeg4.mp4", "mpeg4", MPEG4, {}),
        ("mpeg4.avi", "mpeg4", MPEG4, {}),
        ("vp8.webm", "libvpx", VP8, {}),
        ("vp9.webm", "libvpx-vp9", VP9, {}),
        ("vp9.mp4", "libvpx-vp9", VP9, {}),
    ],
)
def test_declared_size_is_the_size_decoded(tmp_path: Path, name: str, encoder: str, codec: str, options: dict) -> None:
    """An odd size (not a multiple of 16): what the headers declare covers the decoded frame, within one coding
    block (H.264 and HEVC declare the coded size, cropped after decoding)."""
    path = encode(tmp_path / name, encoder, (200, 118), **options)
    found, packets, config, decoded = read(path)
    assert found == codec
    declared = [h for headers in packets for h in headers] + config
    assert declared, "no packet nor the codec configuration declared a size"
    assert packets[0] or config, "the first frame's size comes before it"
    for header in declared:
        assert decoded[0] <= header.width < decoded[0] + 16 and decoded[1] <= header.height < decoded[1] + 16
        assert header.held >= 1


def test_h264_and_hevc_report_their_reference_frames(tmp_path: Path) -> None:
    *_, config, _ = read(encode(tmp_path / "refs.mkv", "libx264", (64, 48), x264opts="ref=3:bframes=0"))
    assert [h.held for h in config] == [4]  # three references and the picture being decoded
    *_, config, _ = read(encode(tmp_path / "one.mkv", "libx264", (64, 48), x264opts="ref=1:bframes=0"))
    assert [h.held for h in config] == [2]


def test_a_size_change_midstream_is_declared_where_it_happens(tmp_path: Path) -> None:
    """H.264 in an AVI (Annex B, each IDR with its SPS): 64x48 frames, then 320x240 ones."""
    from tests.test_video import h264_packets, write_avi

    path = write_avi(tmp_path / "change.avi", h264_packets(64, 48, 2) + h264_packets(320, 240, 2), 64, 48, b"H264")
    codec, packets, _, _ = read(path, decode=False)  # OpenCV's reader fails on such a file (tests/test_video.py)
    sizes = [[(h.width, h.height) for h in p] for p in packets]
    assert codec == H264 and sizes[0] == [(64, 48)] and sizes[2] == [(320, 240)]


# --- JPEG: the SOF of each picture, found as a decoder finds it ----------------------------------------------------


def test_mjpeg_fields_double_and_app_segments_are_skipped() -> None:
    from tests.test_video import flat_jpeg

    jpeg = flat_jpeg(640, 240)
    assert video_headers.headers(MJPEG, jpeg, 240) == [Header(640, 240, 1)]
    # one field of an interlaced frame: FFmpeg decodes it into a frame twice its height
    assert video_headers.headers(MJPEG, jpeg, 480) == [Header(640, 480, 1)]
    # an APP1 segment whose bytes look like a huge SOF is skipped by its length, as the decoder skips it
    fake = b"\xff\xc0\x00\x11\x08\x7f\xff\x7f\xff" + b"\x00" * 20
    app1 = b"\xff\xe1" + struct.pack(">H", len(fake) + 2) + fake
    assert video_headers.headers(MJPEG, jpeg[:2] + app1 + jpeg[2:], 240) == [Header(640, 240, 1)]
    # two pictures in one packet (the two fields): both are read
    assert len(video_headers.headers(MJPEG, jpeg + jpeg, 480)) == 2


@given(st.sampled_from([MJPEG, H264, HEVC, MPEG4, VP8, VP9]), st.binary(max_size=400))
def test_any_bytes_give_a_list_never_an_exception(codec: str, data: bytes) -> None:
    for packet in (data, b"\x00\x00\x01\x67" + data, b"\x00\x00\x01\x42\x01" + data, b"\xff\xd8" + data):
        found = video_headers.headers(codec, packet, 100)
        assert all(h.width >= 0 and h.height >= 0 for h in found)
    assert isinstance(video_headers.extradata_headers(codec, b"\x01" + data), list)


def test_scan_reserves_the_references_the_stream_declares(tmp_path: Path) -> None:
    """`video.scan` sizes the decoder's memory from the SPS (3 references: 4 frames of 64x48), not from the most
    an H.264 decoder may hold (17)."""
    import time

    from gateway.vision import videofile as video
    from gateway.settings import Settings

    path = encode(tmp_path / "refs.mkv", "libx264", (64, 48), x264opts="ref=3:bframes=0")
    found = video.scan(str(path), "WebM/MKV", Settings(), video.Control(time.monotonic() + 60, 60, ""))
    assert found.largest == Header(64, 48, 4) and found.packets == 6
    assert found.decoder_bytes(Settings().max_pixels) == 64 * 48 * 3 * 4
