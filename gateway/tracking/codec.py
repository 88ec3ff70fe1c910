"""A tracker `State` as bytes and back, losslessly (`loads(dumps(s))` tracks exactly as `s` does), for Redis.

Layout: MAGIC, then zlib (level 1) of: a 4-byte little-endian header length, an orjson header (settings, counters,
row counts, shapes) and the arrays' raw bytes, one column after another for the tracked and lost tracks together:
the Kalman mean (8 float64), the covariance entries in use, the angle (oriented boxes only), the score (float32),
the integer columns (int64), then BoT-SORT's previous frame. The covariance keeps only the entries that are not
zero in some track (of 64 per track, ByteTrack's filter fills 16 and BoT-SORT's, after camera motion, 32), chosen by
bit pattern so nothing is rounded. The previous frame for camera motion is the grayscale frame at half size
(W/2 x H/2 bytes before zlib) and its corners: most of a BoT-SORT state's size.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from gateway.tracking.gmc import Motion
from gateway.tracking.tracker import Config, State
from gateway.tracking.tracks import ACTIVE, ANGLE, CLS, COV, FRAME, ID, IDX, MEAN, REMOVED, SCORE, START, WIDTH, Tracks

MAGIC = b"YTTRK\x01"  # format version 1
LEVEL = 1  # zlib: the integer columns and the frame shrink; the float columns hardly do, at any level
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
    if motion is not None:
        parts += [motion.frame.astype("|u1"), motion.points.astype("<f4")]
    head = orjson.dumps(header)
    body = b"".join([struct.pack("<I", len(head)), head, *(np.ascontiguousarray(p).tobytes() for p in parts)])
    return MAGIC + zlib.compress(body, LEVEL)


def loads(blob: bytes) -> State:
    """The state `dumps` wrote. ValueError if the bytes are not one (another format version, truncated, corrupt)."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a tracker state of this format version")
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(blob[len(MAGIC) :])
        if not inflate.eof or inflate.unused_data:
            raise ValueError("truncated or trailing bytes")
        (size,) = struct.unpack_from("<I", raw)
        header: dict[str, Any] = orjson.loads(raw[4 : 4 + size])
        reader = _Reader(raw, 4 + size)
        n_tracked, n = header["tracked"], header["tracked"] + header["lost"]
        used = np.asarray(header["covariance"], dtype=np.int64)
        table = np.zeros((n, WIDTH))
        table[:, MEAN] = reader.take("<f8", (n, 8))
        cov = np.zeros((n, 64))
        cov[:, used] = reader.take("<f8", (n, len(used)))
        table[:, COV] = cov
        if header["obb"]:
            table[:, ANGLE] = reader.take("<f8", (n,))
        table[:, SCORE] = reader.take("<f4", (n,))
        table[:, INTS] = reader.take("<i8", (n, len(INTS)))
        motion = None
        if header["motion"] is not None:
            h, w, k = header["motion"]
            motion = Motion(reader.take("|u1", (h, w)), reader.take("<f4", (k, 1, 2)))
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
    except (zlib.error, struct.error, orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
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
