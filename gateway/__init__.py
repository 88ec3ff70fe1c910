"""The YOLO Inference API gateway: HTTP contract, letterbox, Triton over gRPC, NumPy post-processing."""

from __future__ import annotations

import os

# OpenCV's own decoder cap in pixels, a second line behind preprocess.decode's header check (for images whose header
# Pillow cannot read). OpenCV reads the variable once, when cv2 loads: set here, before any module of the package
# imports cv2, it holds without the caller setting it; a value the caller set wins. (2**30 is also OpenCV's built-in
# default: the line pins it, so that a different value here would take effect.)
OPENCV_MAX_PIXELS = 2**30
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_MAX_PIXELS))

# NumPy's OpenBLAS would start one thread per core for the mask matrix products, and those threads spin while they
# wait for work: on 2 cores they doubled the CPU a segmentation request costs (bench/RESULTS.md, "Cost per image").
# The gateway already runs GATEWAY_WORKERS requests side by side; one BLAS thread each is the efficient split. Like
# the line above, it must be set before NumPy loads, and a value the caller set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
