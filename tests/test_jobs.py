"""Video jobs (POST /v1/jobs) against the real Triton and real gateways over sockets: a job's result equals
Ultralytics' own predictions and the synchronous video route's answer (tracked too); a job is cancelled, capped per
key, expires, tells its webhook (signed), is checked up front and hidden from other keys; with Redis, a job whose
owner is SIGKILLed mid-run is finished by another replica, complete (measured: POST to 202, job fps against the
video route's, takeover time) and resumed from its last checkpoint, the result byte for byte the synchronous
route's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.work import signing
from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_redis import cli
from tests.test_streams import Api, Receiver, poll
from tests.test_video import CONF, _frames_match, _wh, reference, write_video
from tritonlocal import launcher, redisserver

__all__ = ["reference"]  # the fixture, shared with tests/test_video.py

ARGS = {"model": "yolov8n", "confidence": CONF, "iou": 0.7, "size": 320}


class Jobs(Api):
    def submit(self, clip: Path, **fields: Any) -> requests.Response:
        files = {"file": (clip.name, clip.read_bytes())}
        return self.call("POST", "/v1/jobs", files=files, data=fields, timeout=120)

    def job(self, id: str) -> dict[str, Any]:
        r = self.call("GET", f"/v1/jobs/{id}")
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def finished(self, id: str, seconds: float = 120) -> dict[str, Any]:
        return poll(f"job {id} finished", lambda: (j := self.job(id))["state"] not in ("queued", "running") and j,
                    seconds)  # fmt: skip

    def lines(self, id: str) -> list[dict[str, Any]]:
        r = self.call("GET", f"/v1/jobs/{id}/result")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
        return [json.loads(line) for line in r.text.splitlines()]

    def video_route(self, clip: Path, **fields: Any) -> list[dict[str, Any]]:
        """The synchronous v1 video route's streamed answer (stream=true): one line per frame, the end line last."""
        fields = {**fields, "stream": "true"}
        files = {"file": (clip.name, clip.read_bytes())}
        r = self.call("POST", f"/v1/predict/{fields.pop('model')}", files=files, data=fields, timeout=300)
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.text.splitlines()]


def _key(gw: Gateway, name: str) -> Jobs:
    from gateway.keys.auth import KeyDraft, create_key

    _, key = create_key(gw.keys_file, KeyDraft(name))
    return Jobs(gw.url, key)


