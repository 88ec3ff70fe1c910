"""Python client for the YOLO Inference API (Ultralytics HUB v1 compatible), sync and async, with retries.

See the README's "Python client" section; `Client.predict` returns a typed `Prediction`, `to_supervision` converts it.
"""

from yolo_triton_client.client import AsyncClient, Client
from yolo_triton_client.convert import to_supervision
from yolo_triton_client.errors import (
    ApiError,
    AuthError,
    ClientError,
    InvalidRequest,
    NotFound,
    RateLimited,
    TransportError,
    Unavailable,
    UpstreamError,
)
from yolo_triton_client.jobs import Job, JobFailed
from yolo_triton_client.models import ModelFailed, ModelStatus, ModelVersion, Progress
from yolo_triton_client.results import (
    Box,
    Classification,
    Detection,
    FramePrediction,
    Keypoints,
    OrientedBox,
    Polygon,
    Prediction,
    Row,
    Speed,
    VideoPrediction,
)

__all__ = [
    "ApiError", "AsyncClient", "AuthError", "Box", "Classification", "Client", "ClientError", "Detection",
    "FramePrediction", "InvalidRequest", "Keypoints", "ModelFailed", "ModelStatus", "ModelVersion", "NotFound",
    "OrientedBox", "Polygon", "Prediction", "Progress", "RateLimited",
    "Row", "Speed", "TransportError", "Unavailable", "UpstreamError", "VideoPrediction", "to_supervision",
    "Job", "JobFailed",
]  # fmt: skip
