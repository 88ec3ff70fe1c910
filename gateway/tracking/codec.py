"""A tracker `State` as bytes and back, losslessly (`loads(dumps(s))` tracks exactly as `s` does), for Redis.

Layout: MAGIC; the length of the next part (4 bytes, little-endian); zlib (level 1) of a 4-byte header length, an
orjson header (settings, counters, row counts, shapes) and the arrays' raw bytes, one column after another for the
tracked and lost tracks together: the Kalman mean (8 float64), the covariance entries in use, the angle (oriented
boxes only), the score (float32), the integer columns (int64) and BoT-SORT's previous corners; last, BoT-SORT's
previous frame as a PNG. The covariance keeps the entries that are not zero in some track (of 64 per track,
ByteTrack's filter fills 16 and BoT-SORT's 32 once the camera turns), chosen by bit pattern so that nothing is
rounded. The previous frame is the grayscale frame at half size that the next frame's optical flow starts from:
most of a BoT-SORT state. PNG (level 1) stores it in about 30 % less than zlib, for a few more milliseconds.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import asdict
from typing import Any, cast

import cv2
import numpy as np
import orjson
from numpy.typing import NDArray

from gateway.tracking.gmc import Motion
from gateway.tracking.state import Config, State
from gateway.tracking.tracks import ACTIVE, ANGLE, CLS, COV, FRAME, ID, IDX, MEAN, REMOVED, SCORE, START, WIDTH, Tracks

MAGIC = b"YTTRK\x01"  # format version 1
LEVEL = 1  # zlib: the integer columns shrink; the float columns hardly do, at any level
INTS = [ID, FRAME, START, ACTIVE, CLS, IDX, REMOVED]


def dumps(state: State) -> bytes:
    """The state as bytes (see the module docstring for the layout)."""
    table = np.concatenate([state.tracked.data, state.lost.data])
    covariance = table[:, COV]
    used = np.flatnonzero((covariance.view(np.uint64) != 0).any(axis=0))  # by bit pattern: -0.0 is kept too
    motion = state.motion
    header = {
        "config": asdict(state.config),
        "obb": state.obb,
        "frame_id": state.frame_id,
        "next_id": state.next_id,
        "removed_total": state.removed_total,
        "tracked": len(state.tracked),
        "lost": len(state.lost),
        "covariance": used.tolist(),
        "motion": None if motion is None else [*motion.frame.shape, len(motion.points)],
    }
    parts = [table[:, MEAN].astype("<f8"), covariance[:, used].astype("<f8")]
    if state.obb:
        parts.append(table[:, ANGLE].astype("<f8"))
    parts += [table[:, SCORE].astype("<f4"), table[:, INTS].astype("<i8")]
    frame = b""
    if motion is not None:
        parts.append(motion.points.astype("<f4"))
        frame = cv2.imencode(".png", motion.frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    head = orjson.dumps(header)
    body = b"".join([struct.pack("<I", len(head)), head, *(np.ascontiguousarray(p).tobytes() for p in parts)])
    packed = zlib.compress(body, LEVEL)
    return b"".join([MAGIC, struct.pack("<I", len(packed)), packed, frame])


def loads(blob: bytes) -> State:
    """The state `dumps` wrote. ValueError if the bytes are not one (another format version, truncated, corrupt)."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a tracker state of this format version")
    try:
        (size,) = struct.unpack_from("<I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        inflate = zlib.decompressobj()
        raw = inflate.decompress(blob[start : start + size])
        if not inflate.eof or inflate.unused_data:
            raise ValueError("truncated")
        (size_head,) = struct.unpack_from("<I", raw)
        header: dict[str, Any] = orjson.loads(raw[4 : 4 + size_head])
        reader = _Reader(raw, 4 + size_head)
        n_tracked, n = header["tracked"], header["tracked"] + header["lost"]
        used = np.asarray(header["covariance"], dtype=np.int64)
        row = 8 * (8 + len(used) + bool(header["obb"]) + len(INTS)) + 4
        points = 0 if header["motion"] is None else header["motion"][2]
        if min(n_tracked, n - n_tracked, points) < 0 or 4 + size_head + n * row + 8 * points != len(raw):
            raise ValueError("sizes do not add up")  # before allocating anything the header asks for
        table = np.zeros((n, WIDTH))
        table[:, MEAN] = reader.take("<f8", (n, 8))
        covariance = np.zeros((n, 64))
        covariance[:, used] = reader.take("<f8", (n, len(used)))
        table[:, COV] = covariance
        if header["obb"]:
            table[:, ANGLE] = reader.take("<f8", (n,))
        table[:, SCORE] = reader.take("<f4", (n,))
        table[:, INTS] = reader.take("<i8", (n, len(INTS)))
        motion = None
        frame = blob[start + size :]
        if header["motion"] is not None:
            height, width, k = header["motion"]
            points = reader.take("<f4", (k, 1, 2))
            image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None or image.shape != (height, width) or image.dtype != np.uint8:
                raise ValueError("bad previous frame")
            motion = Motion(cast("NDArray[np.uint8]", image), points)
        elif frame:
            raise ValueError("trailing bytes")
        if reader.offset != len(raw):
            raise ValueError("trailing bytes")
        return State(
            config=Config(**header["config"]),
            obb=bool(header["obb"]),
            frame_id=int(header["frame_id"]),
            next_id=int(header["next_id"]),
            removed_total=int(header["removed_total"]),
            tracked=Tracks(table[:n_tracked]),
            lost=Tracks(table[n_tracked:]),
            motion=motion,
        )
    except (ValueError, zlib.error, struct.error, cv2.error, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"corrupt tracker state: {exc}") from exc


class _Reader:
    """Consecutive arrays out of one buffer, each a native-endian copy (the state owns its arrays)."""

    def __init__(self, raw: bytes, offset: int) -> None:
        self.raw, self.offset = raw, offset

    def take(self, dtype: str, shape: tuple[int, ...]) -> NDArray[Any]:
        t = np.dtype(dtype)
        count = int(np.prod(shape))
        if count < 0 or self.offset + count * t.itemsize > len(self.raw):
            raise ValueError("truncated")
        out = np.frombuffer(self.raw, dtype=t, count=count, offset=self.offset).reshape(shape)
        self.offset += count * t.itemsize
        return out.astype(t.newbyteorder("="))
