"""The YOLO Inference API gateway: HTTP contract, letterbox, Triton over gRPC, NumPy post-processing."""

from __future__ import annotations

import os

# OpenCV's own decoder cap in pixels, a second line behind preprocess.decode's header check (for images whose header
# Pillow cannot read). OpenCV reads the variable once, when cv2 loads: set here, before any module of the package
# imports cv2, it holds without the caller setting it; a value the caller set wins. (2**30 is also OpenCV's built-in
# default: the line pins it, so that a different value here would take effect.)
OPENCV_MAX_PIXELS = 2**30
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_MAX_PIXELS))
