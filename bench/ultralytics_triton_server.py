"""The peer users pick: Ultralytics' own Triton integration as its guide teaches it. A minimal Starlette endpoint whose
handler calls `YOLO("grpc://<triton>/<model>", task=...).predict(image)` against a Triton model exported the guide's
way (plain float32 NCHW input, raw output, Ultralytics' metadata in the config's `metadata` parameter).

    BENCH_TRITON_MODEL=grpc://127.0.0.1:8001/yolov8n-plain BENCH_TASK=detect \
        uvicorn bench.ultralytics_triton_server:app --port 8100
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from ultralytics import YOLO

model = YOLO(os.environ["BENCH_TRITON_MODEL"], task=os.environ["BENCH_TASK"])


async def predict(request: Request) -> JSONResponse:
    form = await request.form()
    upload = form["image"]
    assert isinstance(upload, UploadFile)
    image = cv2.imdecode(np.frombuffer(await upload.read(), np.uint8), cv2.IMREAD_COLOR)
    size = int(str(form.get("size", 640)))
    result = model.predict(image, imgsz=size, conf=0.25, iou=0.45, verbose=False)[0]
    return JSONResponse({"success": True, "message": "Inference complete.", "data": result.summary()})


app = Starlette(routes=[Route("/v1/predict/{model_id}", predict, methods=["POST"])])
