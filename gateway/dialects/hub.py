"""The HUB v1 dialects that answer in the envelope `{"success", "message", "data"}`: the first docs' (`hub`, rows as
`Results.summary()`) and the later docs' (`hub-xywhn`, rows normalized as centre, width and height, at full precision).

The request is the same for both, byte for byte (`image` parts; size, confidence, iou, url, normalize), so nothing in
it tells them apart: a key's own dialect or a base path picks `hub-xywhn` (gateway/dialects/choice.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from gateway.arguments import DialectName, PredictArgs
from gateway.dialects.base import DONE, Call, Dialect, FrameOutcome, Outcome
from gateway.errors import GatewayError, envelope

# Digits of `hub-xywhn` rows unless the request asks for fewer: every digit a float carries (the later docs show
# 0.8359682559967041), so the rounding never shows.
FULL = 16


class Hub(Dialect):
    """HUB v1 as first documented (what the README's first example follows)."""

    name: ClassVar[DialectName] = "hub"
    title = "HUB v1, first docs: Results.summary() rows in the {success, message, data} envelope"

    def answer(self, call: Call, outcomes: list[Outcome]) -> dict[str, Any]:
        if len(outcomes) == 1:
            return envelope(DONE, self.rows(call, outcomes[0].rows or []))
        entries = [
            envelope(DONE, self.rows(call, o.rows or []))
            if o.error is None
            else {"success": False, "message": o.error.message, "status": o.error.status, "data": []}
            for o in outcomes
        ]
        done = sum(o.error is None for o in outcomes)
        return envelope(f"Inference complete for {done} of {len(outcomes)} images.", entries)

    def frame(self, call: Call, o: FrameOutcome) -> dict[str, Any]:
        return {"frame": o.index, "time": o.time, "data": self.rows(call, o.rows)}

    def video(
        self, call: Call, entries: list[dict[str, Any]], video: dict[str, Any], error: GatewayError | None
    ) -> dict[str, Any]:
        message = error.message if error else f"Inference complete for {len(entries)} frame(s)."
        return {**envelope(message, entries, error is None), "video": video}

    def end_line(self, call: Call, video: dict[str, Any], analysed: int, error: GatewayError | None) -> dict[str, Any]:
        line: dict[str, Any] = {"done": True, "success": error is None}
        if error is not None:
            line["status"] = self.status(error)
        line["message"] = error.message if error else f"Inference complete for {analysed} frame(s)."
        return line | {"video": video}


class HubXywhn(Hub):
    """HUB v1 as later documented: the same request, rows always normalized to the image, at full precision."""

    name = "hub-xywhn"
    title = "HUB v1, later docs: normalized rows (xcenter, ycenter, width, height; segment, keypoints, obb lists)"

    def parse(self, fields: Mapping[str, str], default_size: int) -> PredictArgs:
        args = super().parse(fields, default_size)
        decimals = args.decimals if fields.get("decimals", "").strip() else FULL
        return replace(args, normalize=True, decimals=decimals)

    def rows(self, call: Call, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [xywhn_row(row, call.args.decimals) for row in rows]


def xywhn_row(row: dict[str, Any], decimals: int) -> dict[str, Any]:
    """A normalized `Results.summary()` row as the later HUB docs write it: `{class, name, confidence}`, then a box
    as centre and size, or the outline as one flat list `segment` [x, y, x, y, ...], the keypoints as `keypoints`
    [x, y, conf, ...], the oriented box's corners as `obb` [x1, y1, ..., x4, y4]; a classifier's rows keep three
    keys."""
    out: dict[str, Any] = {"class": row["class"], "name": row["name"], "confidence": row["confidence"]}
    box = row.get("box")
    if box is None:
        return out
    if "x3" in box:
        return out | {"obb": [box[f"{axis}{i}"] for i in range(1, 5) for axis in "xy"]}
    if "segments" in row:
        xs, ys = row["segments"]["x"], row["segments"]["y"]
        return out | {"segment": [v for point in zip(xs, ys) for v in point]}
    if "keypoints" in row:
        kpts = row["keypoints"]
        columns = [kpts[k] for k in ("x", "y", "visible") if k in kpts]
        return out | {"keypoints": [v for point in zip(*columns) for v in point]}
    x1, y1, x2, y2 = box["x1"], box["y1"], box["x2"], box["y2"]
    return out | {
        "width": round(x2 - x1, decimals),
        "height": round(y2 - y1, decimals),
        "xcenter": round((x1 + x2) / 2, decimals),
        "ycenter": round((y1 + y2) / 2, decimals),
    }
