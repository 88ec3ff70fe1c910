"""Tracking in a prediction (`track`, `tracker`, `sequence`): which requests may track, a tracker carried from frame to
frame (`Tracker`), and a `sequence`'s tracker read from the sequence store before its frame and written back after.

A video is tracked within itself, frame after frame, as `YOLO(model).track(video)`; images without `sequence` each
get a tracker of their own (one frame: every detection from 0.25 gets an id, as `model.track(image)`); an image with
`sequence` continues the tracks of its key's sequence of that name (gateway/sequences/), as
`model.track(frame, persist=True)` called once per request.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gateway import tracking
from gateway.arguments import PredictArgs
from gateway.errors import BadRequest, UnprocessableImage
from gateway.modelcard import ModelInfo
from gateway.services import Prediction
from gateway.sequences import Stored
from gateway.tracking.results import track
from gateway.vision.pipeline import Found

log = logging.getLogger("gateway")
SEQUENCE_HEADER = "X-Sequence-Frame"  # the frame of its sequence an image became (1 for the first)
TRACKABLE = ("detect", "segment", "pose", "obb")  # tasks whose results carry boxes (Ultralytics' trackable tasks)


def check(info: ModelInfo, args: PredictArgs) -> None:
    """UnprocessableImage (422) for a model that has nothing to track (a classifier)."""
    if args.track and info.task not in TRACKABLE:
        raise UnprocessableImage(
            f"Model '{info.name}' is a {info.task} model: its answers are classes without boxes, so there is nothing "
            f"to track. Tracking ('track', 'tracker', 'sequence') works with detect, segment, pose and obb models; "
            "send the request without them."
        )


def needs_frames(args: PredictArgs) -> bool:
    """Whether the tracker needs each frame's pixels (BoT-SORT's camera-motion estimate), beside its detections."""
    return args.track and args.tracker == "botsort"


@dataclass
class Tracker:
    """A tracker's state, carried from one frame to the next in order (`then(...)` per frame, from one thread at a
    time: the frames of one request are post-processed one after another)."""

    state: tracking.State

    @classmethod
    def start(cls, info: ModelInfo, args: PredictArgs) -> Tracker:
        config = tracking.Config(tracker="botsort" if args.tracker == "botsort" else "bytetrack")
        return cls(tracking.init(config, obb=info.task == "obb"))

    def then(self, shape: tuple[int, int], frame: NDArray[np.uint8] | None) -> Callable[[Found], Found]:
        """The step `pipeline.finish` runs on one frame's detections: its tracked rows (gateway/tracking/results.py);
        the state moves on. shape: the frame's (height, width); frame: its BGR pixels (BoT-SORT) or None."""

        def step(found: Found) -> Found:
            self.state, out = track(self.state, found, shape, frame)
            return out

        return step


def saved(tracker: Tracker) -> str:
    """The tracker's state as text for a record (a job's or a stream's checkpoint): base64 of
    gateway/tracking/codec.py's bytes. Runs for milliseconds (BoT-SORT's previous frame as PNG): off the loop."""
    return base64.b64encode(tracking.dumps(tracker.state)).decode()


def restore(text: str, what: str) -> tracking.State | None:
    """The state `saved` wrote; None, logged as `what`'s, when it can't be read (another format version, corrupt)."""
    try:
        return tracking.loads(base64.b64decode(text, validate=True))
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError; TypeError: not text
        log.warning("%s: its tracker state can't be read (%s): tracks start over", what, exc)
        return None


@dataclass
class Sequence:
    """One image request's frame of a sequence: the state as read, the tracker that continues it, and the frame
    number it became once written (`frame`)."""

    name: str
    stored: Stored
    tracker: Tracker
    frame: int = field(default=0)


async def open_sequence(prediction: Prediction, info: ModelInfo, args: PredictArgs, images: int) -> Sequence:
    """The request's sequence as stored (before its frame is inferred): 400 for several images or a sequence of
    another tracker or kind of box; 429 for one sequence too many; 503 when the store is unreachable."""
    if images != 1:
        raise BadRequest(
            f"'sequence' takes one image per request (this one has {images}): send a sequence's frames one by one, "
            "in order."
        )
    services = prediction.services
    stored = await services.sequences.read(prediction.entry.id, args.sequence)
    if stored.state is None:
        return Sequence(args.sequence, stored, Tracker.start(info, args))
    try:
        state = await services.workers.run(tracking.loads, stored.state)
    except ValueError:  # written by another version of the gateway: start over rather than fail every frame
        return Sequence(args.sequence, Stored(stored.frame, None), Tracker.start(info, args))
    if state.config.tracker != args.tracker:
        raise BadRequest(
            f"Sequence '{args.sequence}' tracks with tracker={state.config.tracker}; send its frames with that "
            "tracker, or start a new sequence (another name) for this one."
        )
    if state.obb != (info.task == "obb"):
        kind = "oriented boxes (an obb model)" if state.obb else "axis-aligned boxes (a detect, segment or pose model)"
        raise BadRequest(
            f"Sequence '{args.sequence}' tracks {kind}; model '{info.name}' is a {info.task} model. Send a "
            "sequence's frames to models of one kind, or start a new sequence (another name)."
        )
    return Sequence(args.sequence, stored, Tracker(state))


async def close_sequence(prediction: Prediction, sequence: Sequence) -> dict[str, str]:
    """Write the sequence's new state (compare-and-set: 409 when another frame of it was tracked meanwhile); the
    answer's header naming the frame this image became."""
    services = prediction.services
    blob = await services.workers.run(tracking.dumps, sequence.tracker.state)
    sequence.frame = await services.sequences.write(prediction.entry.id, sequence.name, sequence.stored.frame, blob)
    return {SEQUENCE_HEADER: str(sequence.frame)}
