"""Decode and letterbox (or, for classifiers, resize and centre-crop) the way Ultralytics' `predict` does it, in
OpenCV, Pillow and NumPy only."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal, cast

import cv2  # OpenCV's own decoder cap, OPENCV_IO_MAX_IMAGE_PIXELS, is set before this in gateway/__init__.py
import numpy as np
import simplejpeg
from numpy.typing import NDArray
from PIL import Image

from gateway.errors import PayloadTooLarge, UnprocessableImage, UnsupportedMediaType

PAD_VALUE = 114
Image.MAX_IMAGE_PIXELS = None  # Pillow only reads headers (and GIF frames) here; our own max_pixels is the limit

# Formats OpenCV decodes, by magic bytes. Ultralytics' loader uses cv2.imdecode for these too.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WebP"),
    (b"BM", 0, "BMP"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
SUPPORTED = "JPEG, PNG, WebP, BMP, GIF (first frame) or TIFF"
# A JPEG header libjpeg-turbo can't read is read by Pillow from this much of the file at most: Pillow skips junk
# between markers a byte at a time in Python (1.3 s for 20 MiB of zeros after FF D8; 45 ms for 64 KiB of FF bytes).
JPEG_HEADER_BYTES = 64 * 1024


def _u8(image: object) -> NDArray[np.uint8]:
    """OpenCV's result typed as what it is here: OpenCV keeps uint8 images uint8 (its stubs say any number type)."""
    return cast("NDArray[np.uint8]", image)


def sniff(data: bytes) -> str | None:
    """The image format named by `data`'s magic bytes, or None."""
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if name == "WebP" and data[:4] != b"RIFF":
                continue
            return name
    return None


