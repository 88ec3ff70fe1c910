"""Image formats and EXIF orientation: the gateway decodes like Ultralytics' loader (cv2 IMREAD_COLOR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.reference import image_wh
from tests.conftest import Gateway
from bench.parity import assert_matches
from tests.test_parity import reference  # noqa: F401 - session fixture


@pytest.fixture(scope="module")
def formats(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    out = tmp_path_factory.mktemp("formats")
    bus = Image.open(images["bus"])
    bus.convert("CMYK").save(out / "cmyk.jpg")
    cv2.imwrite(str(out / "16bit.png"), cv2.imread(str(images["bus"])).astype(np.uint16) * 257)
    frames = [bus.resize((405, 540)), bus.resize((405, 540)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(out / "animated.webp", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(out / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.open(out / "animated.gif").convert("RGB").save(out / "gif-first-frame.png")
    bus.convert("L").save(out / "gray.png")
    bus.convert("P", palette=Image.Palette.ADAPTIVE).save(out / "palette.png")
    bus.save(out / "bus.bmp")
    bus.save(out / "bus.tiff")
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        bus.save(out / f"exif-{orientation}.jpg", exif=exif, quality=95)
    return {p.stem: p for p in out.iterdir()}


@pytest.mark.parametrize(
    "name", ["cmyk", "16bit", "animated", "gray", "palette", "bus", *[f"exif-{i}" for i in range(1, 9)]]
)
def test_format_matches_ultralytics(gateway: Gateway, reference: Any, formats: dict[str, Path], name: str) -> None:
    path = formats[name] if name != "bus" else formats["bus"].with_suffix(".bmp")
    if name == "animated":
        path = path.with_suffix(".webp")
    r = gateway.predict("yolov8n", files={"image": path.read_bytes()}, data={"confidence": "0.25"})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["data"], reference("yolov8n", path, 640, 0.25, 0.45, True, False), image_wh(path), False)


def test_tiff_matches_ultralytics(gateway: Gateway, reference: Any, formats: dict[str, Path]) -> None:
    path = formats["bus"].with_suffix(".tiff")
    r = gateway.predict("yolov8n", files={"image": path.read_bytes()})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["data"], reference("yolov8n", path, 640, 0.25, 0.45, True, False), image_wh(path), False)


def test_exif_orientation_changes_the_result_like_ultralytics(gateway: Gateway, formats: dict[str, Path]) -> None:
    upright = gateway.predict("yolov8n", files={"image": formats["exif-1"].read_bytes()}).json()["data"]
    rotated = gateway.predict("yolov8n", files={"image": formats["exif-6"].read_bytes()}).json()["data"]
    assert upright and rotated and upright != rotated


def test_animated_gif_uses_its_first_frame(gateway: Gateway, reference: Any, formats: dict[str, Path]) -> None:
    r = gateway.predict("yolov8n", files={"image": formats["animated"].with_suffix(".gif").read_bytes()})
    assert r.status_code == 200, r.text
    first = formats["gif-first-frame"]
    assert_matches(r.json()["data"], reference("yolov8n", first, 640, 0.25, 0.45, True, False), image_wh(first), False)


def test_one_pixel_image_is_served(gateway: Gateway) -> None:
    ok, png = cv2.imencode(".png", np.full((1, 1, 3), 200, np.uint8))
    r = gateway.predict("yolov8n", files={"image": png.tobytes()})
    assert r.status_code == 200 and r.json()["success"] is True


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_jpeg_never_fails_the_server(gateway: Gateway, images: dict[str, Path], cut: float) -> None:
    data = images["bus"].read_bytes()
    r = gateway.predict("yolov8n", files={"image": data[: int(len(data) * cut)]})
    assert r.status_code in (200, 422), r.text  # libjpeg may decode a partial image, as Ultralytics' loader does
    assert gateway.predict("yolov8n", files={"image": data}).status_code == 200


@pytest.mark.parametrize(
    "blob,status",
    [
        (b"PK\x03\x04" + b"\0" * 100, 415),  # ZIP
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 \xff\xff\xff\xff", 422),  # WebP with a bad chunk size
        (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17, 422),  # PNG with a bad CRC
        (
            b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03" + b"\0" * 50,
            413,
        ),  # JPEG header claiming 65535x65535: refused by pixel count
    ],
)
def test_malformed_files_get_4xx_and_the_server_keeps_serving(
    gateway: Gateway, images: dict[str, Path], blob: bytes, status: int
) -> None:
    r = gateway.predict("yolov8n", files={"image": blob})
    assert r.status_code == status, r.text
    assert gateway.predict("yolov8n", files={"image": images["tiny"].read_bytes()}).status_code == 200
