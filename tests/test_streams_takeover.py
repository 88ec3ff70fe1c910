"""A tracked live stream taken over by another replica goes on: two real gateway processes on a real Redis, a live
HLS source from ffmpeg (served in real time, so a new reader joins at its live edge), the trained yolov8n. The
owning gateway is SIGKILLed (the lease lapses; ByteTrack) or SIGTERMed (it checkpoints and hands the lease back at
once; BoT-SORT, whose state holds the previous frame); the other replica continues from the stream's checkpoint
(gateway/live/resume.py): frame indices only grow across the takeover, and the people in the picture keep their
`track_id`s. Takeover time is measured and printed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import sources
from tests.conftest import Gateway
from tests.test_streams import Api, poll
from tests.test_streams_redis import _follow, _owner, on_redis
from tritonlocal import launcher

pytestmark = [pytest.mark.load, pytest.mark.trained]
MODEL = "trained-yolov8n"
CHECKPOINT_S = 1  # GATEWAY_STREAM_CHECKPOINT_S here: the kill comes after a checkpoint that holds the bus's tracks
FIRST_S, SECOND_S = 8, 240  # the source: zidane.jpg (ids used up before the bus shows), then bus.jpg


@pytest.fixture
def pair(
    triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Gateway], str]]:
    """Two gateways on a Redis of their own (no other replica may own the stream)."""
    with on_redis(triton, tmp_path_factory, "takeover", 2, stream_checkpoint_s=str(CHECKPOINT_S)) as made:
        yield made


@dataclass
class Live:
    """A live HLS playlist written by ffmpeg in real time (the last 6 one-second segments) and the HTTP server that
    serves it; both stopped by their own process ids."""

    url: str
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def live(folder: Path) -> Live:
    """zidane.jpg for FIRST_S seconds, then bus.jpg for SECOND_S, both letterboxed to 640x640, 25 fps, as live HLS."""
    from ultralytics.utils import ASSETS

    folder.mkdir(parents=True, exist_ok=True)
    fit = "scale=640:640:force_original_aspect_ratio=decrease,pad=640:640:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=25"
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-loop", "1", "-t", str(FIRST_S), "-i", str(ASSETS / "zidane.jpg"),
         "-re", "-loop", "1", "-t", str(SECOND_S), "-i", str(ASSETS / "bus.jpg"),
         "-filter_complex", f"[0]{fit}[a];[1]{fit}[b];[a][b]concat=n=2:v=1[v]", "-map", "[v]",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
         "-f", "hls", "-hls_time", "1", "-hls_list_size", "6", "-hls_flags", "delete_segments",
         str(folder / "index.m3u8")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    port = sources.free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    made = Live(f"http://127.0.0.1:{port}/index.m3u8", [ffmpeg, server])
    try:
        sources.wait_port(port, server)
        poll("the live playlist's first segment", lambda: (folder / "index.m3u8").exists(), 30)
    except BaseException:
        made.stop()
        raise
    return made


def _iou(a: dict[str, float], b: dict[str, float]) -> float:
    w = min(a["x2"], b["x2"]) - max(a["x1"], b["x1"])
    h = min(a["y2"], b["y2"]) - max(a["y1"], b["y1"])
    inter = max(w, 0.0) * max(h, 0.0)
    area = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"])
    return inter / max(area - inter, 1e-9)


def _bus(event: dict[str, Any]) -> bool:
    return any(row["name"] == "bus" for row in event["data"])


def _steady(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """The people tracked in every one of `events` (with the same id): id -> their box in the last one."""
    people = [{row["track_id"]: row["box"] for row in e["data"] if row["name"] == "person"} for e in events]
    return {id: box for id, box in people[-1].items() if all(id in p for p in people)}


@pytest.mark.parametrize("how, tracker", [("SIGKILL", "bytetrack"), ("SIGTERM", "botsort")])
def test_a_taken_over_tracked_stream_goes_on_with_its_frame_indices_and_track_ids(
    pair: tuple[list[Gateway], str], tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, tracker: str
) -> None:
    sources.need("ffmpeg")
    gateways, key = pair
    apis = [Api(gw.url, key) for gw in gateways]
    source = live(tmp_path / "hls")
    try:
        id = apis[0].create(source=source.url, model=MODEL, fps=5, tracker=tracker, size=640)["id"]
        owned = poll("an owner", lambda: (s := apis[0].get(id))["owner"] and s, 60)
        owner = _owner(gateways, owned)
        assert owner is not None, owned
        follower = 1 - owner
        seen: list[dict[str, Any]] = []
        _follow(apis[follower], id, seen)
        # the bus for long enough that a checkpoint (every CHECKPOINT_S) holds its people's tracks
        poll("the bus tracked for 12 frames", lambda: sum(map(_bus, seen)) >= 12, 90)
        gone_at = time.monotonic()
        gateways[owner].process.send_signal(getattr(signal, how))
        gateways[owner].process.wait(30)
        before = list(seen)
        took_over = poll(
            "the other replica owning the stream",
            lambda: (s := apis[follower].get(id))["owner"] not in (None, owned["owner"]) and s, 30,
        )  # fmt: skip
        owned_after = time.monotonic() - gone_at
        assert _owner(gateways, took_over) == follower
        poll("6 events from the new owner", lambda: sum(e["at"] > gone_at + 0.5 for e in seen) >= 6, 60)
        after = [e for e in seen if e["at"] > gone_at][-4:]
        resumed = min(e["at"] for e in seen if e["at"] > gone_at) - gone_at
        assert apis[follower].call("DELETE", f"/v1/streams/{id}").status_code == 200
    finally:
        source.stop()
    indices = [e["frame"] for e in seen]
    assert indices == sorted(set(indices)), indices  # they only grow, across the takeover too: no index twice
    assert after[0]["frame"] > before[-1]["frame"]
    first_bus = next(i for i, e in enumerate(before) if _bus(e))
    earlier = [row["track_id"] for e in before[:first_bus] for row in e["data"]]
    assert earlier, "no tracks before the bus showed: the ids of a fresh tracker could not be told apart"
    people_before, people_after = _steady(before[-3:]), _steady(after)
    assert len(people_before) >= 3 and people_after, (people_before, people_after)
    assert set(people_before) <= set(people_after), (people_before, people_after)  # the same ids ...
    for id_before, box in people_before.items():  # ... on the same people (a fresh tracker would number them anew)
        best = max(people_after, key=lambda i: _iou(people_after[i], box))
        assert best == id_before and _iou(people_after[best], box) > 0.5, (id_before, box, people_after)
    with capsys.disabled():
        frames = f"frames {before[-1]['frame']} -> {after[0]['frame']}"
        ids = sorted(people_before)
        print(f"\n[tracked stream takeover, {how}, {tracker}] another replica holds the lease after "
              f"{owned_after:.1f} s, the next event after {resumed:.1f} s; {frames}; people {ids} keep their ids "
              f"(GATEWAY_STREAM_LEASE_S=3, GATEWAY_STREAM_CHECKPOINT_S={CHECKPOINT_S})")  # fmt: skip
    assert resumed < 3 + 15  # the lease time, then a scan, an open and a frame: generous on a busy machine