def declared_pixels(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding pixels, or None when the header can't be read (a
    JPEG's: by libjpeg-turbo, or by Pillow in its first JPEG_HEADER_BYTES)."""
    if data[:2] == b"\xff\xd8":
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            data = data[:JPEG_HEADER_BYTES]
        else:
            return width, height
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # Pillow raises many types for bad headers; OpenCV gets the final word below
        return None


def decode_cost(data: bytes, max_pixels: int) -> int:
    """Bytes that decoding `data` holds at its peak: the BGR output plus the decoder's copy in the file's own layout
    (e.g. RGBA or 16-bit before conversion, or before an EXIF rotation). Files whose header can't be read (a JPEG's
    in its first JPEG_HEADER_BYTES) are charged as the largest image allowed (OpenCV's own pixel cap refuses larger
    ones). Nothing for a file that `decode` refuses by its magic bytes before decoding (415): a few bytes of junk
    must not hold the worst case of the budget. For a worker thread: a header in 20 MiB of junk takes tens of
    milliseconds to look for."""
    if sniff(data) is None:
        return 0
    header = data
    if data[:2] == b"\xff\xd8":  # JPEG, the usual upload: libjpeg-turbo reads its header 20x faster than Pillow
        header = data[:JPEG_HEADER_BYTES]
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            pass
        else:
            bands = {"Gray": 1, "CMYK": 4, "YCCK": 4}.get(colorspace, 3)  # Pillow's L, CMYK (YCCK too) and RGB
            return int(min(width * height, max_pixels) * (3 + bands))
    try:
        with Image.open(io.BytesIO(header)) as im:
            width, height = im.size
            bands = len(im.getbands())
            sample = 2 if im.mode.startswith("I;16") or im.mode in ("I", "F") else 1
    except Exception:  # Pillow raises many types for bad headers
        return max_pixels * 6
    pixels = min(width * height, max_pixels)  # larger ones are refused before decoding
    return pixels * (3 + bands * sample)


def decode(data: bytes, max_pixels: int, fast_jpeg: bool = True) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 BGR, as `cv2.imread(path, IMREAD_COLOR)`: EXIF orientation applied, gray/alpha/16-bit to BGR8.

    fast_jpeg: decode JPEGs with simplejpeg's libjpeg-turbo build (about twice as fast as OpenCV's here, and equal
    pixel for pixel, which tests/test_jpeg.py checks) wherever the result is known to equal OpenCV's; anything else
    (CMYK, a warning from the decoder, an EXIF block we can't read the way OpenCV does) goes to OpenCV.
    """
    if not data:
        raise UnprocessableImage(f"The image file is empty. Send a {SUPPORTED} file.")
    kind = sniff(data)
    if kind is None:
        raise UnsupportedMediaType(f"The file is not a supported image. Send a {SUPPORTED} file.")
    size = declared_pixels(data)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise PayloadTooLarge(
            f"The image is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is {max_pixels / 1e6:g} megapixels. "
            "Resize it and try again."
        )
    # (only with a readable header: OpenCV applies OPENCV_IO_MAX_IMAGE_PIXELS to the others)
    image = decode_jpeg(data) if fast_jpeg and kind == "JPEG" and size is not None else None
    if image is None and kind == "GIF":
        image = _decode_gif(data)
    elif image is None:
        try:
            image = _u8(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        except cv2.error:
            image = None
    if image is None or image.size == 0:
        raise UnprocessableImage(f"The {kind} image could not be decoded: the file is corrupt or truncated.")
    if image.shape[0] * image.shape[1] > max_pixels:  # header unreadable by Pillow but OpenCV decoded it
        raise PayloadTooLarge(f"The image has more than {max_pixels / 1e6:g} megapixels. Resize it and try again.")
    return image


def decode_jpeg(data: bytes) -> NDArray[np.uint8] | None:
    """A JPEG decoded as `cv2.imdecode(data, IMREAD_COLOR)` would, or None where only OpenCV can say.

    Same pixels: both are libjpeg-turbo with its defaults (accurate integer DCT, fancy upsampling). Same orientation:
    OpenCV reads the first APP1 segment as EXIF and applies its Orientation tag; here that segment is read (strictly)
    and the same flips and transposes are applied. None (→ OpenCV) when the decoder warns (truncated or corrupt data;
    `strict` turns warnings into errors), for colour spaces simplejpeg doesn't convert (CMYK/YCCK), and when the first
    APP1 segment is not a readable EXIF block with an Orientation of 1–8 or none.
    """
    orientation = _exif_orientation(data)
    if orientation is None:
        return None
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError:
        return None
    return _orient(image, orientation)


def _exif_orientation(data: bytes) -> int | None:
    """The EXIF Orientation OpenCV applies to this JPEG (1 = as stored), or None when that isn't certain."""
    segment = _first_app1(data)
    if segment is None:
        return None
    if segment == b"":
        return 1  # no APP1 segment before the image data: OpenCV finds no EXIF
    if not segment.startswith(b"Exif\x00\x00"):
        return None  # e.g. XMP first: OpenCV reads it as EXIF anyway; let it
    return _ifd0_orientation(segment[6:])


# TIFF field type → bytes per value
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def _ifd0_orientation(tiff: bytes) -> int | None:
    """Orientation from the first image directory, read strictly: None for anything OpenCV's ExifReader might
    reject or read differently (it drops the whole block, orientation included, when any entry's data lies outside
    the segment), so that only well-formed blocks take the fast path."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"

    def u(at: int, size: int) -> int:
        return int.from_bytes(tiff[at : at + size], order)

    if u(2, 2) != 42:
        return None
    start = u(4, 4)
    if start + 2 > len(tiff):
        return None
    count = u(start, 2)
    if start + 2 + 12 * count > len(tiff):
        return None
    orientation = 1
    for k in range(count):
        entry = start + 2 + 12 * k
        tag, kind, n = u(entry, 2), u(entry + 2, 2), u(entry + 4, 4)
        if kind not in _TIFF_TYPE_SIZE:
            return None
        size = _TIFF_TYPE_SIZE[kind] * n
        if size > 4 and u(entry + 8, 4) + size > len(tiff):
            return None
        if tag == 0x0112:
            if kind != 3 or n != 1:
                return None
            orientation = u(entry + 8, 2)
    return orientation if 1 <= orientation <= 8 else None


def _first_app1(data: bytes) -> bytes | None:
    """The payload of the first APP1 segment before the scan, b"" when there is none, None when the markers are
    malformed (garbage between segments, truncated headers: cases libjpeg warns about)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no APP1 before the pixels
            return b""
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return None
        if marker == 0xE1:
            return data[i + 4 : i + 2 + length]
        i += 2 + length
    return None


def _orient(image: NDArray[np.uint8], orientation: int) -> NDArray[np.uint8]:
    """OpenCV's ExifTransform (imgcodecs/src/loadsave.cpp) for EXIF Orientation 1–8."""
    if orientation >= 5:
        image = _u8(cv2.transpose(image))
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else _u8(cv2.flip(image, flip))


def _decode_gif(data: bytes) -> NDArray[np.uint8] | None:
    """First frame of a GIF as BGR (this OpenCV build has no GIF decoder; Pillow does)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            rgb = np.asarray(im.convert("RGB"))
    except Exception:  # truncated or corrupt GIF: reported as undecodable by the caller
        return None
    return np.ascontiguousarray(rgb[..., ::-1])


@dataclass(frozen=True)
class Letterbox:
    """What `letterbox` did, and what its inverse (postprocess.scale_xy) needs. Shapes are (height, width).

    gain: (x, y) scale from original-image to letterboxed-input pixels; pad: (x, y) pixels added on the left and top.
    """

    orig_shape: tuple[int, int]
    input_shape: tuple[int, int]
    gain: tuple[float, float]
    pad: tuple[int, int]

    @classmethod
    def between(cls, orig_shape: tuple[int, int], input_shape: tuple[int, int]) -> Letterbox:
        """The letterbox from `orig_shape` to `input_shape` as Ultralytics' ops.scale_boxes infers it from the shapes.

        Its inverse, not `letterbox`'s own scale: for a few rect shapes the two differ by a pixel of the scaled
        side (1001x2000 at 640: the forward scales the width to 640, Ultralytics maps it back from 639), and
        results must equal Ultralytics'.
        """
        (h0, w0), (h1, w1) = orig_shape, input_shape
        gain = min(h1 / h0, w1 / w0)
        new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
        pad = (round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1))
        return cls(orig_shape, input_shape, (new_w / w0, new_h / h0), pad)


def target_size(size: int, stride: int) -> int:
    """`size` rounded up to a multiple of the stride, as Ultralytics' check_imgsz does."""
    return max(math.ceil(size / stride) * stride, stride)


def letterbox(image: NDArray[np.uint8], size: int, stride: int, rect: bool) -> tuple[NDArray[np.uint8], Letterbox]:
    """(H', W', 3) uint8 BGR: long side scaled to `size`, padded with 114 to `size`² or, with `rect`, to the stride.

    Ultralytics' LetterBox(new_shape=(size, size), auto=rect, stride), scaleup and centred padding, INTER_LINEAR.
    """
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = size - new_w, size - new_h
    if rect:
        dw, dh = dw % stride, dh % stride
    dw2, dh2 = dw / 2, dh / 2
    top, bottom = round(dh2 - 0.1), round(dh2 + 0.1)
    left, right = round(dw2 - 0.1), round(dw2 + 0.1)
    if (w, h) != (new_w, new_h):
        image = _u8(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
    out = _u8(cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3))
    return out, Letterbox.between((h, w), (out.shape[0], out.shape[1]))


def resize_center_crop(image: NDArray[np.uint8], size: int, max_pixels: int) -> tuple[NDArray[np.uint8], Letterbox]:
    """(size, size, 3) uint8 BGR: short side resized to `size` (Pillow bilinear), then the centre `size`² crop.

    Ultralytics' classify_transforms: torchvision Resize(size) and CenterCrop(size) on a PIL image, i.e. Pillow's own
    resize (antialiased bilinear) and torchvision's size and offset arithmetic, reproduced here call for call so the
    bytes are identical. An extreme aspect ratio would make the intermediate image huge (a 1×3000 image at 224 is
    224×672000): past `max_pixels`, only the part under the crop is resampled (same filter, same coordinates up to
    float rounding, so a pixel may differ by one level).
    """
    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)  # Python rounds halves to even, as torchvision
    box = Letterbox.between((h, w), (size, size))  # the shapes; a classifier's results are not mapped back
    if (new_h, new_w) == (h, w):  # torchvision skips the resize
        return np.ascontiguousarray(image[top : top + size, left : left + size]), box
    # Pillow resamples each channel alike, so the BGR array goes in as is (Ultralytics does the same).
    pil = Image.fromarray(np.ascontiguousarray(image))
    if new_h * new_w <= max_pixels:
        out = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))[top : top + size, left : left + size]
    else:
        sx, sy = w / new_w, h / new_h
        region = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=region))
    return np.ascontiguousarray(out), box
