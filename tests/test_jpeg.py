"""The fast JPEG path (simplejpeg) gives exactly what Ultralytics' loader gets from `cv2.imdecode(IMREAD_COLOR)`.

Every case asserts equality with OpenCV pixel for pixel, and also which path decoded it, so a fast path that
silently fell back to OpenCV everywhere would fail here rather than pass unnoticed.
"""

from __future__ import annotations

import io
import itertools
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gateway.vision import preprocess


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def check(data: bytes, fast: bool) -> None:
    """decode() equals OpenCV; `fast` says whether simplejpeg must have decoded it (True) or OpenCV (False)."""
    expected = opencv(data)
    assert (preprocess.decode_jpeg(data) is not None) == fast
    got = preprocess.decode(data, 10**9)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.array_equal(got, expected)


@pytest.fixture(scope="module")
def photo(images: dict[str, Path]) -> np.ndarray:
    return cv2.imread(str(images["bus"]))


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with an APP1 segment carrying `payload` inserted right after SOI."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _tiff(entries: list[tuple[int, int, int, bytes]], order: str = "<") -> bytes:
    """A TIFF block with one directory: (tag, type, count, 4-byte value field) entries."""
    head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    body = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack(order + "HHI", tag, kind, count) + value
    return head + body + struct.pack(order + "I", 0)


@pytest.mark.parametrize(
    "size,quality,sampling,progressive,restart",
    list(
        itertools.product(
            [(1, 1), (7, 13), (481, 643), (1080, 1920)],
            [30, 95],
            [
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
            ],
            [0, 1],
            [0, 4],
        )
    ),
)
def test_pixels_equal_opencv(
    photo: np.ndarray, size: tuple[int, int], quality: int, sampling: int, progressive: int, restart: int
) -> None:
    h, w = size
    noise = np.random.default_rng(h * w + quality).integers(0, 40, (h, w, 3), dtype=np.uint8)
    image = cv2.add(cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA), noise)
    params = [
        cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling,
        cv2.IMWRITE_JPEG_PROGRESSIVE, progressive, cv2.IMWRITE_JPEG_RST_INTERVAL, restart,
    ]  # fmt: skip
    ok, encoded = cv2.imencode(".jpg", image, params)
    assert ok
    check(encoded.tobytes(), fast=True)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("progressive", [False, True])
def test_pillow_written_files(photo: np.ndarray, mode: str, subsampling: int, progressive: bool) -> None:
    out = io.BytesIO()
    image = Image.fromarray(photo[:333, :517, ::-1]).convert(mode)
    image.save(out, "JPEG", quality=85, subsampling=subsampling, progressive=progressive, optimize=progressive)
    check(out.getvalue(), fast=True)


def test_real_photos(images: dict[str, Path]) -> None:
    for name in ("bus", "zidane"):
        check(images[name].read_bytes(), fast=True)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_opencv(photo: np.ndarray, orientation: int) -> None:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "A camera maker whose name is longer than four bytes"
    Image.fromarray(photo[:300, :200, ::-1]).save(out, "JPEG", exif=exif, quality=90)
    data = out.getvalue()
    check(data, fast=True)
    if orientation >= 5:
        assert preprocess.decode(data, 10**9).shape[:2] == (200, 300)


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_both_byte_orders(photo: np.ndarray, order: str) -> None:
    _, encoded = cv2.imencode(".jpg", photo[:120, :80])
    value = struct.pack(order + "HH", 6, 0)
    check(_with_app1(encoded.tobytes(), b"Exif\x00\x00" + _tiff([(0x0112, 3, 1, value)], order)), fast=True)


def test_cases_left_to_opencv(photo: np.ndarray) -> None:
    _, encoded = cv2.imencode(".jpg", photo[:120, :80])
    jpeg = encoded.tobytes()
    rotate = struct.pack("<HH", 6, 0)
    cases = {
        # XMP before EXIF: OpenCV reads the first APP1 as EXIF whatever it is
        "xmp first": _with_app1(
            _with_app1(jpeg, b"Exif\x00\x00" + _tiff([(0x0112, 3, 1, rotate)])),
            b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>",
        ),
        # an entry whose data lies outside the block: OpenCV may drop the whole block, orientation included
        "entry out of range": _with_app1(
            jpeg, b"Exif\x00\x00" + _tiff([(0x010F, 2, 40, struct.pack("<I", 4000)), (0x0112, 3, 1, rotate)])
        ),
        "orientation as LONG": _with_app1(jpeg, b"Exif\x00\x00" + _tiff([(0x0112, 4, 1, struct.pack("<I", 6))])),
        "orientation 9": _with_app1(jpeg, b"Exif\x00\x00" + _tiff([(0x0112, 3, 1, struct.pack("<HH", 9, 0))])),
        "bad tiff magic": _with_app1(jpeg, b"Exif\x00\x00II\x2b\x00\x08\x00\x00\x00"),
        "directory past the end": _with_app1(jpeg, b"Exif\x00\x00" + _tiff([(0x0112, 3, 1, rotate)])[:14]),
        "garbage between segments": jpeg[:2] + b"\x00\x00" + jpeg[2:],
        "truncated": jpeg[: len(jpeg) // 2],
    }
    for name, data in cases.items():
        assert preprocess.decode_jpeg(data) is None, name
        expected = opencv(data)
        if expected is not None:
            assert np.array_equal(preprocess.decode(data, 10**9), expected), name


def test_cmyk_equal_opencv(images: dict[str, Path]) -> None:
    for subsampling in (0, 2):
        out = io.BytesIO()
        Image.open(images["bus"]).convert("CMYK").save(out, "JPEG", subsampling=subsampling)
        data = out.getvalue()
        assert np.array_equal(preprocess.decode(data, 10**9), opencv(data))


def test_opencv_only_setting_decodes_the_same(images: dict[str, Path]) -> None:
    data = images["bus"].read_bytes()
    assert np.array_equal(preprocess.decode(data, 10**9, fast_jpeg=False), preprocess.decode(data, 10**9))