@pytest.fixture(scope="module")
def gw(triton: launcher.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("jobs-gw")
    gateway = start_gateway(triton, folder, jobs_dir=str(folder / "jobs"), url_allow_hosts="127.0.0.1")
    yield gateway
    stop_gateway(gateway)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("jobs-clips")
    return {
        "mp4": write_video(out / "bus.mp4", "mp4v", 9, (250, 170)),
        "long": write_video(out / "zidane-long.avi", "MJPG", 240, (320, 184), "zidane.jpg"),
        # inter-coded (MPEG-4 part 2, P-frames): a resumed run must decode the frames before its checkpoint
        "resume": write_video(out / "zidane-600.mp4", "mp4v", 600, (320, 184), "zidane.jpg"),
    }


def test_a_job_result_equals_ultralytics_and_the_video_route(
    gw: Gateway, clips: dict[str, Path], reference: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    api = _key(gw, "parity")
    clip = clips["mp4"]
    t0 = time.perf_counter()
    r = api.submit(clip, **ARGS)
    accepted_s = time.perf_counter() - t0
    assert r.status_code == 202, r.text
    job = r.json()["data"]
    assert job["state"] == "queued" and r.headers["location"] == f"/v1/jobs/{job['id']}" == job["status_url"]
    done = api.finished(job["id"])
    assert done["state"] == "done" and done["error"] is None, done
    assert done["progress"]["frames_done"] == done["progress"]["frames_total"] == 9 and done["runs"] == 1
    lines = api.lines(job["id"])
    frames, end = lines[:-1], lines[-1]
    _frames_match(frames, reference("yolov8n", clip, 1, 320), 1, _wh(clip), "data")  # asserts detections exist
    assert end["done"] is True and end["success"] is True and end["video"]["frames"] == 9
    assert lines == api.video_route(clip, **ARGS)  # the same frames, rows and end line as the synchronous route
    with capsys.disabled():
        print(f"\n[jobs] POST /v1/jobs to 202 for a {clip.stat().st_size // 1024} KiB clip: {accepted_s * 1000:.0f} ms")


def test_a_tracked_job_equals_the_tracked_video_route(gw: Gateway, clips: dict[str, Path]) -> None:
    api = _key(gw, "tracked")
    fields = {**ARGS, "track": "true", "vid_stride": 4}
    r = api.submit(clips["long"], **fields)
    assert r.status_code == 202, r.text
    assert api.finished(r.json()["data"]["id"])["state"] == "done"
    lines = api.lines(r.json()["data"]["id"])
    ids = [row["track_id"] for line in lines[:-1] for row in line["data"]]
    assert len(ids) > 10 and all(isinstance(i, int) for i in ids)  # tracked rows, with detections
    assert lines == api.video_route(clips["long"], **fields)


def test_bad_submissions_are_json_errors_naming_the_fix(gw: Gateway, clips: dict[str, Path], tmp_path: Path) -> None:
    api = _key(gw, "bad")
    photo = tmp_path / "photo.jpg"
    import cv2
    import numpy as np

    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    cases = [
        (api.submit(clips["mp4"], confidence=0.5), 400, "Missing 'model'"),
        (api.submit(photo, model="yolov8n"), 415, "not a video"),
        (api.submit(clips["mp4"], model="no-such-model"), 404, "no-such-model"),
        (api.submit(clips["mp4"], model="yolov8n", confidence=2), 400, "confidence"),
        (api.submit(clips["mp4"], model="yolov8n-cls", track="true"), 422, "nothing to track"),
        (api.submit(clips["mp4"], model="yolov8n", webhook="http://10.0.0.1/hook"), 400, "webhook"),
        (api.submit(clips["mp4"], model="yolov8n", url="https://example.com/v.mp4"), 400, "'file' part"),
        (api.call("POST", "/v1/jobs", data={"model": "yolov8n"}), 400, "file"),
        (requests.post(f"{gw.url}/v1/jobs", data={"model": "yolov8n"}, timeout=30), 401, "key"),
    ]
    for r, status, said in cases:
        body = r.json()
        assert (r.status_code, body["success"]) == (status, False) and said.lower() in body["message"].lower(), r.text
    assert api.call("GET", "/v1/jobs").json()["data"] == []  # nothing was queued


def test_a_key_sees_only_its_own_jobs(gw: Gateway, clips: dict[str, Path]) -> None:
    mine, other = _key(gw, "mine"), _key(gw, "other")
    r = mine.submit(clips["mp4"], **ARGS)
    assert r.status_code == 202, r.text
    id = r.json()["data"]["id"]
    mine.finished(id)
    for method, path in (("GET", f"/v1/jobs/{id}"), ("GET", f"/v1/jobs/{id}/result"), ("DELETE", f"/v1/jobs/{id}")):
        answer = other.call(method, path)
        assert answer.status_code == 404 and "GET /v1/jobs lists yours" in answer.json()["message"], answer.text
    assert other.call("GET", "/v1/jobs").json()["data"] == []
    assert [j["id"] for j in mine.call("GET", "/v1/jobs").json()["data"]] == [id]
    assert mine.call("DELETE", f"/v1/jobs/{id}").json()["data"]["state"] == "deleted"
    assert mine.call("GET", f"/v1/jobs/{id}").status_code == 404


def test_revoking_its_key_ends_a_running_job_with_401(gw: Gateway, tmp_path: Path) -> None:
    from gateway.keys.auth import KeyDraft, create_key
    from gateway.keys.cli import main as keys_main

    entry, key = create_key(gw.keys_file, KeyDraft("revoked-mid-job"))
    api = Jobs(gw.url, key)
    long = write_video(tmp_path / "zidane-1200.avi", "MJPG", 1200, (320, 184), "zidane.jpg")
    receiver = Receiver()  # the revoked key can't ask for its job any more: the webhook tells how it ended
    hook = receiver.start()
    try:
        submitted = poll("the new key accepted", lambda: (r := api.submit(long, webhook=hook, **ARGS)).status_code
                         == 202 and r, 10)  # fmt: skip
        id = submitted.json()["data"]["id"]
        poll("the job running", lambda: (j := api.job(id))["state"] == "running" and j["progress"]["frames_done"], 60)
        assert keys_main(["--file", str(gw.keys_file), "revoke", entry.id, "--yes"]) == 0
        revoked_at = time.monotonic()
        poll("the job's webhook delivered", lambda: receiver.got, 60)
    finally:
        receiver.stop()
    ended_s = receiver.got[0][0] - revoked_at
    job = json.loads(receiver.got[0][2])["job"]
    assert job["id"] == id and job["state"] == "failed" and "revoked while it ran" in job["error"], job
    assert 0 < job["progress"]["frames_done"] < 1200, job  # stopped partway: the rest was not analysed
    assert ended_s < 1 + 1 + 10, f"the job went on {ended_s:.1f} s after its key was revoked"  # re-read, tick
    assert api.call("GET", f"/v1/jobs/{id}").status_code == 401


def test_the_webhook_is_told_of_completion_signed_with_the_keys_secret(gw: Gateway, clips: dict[str, Path]) -> None:
    api = _key(gw, "hooked")
    secret = api.call("POST", "/v1/webhooks/secret").json()["data"]["webhook_secret"]
    receiver = Receiver()
    hook = receiver.start()
    try:
        r = api.submit(clips["mp4"], webhook=hook, **ARGS)
        assert r.status_code == 202 and "webhook_secret" not in r.json()["data"], r.text
        id = r.json()["data"]["id"]
        poll("the job's webhook delivered", lambda: receiver.got, 120)
    finally:
        receiver.stop()
    _, header, body = receiver.got[0]
    assert signing.verify(secret, header, body) and not signing.verify(secret, header, body + b" ")
    payload = json.loads(body)
    assert payload["type"] == "job.done" and payload["job"]["id"] == id and payload["job"]["state"] == "done"
    assert payload["job"]["result"] == f"/v1/jobs/{id}/result" and payload["job"]["progress"]["frames_done"] == 9


@pytest.fixture
def small_gw(triton: launcher.TritonServer, tmp_path: Path) -> Iterator[Gateway]:
    """One unfinished job per key, results kept 3 s."""
    gateway = start_gateway(triton, tmp_path, jobs_dir=str(tmp_path / "jobs"), max_jobs_per_key="1",
                            job_result_ttl_s="3")  # fmt: skip
    yield gateway
    stop_gateway(gateway)


def test_cap_cancel_and_expiry(
    small_gw: Gateway, clips: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = Jobs(small_gw.url, small_gw.key)
    # a file of a job the gateway forgot (a memory board's restart), older than a result is kept plus a run's time
    forgotten = tmp_path / "jobs" / "job_0000000000000123456789ab.ndjson"
    forgotten.write_bytes(b"{}\n")
    os.utime(forgotten, (time.time() - 3 - 3600 - 60,) * 2)
    long = write_video(tmp_path / "zidane-1200.avi", "MJPG", 1200, (320, 184), "zidane.jpg")  # running for seconds
    first = api.submit(long, **ARGS)
    assert first.status_code == 202, first.text
    id = first.json()["data"]["id"]
    capped = api.submit(clips["mp4"], **ARGS)
    assert capped.status_code == 429 and "GATEWAY_MAX_JOBS_PER_KEY" in capped.json()["message"], capped.text
    poll("the job running", lambda: (j := api.job(id))["state"] == "running" and j["progress"]["frames_done"], 60)
    asked = time.monotonic()
    cancelled = api.call("DELETE", f"/v1/jobs/{id}")
    assert cancelled.status_code == 200 and cancelled.json()["data"]["state"] == "cancelled", cancelled.text
    # the owner stops: its unfinished result is deleted by the run itself as it ends, and the video with the cancel
    others = lambda: {p.name for p in (tmp_path / "jobs").iterdir()} - {forgotten.name}  # noqa: E731
    poll("the run ended, its files gone", lambda: not others(), 10)
    stopped_s = time.monotonic() - asked
    with capsys.disabled():
        print(f"\n[jobs] DELETE of a running job: its owner stopped (its part file gone) {stopped_s:.2f} s later")
    assert stopped_s < 1 + 5  # a progress tick (1 s) and the chunk in flight: generous on a busy machine
    stopped_at = api.job(id)
    assert stopped_at["state"] == "cancelled" and stopped_at["progress"]["frames_done"] < 1200
    assert api.call("GET", f"/v1/jobs/{id}/result").status_code == 400  # a cancelled job has no result
    # the cap counts unfinished jobs only
    second = api.submit(clips["mp4"], **ARGS)
    assert second.status_code == 202, second.text
    done = api.finished(second.json()["data"]["id"])
    assert done["state"] == "done" and done["expires"] - done["finished"] == pytest.approx(3, abs=0.01)
    gone = poll("the result expired", lambda: (r := api.call("GET", f"/v1/jobs/{done['id']}")).status_code == 404
                and r.json(), 30)  # fmt: skip
    assert "expired" in gone["message"] and "GATEWAY_JOB_RESULT_TTL_S" in gone["message"]
    assert api.call("GET", f"/v1/jobs/{done['id']}/result").status_code == 404
    poll("the forgotten job's file removed (the first sweep, after 10 s)", lambda: not forgotten.exists(), 30)
    assert not list((tmp_path / "jobs").iterdir())


@pytest.mark.load
def test_job_fps_against_the_video_route(
    gw: Gateway, clips: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    api = _key(gw, "fps")
    t0 = time.perf_counter()
    sync = api.video_route(clips["long"], **ARGS)
    sync_fps = (len(sync) - 1) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    r = api.submit(clips["long"], **ARGS)
    accepted_s = time.perf_counter() - t0
    done = api.finished(r.json()["data"]["id"], 300)
    job_fps = done["progress"]["frames_done"] / (done["finished"] - done["started"])
    assert api.lines(done["id"]) == sync
    with capsys.disabled():
        print(f"\n[jobs] 240 frames 320x184, yolov8n at 320: job {job_fps:.1f} fps (record's: "
              f"{done['progress']['fps']:.1f}), synchronous video route {sync_fps:.1f} fps; POST to 202 for its "
              f"{clips['long'].stat().st_size // 1024} KiB: {accepted_s * 1000:.0f} ms")  # fmt: skip


@contextlib.contextmanager
def two_replicas(
    triton: launcher.TritonServer, tmp_path: Path, **env: str
) -> Iterator[tuple[list[Gateway], str, Path]]:
    """Two gateways on a Redis of their own, one jobs folder (the shared volume); (them, a key, the folder). `env`:
    more settings of both."""
    redis_server = redisserver.start(tmp_path / "redis")
    gateways: list[Gateway] = []
    try:
        created = cli(redis_server, "create", "--name", "jobs", "--rate", "1000")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        env = {"redis_url": redis_server.url, "redis_password": redis_server.password,
               "jobs_dir": str(tmp_path / "jobs"), "stream_lease_s": "3", **env}  # fmt: skip
        gateways = [start_gateway(triton, tmp_path / f"gw{i}", **env) for i in range(2) if _mkdir(tmp_path / f"gw{i}")]
        yield gateways, key, tmp_path / "jobs"
    finally:
        for gw in gateways:
            stop_gateway(gw)
        redis_server.stop()


@pytest.fixture
def replicas(triton: launcher.TritonServer, tmp_path: Path) -> Iterator[tuple[list[Gateway], str, Path]]:
    with two_replicas(triton, tmp_path, job_checkpoint_s="1") as found:
        yield found


def _mkdir(path: Path) -> bool:
    path.mkdir()
    return True


@pytest.mark.load
@pytest.mark.parametrize(("track", "graceful"), [("", False), ("bytetrack", False), ("botsort", False), ("", True)],
                         ids=["plain", "tracked", "botsort", "shutdown"])  # fmt: skip
def test_a_job_whose_owner_is_killed_is_resumed_by_another_replica(
    replicas: tuple[list[Gateway], str, Path],
    clips: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    track: str,
    graceful: bool,
) -> None:
    """The owner SIGKILLed at about 2/3 of the job, after a checkpoint (GATEWAY_JOB_CHECKPOINT_S=1): the other
    replica goes on from the checkpoint, not from frame 0, and the result is byte for byte the synchronous route's
    (tracked: the same track ids, the tracker restored from the checkpoint, BoT-SORT's previous frame too). Shut down
    (SIGTERM) instead: the owner hands the job over with a last checkpoint and keeps its part file for the successor."""
    gateways, key, folder = replicas
    apis = [Jobs(gw.url, key) for gw in gateways]
    fields = {**ARGS, "track": "true", "tracker": track, "vid_stride": 2} if track else ARGS
    total = 300 if track else 600
    r = apis[0].submit(clips["resume"], **fields)
    assert r.status_code == 202, r.text
    id = r.json()["data"]["id"]

    started = poll("the job running", lambda: (j := apis[1].job(id))["state"] == "running" and j, 60)
    owner = next(i for i, gw in enumerate(gateways) if f"-{gw.process.pid}-" in started["owner"])
    other = 1 - owner

    def late_with_checkpoint() -> dict[str, Any] | None:
        job = apis[other].job(id)
        assert job["state"] == "running", job  # the owner, stopped while this looks, can't have overtaken it
        progress = job["progress"]
        return job if (progress["checkpoint"] or 0) >= 20 and progress["frames_done"] >= total * 2 // 3 else None

    # the owner runs in slices, stopped while its progress is read: the job seen 2/3 done is still running at the
    # kill however fast or slow this machine is (polled freely, a fast run could finish between two looks)
    running = in_slices(gateways[owner].process, "the job 2/3 done, with a checkpoint", late_with_checkpoint, 120)
    checkpoint, done_at_kill = running["progress"]["checkpoint"], running["progress"]["frames_done"]
    killed_at = time.monotonic()
    if graceful:
        gateways[owner].process.terminate()  # SIGTERM, delivered as it goes on: the lease is given back at once
        gateways[owner].process.send_signal(signal.SIGCONT)  # (a second SIGTERM would make uvicorn skip its shutdown)
        gateways[owner].process.wait(20)
    else:
        gateways[owner].process.kill()  # SIGKILL: no goodbye, the lease must lapse
        gateways[owner].process.wait(10)
    taken = poll("another replica running the job", lambda: (j := apis[other].job(id))["runs"] == 2
                 and j["progress"]["resumed_at"] is not None and j, 60)  # fmt: skip
    took_s = time.monotonic() - killed_at
    assert f"-{gateways[other].process.pid}-" in taken["owner"]
    resumed_at = taken["progress"]["resumed_at"]
    assert checkpoint <= resumed_at < total, taken  # from the last checkpoint (the one seen, or a later one)
    done = apis[other].finished(id, 300)
    finished_s = time.monotonic() - killed_at
    assert done["state"] == "done" and done["progress"]["frames_done"] == done["progress"]["frames_total"] == total
    lines = apis[other].lines(id)
    stride = 2 if track else 1
    assert [line["frame"] for line in lines[:-1]] == list(range(stride - 1, 600, stride))  # complete, in order, once
    if track:
        assert len({row["track_id"] for line in lines[:-1] for row in line["data"]}) >= 1
    assert lines == apis[other].video_route(clips["resume"], **fields)  # byte for byte, end line included
    assert sorted(p.name for p in folder.iterdir()) == [f"{id}.ndjson"]  # the video and the dead run's part are gone
    with capsys.disabled():
        how = "SIGTERMed" if graceful else "SIGKILLed"
        print(f"\n[jobs takeover {track or 'untracked'}] owner {how} at frame ~{done_at_kill} of {total} "
              f"(checkpoint {checkpoint}): the other replica resumed at frame {resumed_at} after {took_s:.1f} s "
              f"(GATEWAY_STREAM_LEASE_S=3, GATEWAY_JOB_CHECKPOINT_S=1) and analysed {total - resumed_at} frames "
              f"(from frame 0: {total}); done {finished_s:.1f} s after the kill")  # fmt: skip
    assert took_s < 3 + 15  # the lease time, then a scan: generous on a busy machine


def in_slices(process: subprocess.Popen[bytes], what: str, check: Callable[[], Any], seconds: float) -> Any:
    """`check()`'s first truthy answer within `seconds`, asked while `process` is stopped (SIGSTOP, all its threads
    seen stopped), letting it run 0.1 s between two asks; the process is left stopped after the answer (SIGKILL ends
    it as it is; to end it gently, send SIGTERM, then SIGCONT)."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        process.send_signal(signal.SIGSTOP)
        poll(f"process {process.pid} stopped", lambda: _stopped(process.pid), 10)
        last = check()
        if last:
            return last
        process.send_signal(signal.SIGCONT)
        time.sleep(0.1)  # the slice it runs: the answer is waited for by `check`, not by this
    process.send_signal(signal.SIGCONT)
    pytest.fail(f"{what}: not within {seconds} s (last: {last})")


def _stopped(pid: int) -> bool:
    """Every thread of `pid` in the stopped state (SIGSTOP is delivered asynchronously)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return bool(states) and all(state in "tT" for state in states)


def test_a_run_resumes_only_from_a_complete_checkpoint(tmp_path: Path) -> None:
    """The new run's part file gets the checkpoint's prefix of the old one, or nothing (and starts at frame 0) when
    the old file is gone, shorter than the checkpoint says, or the prefix does not end on a complete frame line."""
    from gateway.jobs.run import Checkpoint, _open_part

    lines = [b'{"frame":0}\n', b'{"frame":1}\n', b'{"frame":2}\n']
    (tmp_path / "job_1.1.part").write_bytes(b"".join(lines) + b'{"frame":3')  # the dead run's, cut mid-line
    size = len(b"".join(lines))
    cases = [
        (Checkpoint("job_1.1.part", 3, size, 2), 3, b"".join(lines)),
        (Checkpoint("job_1.1.part", 2, len(lines[0] + lines[1]), 1), 2, lines[0] + lines[1]),
        (Checkpoint("job_1.1.part", 4, size + 100, 3), 0, b""),  # longer than the file
        (Checkpoint("job_1.1.part", 3, size - 1, 2), 0, b""),  # not on a line's end
        (Checkpoint("job_1.0.part", 3, size, 2), 0, b""),  # gone
        (None, 0, b""),
    ]
    for k, (found, frames, prefix) in enumerate(cases):
        part = tmp_path / f"job_1.{k + 2}.part"
        out, resumed = _open_part(tmp_path, part, found)
        out.write(b"next\n")
        out.close()
        assert (resumed, part.read_bytes()) == (frames, prefix + b"next\n"), found
    assert (tmp_path / "job_1.1.part").read_bytes().endswith(b'{"frame":3')  # the old file is only read
    round_trip = Checkpoint("job_1.1.part", 3, size, 2, "QUJD")
    assert Checkpoint.loads(round_trip.dumps()) == round_trip
    for bad in ("", "{", '{"part": "x"}', Checkpoint("../x.part", 1, 1, 1).dumps(), Checkpoint("p", -1, 1, 1).dumps()):
        assert Checkpoint.loads(bad) is None, bad


def test_the_client_submits_waits_with_progress_and_reads_the_result(gw: Gateway, clips: dict[str, Path]) -> None:
    import asyncio

    from yolo_triton_client import AsyncClient, Client, JobFailed

    api = _key(gw, "client")
    seen: list[tuple[str, int]] = []
    with Client(api_key=api.key, base_url=gw.url) as client:
        job = client.jobs.submit("yolov8n", clips["long"], vid_stride=2, size=320, confidence=CONF, iou=0.7)
        assert job.state == "queued" and not job.finished
        done = client.jobs.wait(job.id, progress=lambda j: seen.append((j.state, j.frames_done)))
        assert done.state == "done" and done.frames_done == done.frames_total == 120 and done.percent == 100
        assert seen[-1] == ("done", 120) and len(seen) >= 2  # told of each change, the last one "done"
        lines = client.jobs.result(job.id)
        assert lines == api.video_route(clips["long"], **{**ARGS, "vid_stride": 2})
        assert [j.id for j in client.jobs()] == [job.id]

    async def cancel() -> None:
        async with AsyncClient(api_key=api.key, base_url=gw.url) as client:
            job = await client.jobs.submit("yolov8n", clips["long"], size=320)
            assert (await client.jobs.cancel(job.id)).state == "cancelled"
            with pytest.raises(JobFailed) as failed:
                await client.jobs.wait(job.id)
            assert failed.value.job.state == "cancelled"

    asyncio.run(cancel())


def _run_once(tmp_path: Path, video: Path, runs: int) -> tuple[dict[str, str] | None, list[tuple[Any, ...]]]:
    """Run job "job_1" (of key k1, `runs` runs so far) once on a memory board, with stand-in services (the key lookup
    and the usage count: nothing else may be reached); its record afterwards, and what was counted in usage."""
    import asyncio
    from types import SimpleNamespace

    from gateway.jobs import service
    from gateway.settings import Settings
    from gateway.work.board import MemoryBoard

    counted: list[tuple[Any, ...]] = []

    async def get_key(key_id: str) -> Any:
        return SimpleNamespace(id=key_id, revoked=False)

    services = SimpleNamespace(
        settings=Settings(jobs_dir=tmp_path),
        store=SimpleNamespace(get_key=get_key, record=lambda *args: counted.append(args)),
        metrics=SimpleNamespace(label=lambda model: model),
    )

    async def main() -> dict[str, str] | None:
        board = MemoryBoard()
        jobs = service.Jobs(services, board, None, None, "replica-1")  # type: ignore[arg-type]
        record = {"key": "k1", "model": "yolov8n", "video": str(video), "runs": str(runs),
                  "state": "running", "created": str(time.time())}  # fmt: skip
        assert await board.create("job", "job_1", "k1", record, 0)
        lease = await board.acquire("job", "job_1", "replica-1", 10)
        assert lease is not None
        await jobs._run(await board.read("job", "job_1") or {}, lease)
        assert await board.active("job") == [] and await board.finished("job", "k1") == ["job_1"]
        return await board.read("job", "job_1")

    return asyncio.run(main()), counted


def test_a_job_started_too_often_fails_instead_of_starting_again(tmp_path: Path) -> None:
    """A video that kills its gateway would otherwise kill every replica in turn: the run after MAX_RUNS fails the
    job (retired, its video deleted) without running it."""
    from gateway.jobs.service import MAX_RUNS

    video = tmp_path / "v.mp4"
    video.write_bytes(b"not read")
    after, counted = _run_once(tmp_path, video, MAX_RUNS)
    assert after is not None and after["state"] == "failed" and after["runs"] == str(MAX_RUNS + 1)
    assert f"started {MAX_RUNS} times" in after["error"] and not video.exists()
    assert counted and counted[0][3] == 500  # in the key's usage, as a failed request


def test_a_job_whose_video_this_replica_cannot_see_fails_naming_the_shared_folder(tmp_path: Path) -> None:
    """Replicas with a GATEWAY_JOBS_DIR each of their own (not one shared volume): the job fails saying so, rather
    than as a video that does not decode."""
    after, _ = _run_once(tmp_path, tmp_path / "elsewhere.mp4", 0)
    assert after is not None and after["state"] == "failed" and after["status"] == "503"
    assert "GATEWAY_JOBS_DIR" in after["error"] and "shared volume" in after["error"]


def test_an_owner_that_lost_its_lease_cant_overwrite_its_successors_checkpoint() -> None:
    """On the memory board: the checkpoint is written with the progress, fenced; once another replica holds the lease,
    the old owner's checkpoint is refused (its run ends as LOST, keeping its part file) and the successor's stays."""
    import asyncio

    from gateway.jobs.run import CHECKPOINT, LOST, STOP, Checkpoint, going_on
    from gateway.work.board import MemoryBoard

    async def main() -> None:
        board = MemoryBoard()
        assert await board.create("job", "job_1", "k1", {"state": "running"}, 0)
        old = await board.acquire("job", "job_1", "replica-a", 0.05)
        assert old is not None
        mine = Checkpoint(f"job_1.{old.token}.part", 10, 100, 9).dumps()
        assert await going_on(board, old, {"frames_done": "10", CHECKPOINT: mine}) == ""
        deadline = time.monotonic() + 10
        while (new := await board.acquire("job", "job_1", "replica-b", 10)) is None:  # the old lease lapses
            assert time.monotonic() < deadline, "the lease never lapsed"
            await asyncio.sleep(0.01)
        theirs = Checkpoint(f"job_1.{new.token}.part", 12, 120, 11).dumps()
        assert await going_on(board, new, {"frames_done": "12", CHECKPOINT: theirs}) == ""
        late = Checkpoint(f"job_1.{old.token}.part", 20, 200, 19).dumps()
        assert await going_on(board, old, {"frames_done": "20", CHECKPOINT: late}) == LOST
        record = await board.read("job", "job_1")
        assert record is not None and record[CHECKPOINT] == theirs and record["frames_done"] == "12"
        assert await board.update("job", "job_1", {"stop": "1"})
        assert await going_on(board, new, {"frames_done": "13"}) == STOP  # a cancel: the part file is removed

    asyncio.run(main())
