"""The baseline a user would write instead: a minimal Starlette endpoint calling `YOLO(weights).predict` per request.

BENCH_WEIGHTS=weights/yolov8n.pt uvicorn bench.ultralytics_server:app --port 8100
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from ultralytics import YOLO

model = YOLO(os.environ["BENCH_WEIGHTS"])


async def predict(request: Request) -> JSONResponse:
    form = await request.form()
    image = cv2.imdecode(np.frombuffer(await form["image"].read(), np.uint8), cv2.IMREAD_COLOR)  # type: ignore[union-attr]
    size = int(form.get("size", 640))  # type: ignore[arg-type]
    result = model.predict(image, imgsz=size, conf=0.25, iou=0.45, verbose=False)[0]
    return JSONResponse({"success": True, "message": "Inference complete.", "data": result.summary()})


app = Starlette(routes=[Route("/v1/predict/{model_id}", predict, methods=["POST"])])
