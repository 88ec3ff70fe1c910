"""Settings are read once and checked at start-up: a malformed or out-of-range value stops the gateway with a message
naming the variable. OpenCV's decoder cap holds without the caller setting it."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("raw,want", [("true", True), ("1", True), (" YES ", True), ("on", True), ("false", False),
                                      ("0", False), ("No", False), ("off", False)])  # fmt: skip
def test_booleans_accept_the_usual_spellings(raw: str, want: bool) -> None:
    assert Settings.from_env({"GATEWAY_FAST_JPEG": raw}).fast_jpeg is want


@pytest.mark.parametrize("raw", ["ture", "", "2", "enabled"])
def test_a_malformed_boolean_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=f"GATEWAY_FAST_JPEG={raw!r}: not a boolean"):
        Settings.from_env({"GATEWAY_FAST_JPEG": raw})


@pytest.mark.parametrize(
    "name,raw,message",
    [("GATEWAY_WORKERS", "0", "more than 0"), ("GATEWAY_MAX_IMAGES", "-3", "more than 0"),
     ("GATEWAY_MAX_PIXELS", "0", "more than 0"), ("GATEWAY_MAX_UPLOAD_BYTES", "-1", "more than 0"),
     ("GATEWAY_TRITON_TIMEOUT_S", "0", "more than 0"), ("GATEWAY_URL_TIMEOUT_S", "nan", "more than 0"),
     ("GATEWAY_MAX_INFLIGHT", "0", "more than 0"), ("GATEWAY_URL_MAX_REDIRECTS", "-1", "0 or more"),
     ("GATEWAY_MODEL_CACHE_S", "inf", "0 or more"), ("GATEWAY_WORKERS", "four", "invalid literal"),
     ("GATEWAY_LETTERBOX", "wide", "'rect' or 'square'")],
)  # fmt: skip
def test_an_out_of_range_or_malformed_number_is_refused_naming_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=name) as caught:
        Settings.from_env({name: raw})
    assert message in str(caught.value)


def test_edge_values_that_make_sense_are_accepted() -> None:
    settings = Settings.from_env(
        {"GATEWAY_MODEL_CACHE_S": "0", "GATEWAY_URL_MAX_REDIRECTS": "0", "GATEWAY_TRITON_TIMEOUT_S": "0.001"}
    )
    assert (settings.model_cache_s, settings.url_max_redirects, settings.triton_timeout_s) == (0.0, 0, 0.001)
    assert Settings() == Settings.from_env({}), "the defaults pass their own checks"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    return {**env, **extra}


def test_the_gateway_does_not_start_with_a_malformed_setting(tmp_path: Path) -> None:
    """The real start-up path (uvicorn's factory, as the container runs it) stops with the variable named."""
    command = [sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory", "--port", "0"]
    out = subprocess.run(
        command, env=_clean_env(GATEWAY_FAST_JPEG="ture", GATEWAY_KEYS_FILE=str(tmp_path / "keys.json")),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "GATEWAY_FAST_JPEG='ture': not a boolean" in out.stderr


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is cut short (nothing to decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def test_opencv_refuses_an_image_over_the_cap_when_the_caller_sets_nothing() -> None:
    """In a fresh interpreter without OPENCV_IO_MAX_IMAGE_PIXELS, importing the gateway's post-processing (which
    imports cv2) pins the cap before cv2 loads, and OpenCV refuses a header past it before allocating anything."""
    code = f"""
import os, sys
import gateway.vision.postprocess, gateway.vision.masks, gateway.vision.preprocess
import cv2, numpy as np
from gateway import OPENCV_MAX_PIXELS
assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == str(OPENCV_MAX_PIXELS)
over = {_png_header_only(2**15, 2**15 + 1)!r}  # 2**30 + 2**15 pixels: past the cap
under = {_png_header_only(2**10, 2**10)!r}
assert 2**15 * (2**15 + 1) > OPENCV_MAX_PIXELS > 2**20
try:
    cv2.imdecode(np.frombuffer(over, np.uint8), cv2.IMREAD_COLOR)
except cv2.error as exc:
    print("refused:", "CV_IO_MAX_IMAGE_PIXELS" in str(exc))
try:
    cv2.imdecode(np.frombuffer(under, np.uint8), cv2.IMREAD_COLOR)
    print("under: decoded or None")
except cv2.error as exc:
    print("under refused:", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused: True", "under: decoded or None"], out.stdout


def test_the_package_sets_the_cap_before_any_of_its_modules_imports_cv2() -> None:
    code = """
import os, sys
import gateway
assert "cv2" not in sys.modules, "gateway/__init__.py must not import cv2"
print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
"""
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(2**30)
    caller = subprocess.run([sys.executable, "-c", code], env=_clean_env(OPENCV_IO_MAX_IMAGE_PIXELS="12345"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert caller.stdout.strip() == "12345", "a value the caller set wins"
