"""Gateway settings, read once from the environment at start-up (`Settings.from_env`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

PREFIX = "GATEWAY_"
# What a request may add to its image or video: multipart boundaries and the small text fields around the part. (The
# chart's ingress limit adds the same, in deploy/helm/yolo-triton/templates/_helpers.tpl; deploy/check.py checks it.)
FORM_OVERHEAD = 64 * 1024
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
# Numbers that must be more than 0; every other number must be 0 or more (and finite).
POSITIVE = frozenset(
    {"max_upload_bytes", "max_pixels", "triton_timeout_s", "max_inflight", "url_timeout_s", "workers", "max_images"}
    | {"max_video_bytes", "max_video_seconds", "max_video_frames"}
    | {"body_timeout_s"}
    | {"video_workers", "video_timeout_s", "video_stream_timeout_s", "max_video_decoded_frames"}
    | {"max_streams_per_key", "stream_lease_s", "stream_open_timeout_s", "stream_read_timeout_s"}
    | {"webhook_queue", "webhook_timeout_s", "webhook_batch_frames"}
    | {"sequence_ttl_s", "max_sequences_per_key"}
    | {"max_model_bytes"}
    | {"max_jobs_per_key", "job_result_ttl_s", "job_timeout_s"}
    | {"job_checkpoint_s"}
    | {"stream_checkpoint_s"}
    | {"job_download_timeout_s"}
    | {"stream_events_kept"}
    | {"max_stream_followers_per_key", "max_stream_followers"}
)


@dataclass(frozen=True)
class Settings:
    triton_url: str = "127.0.0.1:8001"  # gRPC host:port
    keys_file: Path = Path("data/keys.json")
    max_upload_bytes: int = 20 * 1024 * 1024  # the image part or URL body; the whole request may add 64 KiB of form
    max_pixels: int = 40_000_000  # refused before decoding (decompression bombs)
    letterbox: Literal["rect", "square"] = "rect"  # rect = Ultralytics' predict default; square batches any shape
    triton_timeout_s: float = 30.0
    max_inflight: int = 64  # predictions being processed at once; beyond it 503 + Retry-After
    max_inflight_per_key: int = 0  # one key's predictions being read or processed at once; 0: half of max_inflight
    body_timeout_s: float = 60.0  # the whole request body must arrive within this (408 + Connection: close)
    body_min_rate: float = 1024.0  # bytes/s: after body_grace_s, the body must keep up this average (0: no rate)
    body_grace_s: float = 10.0  # seconds before body_min_rate applies (slow starts, small bodies)
    url_timeout_s: float = 10.0  # total deadline for fetching `url`
    url_max_redirects: int = 3
    url_allow_hosts: tuple[str, ...] = field(default_factory=tuple)  # hosts exempt from the private-address guard
    model_cache_s: float = 10.0  # how long a model's config from Triton is reused
    workers: int = 4  # threads for decode/letterbox/post-processing
    max_images: int = 8  # image parts per request (they share the max_upload_bytes request limit)
    decode_budget_bytes: int = 0  # memory for uploads and decoded images in flight; 0 = from the container's limit
    decode_budget_wait_s: float = 5.0  # how long a request waits for that memory before 503 + Retry-After
    max_key_budget_share: float = 0.5  # the most of that memory one key's requests hold at once; past it 429
    ready_grace_s: float = 60.0  # /readyz stays 200 this long after Triton was last up (rollouts, blips); 0: strict
    max_video_bytes: int = 100 * 1024 * 1024  # a video part; the request body may be this large (plus form)
    max_video_seconds: float = 600.0  # a video's duration (every frame is read, even with vid_stride)
    max_video_frames: int = 3000  # frames analysed per video, after vid_stride
    max_video_decoded_frames: int = 18000  # frames decoded per video, skipped ones too (10 min at 30 fps)
    video_timeout_s: float = 25.0  # a non-streamed video answer ends this long after the upload (partial: 413)
    video_stream_timeout_s: float = 600.0  # the same bound for a streamed (NDJSON) answer
    video_workers: int = 1  # threads decoding videos (one FFmpeg thread each), apart from the `workers` of images
    fast_jpeg: bool = True  # JPEGs through simplejpeg where its pixels are known to equal OpenCV's; off = OpenCV only
    redis_url: str = ""  # redis:// or rediss:// (TLS): keys, limits and usage shared by replicas; "" = the keys file
    redis_password: str = field(default="", repr=False)  # when the URL carries none
    redis_timeout_s: float = 0.25  # bound on every Redis call in the request path
    triton_shm_bytes: int = 0  # > 0: tensors through Triton's system shared memory, up to this much (same host only)
    triton_http_url: str = ""  # with triton_shm_bytes: inference requests to Triton's HTTP port (http://host:port)
    # live streams (gateway/work/, gateway/live/)
    max_streams_per_key: int = 4  # one key's live streams at once (across replicas); past it 429
    max_streams: int = 8  # streams one replica runs at once; a full replica leaves new and orphaned ones to others
    stream_lease_s: float = 3.0  # an owner renews every third of this; another replica takes over once it lapses
    stream_open_timeout_s: float = 10.0  # opening a source (connect, first packets) before a reconnect
    stream_read_timeout_s: float = 5.0  # a source silent this long is reconnected
    stream_backoff_max_s: float = 10.0  # reconnect delays double from 0.5 s up to this
    stream_checkpoint_s: float = 2.0  # a stream's next frame index and tracker are recorded this often (a takeover)
    stream_events_kept: int = 300  # a stream's newest events kept for replay (Last-Event-ID), in the shared state
    max_stream_followers_per_key: int = 8  # one key's open event followers (GET .../events) on one replica; past it 429
    max_stream_followers: int = 128  # event followers one replica serves at once (each holds a Redis connection)
    webhook_queue: int = 1000  # deliveries waiting in one replica, retries included; past it the oldest is dropped
    webhook_retries: int = 5  # attempts after the first, for an answer other than 2xx (or none)
    webhook_backoff_s: float = 1.0  # the first retry's delay, doubled for each next one
    webhook_timeout_s: float = 5.0  # one delivery attempt
    webhook_batch_frames: int = 25  # a stream's frames go in one delivery every this many frames ...
    webhook_batch_s: float = 1.0  # ... or this many seconds, whichever comes first
    # video jobs (gateway/jobs/): videos analysed apart from any connection, by the replica holding the job's lease
    jobs_dir: Path = Path("data/jobs")  # videos and results: every replica must see it (the chart: the uploads volume)
    max_jobs: int = 1  # jobs one replica runs at once (on the video threads, beside video requests); 0: none
    max_jobs_per_key: int = 4  # one key's queued and running jobs (across replicas); past it 429
    job_result_ttl_s: float = 86400.0  # a finished job (its result and video) is kept this long, then deleted
    job_timeout_s: float = 3600.0  # the time one run of a job may take (a takeover resumes at the last checkpoint)
    job_checkpoint_s: float = 5.0  # a running job's result so far is made durable this often (a takeover resumes it)
    job_download_timeout_s: float = 600.0  # a job's video from a `url` is downloaded within this (else it fails)
    # Tracking across requests (`sequence`, gateway/sequences/): a sequence's tracker state lives this long after its
    # last frame, and one key keeps at most this many sequences at once (429 beyond)
    sequence_ttl_s: float = 60.0
    max_sequences_per_key: int = 100
    # Uploaded models (issue #27): what the gateway itself needs; the export worker's own settings are in
    # gateway/models/settings.py (it reads these too, from the same variables)
    models_file: Path = Path("data/models.json")  # the model registry when redis_url is empty
    models_dir: Path = Path("data/models")  # uploads/ is written here (shared with the worker: one volume)
    max_model_bytes: int = 512 * 2**20  # an uploaded .pt; the body may add FORM_OVERHEAD
    model_check_wait_s: float = 10.0  # an upload's answer waits this long for the worker's checking stage (422/202)
    triton_admin_key: str = field(default="", repr=False)  # Triton's restricted repository API (index, load, unload)

    def __post_init__(self) -> None:
        """Refuse values the gateway cannot run with, naming the variable that sets them."""
        check_numbers(self, POSITIVE)
        if not 0 < self.max_key_budget_share <= 1:
            raise ValueError(
                f"{PREFIX}MAX_KEY_BUDGET_SHARE={self.max_key_budget_share!r}: must be more than 0 and 1 at most"
            )
        if self.letterbox not in ("rect", "square"):
            raise ValueError(f"{PREFIX}LETTERBOX must be 'rect' or 'square', not {self.letterbox!r}")

    @property
    def per_key_inflight(self) -> int:
        """One key's predictions in progress at once in this process (GATEWAY_MAX_INFLIGHT_PER_KEY, or half of
        GATEWAY_MAX_INFLIGHT): one key never holds every slot, whatever its rate."""
        return self.max_inflight_per_key or max(1, self.max_inflight // 2)

    @property
    def body_limit(self) -> int:
        """The largest request body of images (and the largest held in memory): an image's limit and its form."""
        return self.max_upload_bytes + FORM_OVERHEAD

    @property
    def largest_body(self) -> int:
        """The largest request body accepted at all: an image's or a video's limit, the larger, and the form."""
        return max(self.max_upload_bytes, self.max_video_bytes) + FORM_OVERHEAD

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from GATEWAY_* variables, e.g. GATEWAY_TRITON_URL, GATEWAY_MAX_UPLOAD_BYTES.

        ValueError, naming the variable, for a value that is not of the setting's kind or out of its range.
        """
        return cls(**env_values(cls, environ))


def _flag(raw: str) -> bool:
    text = raw.strip().lower()
    if text in TRUE | FALSE:
        return text in TRUE
    raise ValueError(f"not a boolean: use one of {', '.join(sorted(TRUE))} or {', '.join(sorted(FALSE))}")


def env_values(cls: type[Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The fields of the settings dataclass `cls` that `environ` sets (GATEWAY_<FIELD NAME>), each read as its
    default's kind: flag, whole number, number, path, comma-separated list (lower-cased) or text. ValueError naming
    the variable of a value that is not of its kind. (The gateway's Settings and the worker's ModelSettings.)"""
    values: dict[str, Any] = {}
    defaults = cls()
    for f in fields(cls):
        raw = environ.get(PREFIX + f.name.upper())
        if raw is None:
            continue
        default = getattr(defaults, f.name)
        try:
            if isinstance(default, bool):
                values[f.name] = _flag(raw)
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, Path):
                values[f.name] = Path(raw)
            elif isinstance(default, tuple):
                values[f.name] = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
            else:
                values[f.name] = raw
        except ValueError as exc:
            raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
    return values


def check_numbers(settings: Any, positive: frozenset[str]) -> None:
    """ValueError naming the variable of a number field of the settings dataclass that is not finite or below 0, or
    is 0 where its name is in `positive`."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        strict = f.name in positive
        if not math.isfinite(value) or value < 0 or (strict and value == 0):
            bound = "more than 0" if strict else "0 or more"
            raise ValueError(f"{PREFIX}{f.name.upper()}={value!r}: must be a number {bound}")
