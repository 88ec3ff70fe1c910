"""Video jobs: what the routes ask (submit, read, list, result, cancel or delete) and how this replica runs the jobs
it owns (gateway/work/owner.py claims them through their lease; gateway/jobs/run.py runs one).

A job is a record of kind "job" on the board (gateway/work/board.py), the same machinery as live streams: active
(queued, then running) until its run retires it as done or failed, or a DELETE retires it as cancelled; finished
jobs stay on the board, with their result file, until `expires` (GATEWAY_JOB_RESULT_TTL_S after they finished),
and are then deleted (by whichever replica sweeps or reads them first). The video and the result live in
GATEWAY_JOBS_DIR, which every replica must see. With Redis a job survives its gateway: when the owner dies, its
lease lapses and another replica (or the restarted one) runs the job on from its last checkpoint (gateway/jobs/run.py;
from its first frame when there is none yet); without Redis the board is in the process and a restart forgets its
jobs.

Record fields: key (the key id), model (as sent), args (JSON: the prediction arguments as strings), container,
video (its path; "" until a `url` job's download is complete), url and url_shown (a `url` job's address, and as
shown: without credentials and query string), stage, downloaded, download_total (gateway/jobs/download.py),
frames_total, webhook, webhook_shown, created, started, finished, expires (Unix s), state
(queued|running|done|failed|cancelled), error, status (the HTTP status the error would have had), frames_done, fps,
charged (tokens paid), runs, owner, token, stop, checkpoint (JSON: `run.Checkpoint`), resumed_at (the frames the
last run took from a checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
from starlette.datastructures import UploadFile

from gateway.dialects import DIALECTS
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
)
from gateway.jobs import download, run
from gateway.keys.auth import KeyEntry
from gateway.predict import tracked, video
from gateway.settings import Settings
from gateway.vision import videofile
from gateway.work import guard
from gateway.work.board import Lease
from gateway.work.owner import Work

log = logging.getLogger("gateway")
KIND = "job"
SWEEP_S = 10.0  # expired jobs are looked for this often (a read of an expired job deletes it at once)
ORPHANS_EVERY = 30  # sweeps between two looks for forgotten files (the first sweep looks too)
UNFINISHED = ("queued", "running")
# A job started this many times without an end fails instead of starting again: a video that kills its gateway (or
# a bug) must not take every replica down in turn. Graceful hand-overs (a rolling update) count too, hence not 2.
MAX_RUNS = 5
HUB = DIALECTS["hub"]
OWN = ("model", "webhook", "url")  # the job's own fields; the rest are the video route's arguments


class Jobs(Work):
    """The video jobs of this replica's app (see the module docstring)."""

    kind = KIND

    @staticmethod
    def capacity(settings: Settings) -> int:
        return settings.max_jobs

    def _setup(self) -> None:
        self._sweeper: asyncio.Task[None] | None = None
        self.off = ""  # why this replica can't take jobs ("": it can)

    def start(self) -> None:
        try:
            self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the gateway serves everything else; a POST /v1/jobs says why it can't
            self.off = f"GATEWAY_JOBS_DIR ({self.settings.jobs_dir}) can't be written: {exc.strerror}"
            log.warning("video jobs are off: %s", self.off)
            return  # nor does it claim others' jobs, whose videos it could not read
        self.owner.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="jobs-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.owner.close()

    async def create(
        self, entry: KeyEntry, uploads: list[UploadFile], fields: dict[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        """A new job for `entry` from a POST /v1/jobs form (the key's scope for `model` already checked); (its
        resource, the webhook secret when it was made just now, else None). Everything is checked before it is
        queued: the arguments, the video's container, size, duration and frames, the webhook URL."""
        settings = self.settings
        if self.off:
            raise ServiceUnavailable(f"Video jobs are off on this gateway: {self.off}.", 60)
        url = fields.get("url", "").strip()
        if len(uploads) != (0 if url else 1):
            raise BadRequest("Send the video either as one 'file' part (curl: -F \"file=@video.mp4\") or as its "
                             "http(s) address in 'url' (-F url=https://...), not both.")  # fmt: skip
        if fields.get("source"):
            raise BadRequest("A job's video is a 'file' part or a 'url'; 'source' is not taken by jobs.")
        model = fields["model"]
        info = await self.services.model(model)
        args = HUB.parse({k: v for k, v in fields.items() if k not in OWN}, info.imgsz)
        if args.format != "json":
            raise BadRequest("A job's result is JSON (NDJSON, one line per frame): send it without 'format'.")
        tracked.check(info, args)
        if args.sequence:
            raise BadRequest("'sequence' continues tracks across image requests; a job's video is tracked within "
                             "itself: send track=true without 'sequence'.")  # fmt: skip
        # a URL is checked now (scheme, host, the guard: 400) and downloaded by the job's run (gateway/jobs/download.py)
        source = await guard.check_url(url, "video", guard.WEBHOOK_SCHEMES, settings.url_allow_hosts,
                                       self.resolve) if url else None  # fmt: skip
        webhook = fields.get("webhook", "").strip()
        hook = await guard.check_webhook(webhook, settings.url_allow_hosts, self.resolve) if webhook else None
        path, container, frames = await self._stored(uploads, args.vid_stride) if source is None else ("", "", 0)
        try:
            secret = None
            if hook is not None:
                made, fresh = await self.secrets.ensure(entry.id)
                secret = made if fresh else None
            id = f"job_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"  # sorted ids: queued first, run first
            record = {
                "key": entry.id,
                "model": model,
                "args": _json({k: v for k, v in fields.items() if k not in OWN}),
                "container": container,
                "video": path,
                "url": url,  # with its query string (a signed URL's token): never shown
                "url_shown": source.shown if source else "",
                "frames_total": str(frames),
                "webhook": webhook,
                "webhook_shown": hook.shown if hook else "",
                "created": f"{time.time():.3f}",
                "state": "queued",
                "error": "",
                "frames_done": "0",
                "runs": "0",
            }
            if not await self.board.create(KIND, id, entry.id, record, settings.max_jobs_per_key):
                raise TooManyRequests(
                    f"This API key already has {settings.max_jobs_per_key} unfinished jobs "
                    "(GATEWAY_MAX_JOBS_PER_KEY): wait for one to finish, or DELETE /v1/jobs/{id} one.",
                    5,
                )
        except BaseException:
            videofile.remove(path)
            raise
        await self.owner.claim(id)  # this replica starts it when it has room; else the next free replica does
        return public(id, record), secret  # as queued: its run may have begun already (GET says so)

    async def _stored(self, uploads: list[UploadFile], vid_stride: int) -> tuple[str, str, int]:
        """The uploaded video checked (a video, its size) and stored in GATEWAY_JOBS_DIR: (its path, its container,
        the frames it declares), refused now rather than in an hour when it does not open or is too long."""
        settings = self.settings
        upload = uploads[0]
        container = await video.container_of(uploads)
        if container is None:
            raise UnsupportedMediaType(
                "The file is not a video this gateway reads: send an MP4/MOV, AVI or WebM/MKV file as 'file'."
            )
        if (upload.size if upload.size is not None else settings.max_video_bytes + 1) > settings.max_video_bytes:
            raise video.video_too_large(settings.max_video_bytes)
        pool = self.services.video_workers or self.services.workers
        path = await pool.run(videofile.spool, upload.file, container, str(settings.jobs_dir))
        try:
            return path, container, await download.probe(self.services, path, container, vid_stride)
        except BaseException:
            videofile.remove(path)
            raise

    async def _mine(self, entry: KeyEntry, id: str) -> dict[str, str]:
        record = await self.board.read(KIND, id) if id.startswith("job_") and len(id) < 64 else None
        if record is None or record.get("key") != entry.id:
            raise NotFound(f"No job with id '{id[:64]}' for this API key. GET /v1/jobs lists yours.")
        if _expired(record):
            await self._delete(id, record)
            raise NotFound(
                f"Job '{id}' finished more than {self.settings.job_result_ttl_s:g} s ago (GATEWAY_JOB_RESULT_TTL_S): "
                "its result expired and was deleted. Submit the video again."
            )
        return record

    async def get(self, entry: KeyEntry, id: str) -> dict[str, Any]:
        return public(id, await self._mine(entry, id))

    async def list(self, entry: KeyEntry) -> list[dict[str, Any]]:
        out = []
        for id in await self.board.active(KIND, entry.id) + await self.board.finished(KIND, entry.id):
            record = await self.board.read(KIND, id)
            if record is not None and not _expired(record):
                out.append(public(id, record))
        return sorted(out, key=lambda job: job["id"])

    async def result(self, entry: KeyEntry, id: str) -> str:
        """The path of a finished job's result (NDJSON); BadRequest while it is not finished."""
        record = await self._mine(entry, id)
        if record.get("state") not in ("done", "failed"):
            raise BadRequest(
                f"Job '{id}' is {record.get('state')}: its result is there once it is done. GET /v1/jobs/{id} shows "
                "its progress (or give a webhook to be told)."
            )
        path = run.result_path(self.settings, id)
        if not await asyncio.to_thread(path.exists):
            raise NotFound(f"Job '{id}' failed before its first frame, so it has no result: {record.get('error')}")
        return str(path)

    async def delete(self, entry: KeyEntry, id: str) -> dict[str, Any]:
        """Cancel a queued or running job (kept, as cancelled, until it expires), or delete a finished one."""
        record = await self._mine(entry, id)
        if record.get("state") in UNFINISHED:
            await self.board.update(KIND, id, {"stop": "1"})  # the owner sees it within a second, and stops
            now = time.time()
            fields = {"state": "cancelled", "finished": f"{now:.3f}", "expires": self._expires(now)}
            if await self.board.retire(KIND, id, entry.id, fields):
                await asyncio.to_thread(videofile.remove, record["video"])
                return public(id, {**record, **fields})
            record = await self.board.read(KIND, id) or record  # it finished just now: deleted below
        await self._delete(id, record)
        return {**public(id, record), "state": "deleted"}

    def _expires(self, now: float) -> str:
        return f"{now + self.settings.job_result_ttl_s:.3f}"

    async def _delete(self, id: str, record: dict[str, str]) -> None:
        await self.board.remove(KIND, id, record.get("key", ""))
        await asyncio.to_thread(_remove_files, self.settings.jobs_dir, id, record.get("video", ""))

    async def _sweep_forever(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                for id in await self.board.finished(KIND):
                    record = await self.board.read(KIND, id)
                    if record is not None and _expired(record):
                        await self._delete(id, record)
                if sweeps % ORPHANS_EVERY == 0:
                    await self._sweep_orphans()
                sweeps += 1
            except Exception as exc:  # the shared state unreachable: the next sweep tries again
                log.warning("jobs sweep: %s", exc)

    async def _sweep_orphans(self) -> None:
        """Files no job will read again: older than a result is kept plus a run may take, and no unfinished job's
        video (those of jobs a memory board forgot in a restart, or of a run that died with its files)."""
        settings = self.settings
        before = time.time() - settings.job_result_ttl_s - settings.job_timeout_s
        keep = set()
        for id in await self.board.active(KIND):
            record = await self.board.read(KIND, id)
            keep.add((record or {}).get("video", ""))
        removed = await asyncio.to_thread(_remove_old, settings.jobs_dir, before, keep)
        if removed:
            log.info("jobs sweep: %d file(s) of forgotten jobs removed from %s", removed, settings.jobs_dir)

    async def _run(self, record: dict[str, str], lease: Lease) -> None:
        """Run one job while this replica holds its lease (gateway/jobs/run.py), then retire it and tell its
        webhook. A run that ends without a verdict (lease lost, cancelled) writes nothing more."""
        board = self.board
        found = await self.services.store.get_key(record["key"])
        runs = str(int(record.get("runs") or 0) + 1)
        if not await board.write(lease, {"state": "running", "started": f"{time.time():.3f}", "runs": runs}):
            return
        final: dict[str, str]
        if found is None or found.revoked:
            final = {"state": "failed", "error": "The job's API key was revoked.", "status": "401"}
        elif int(runs) > MAX_RUNS:
            final = {
                "state": "failed",
                "status": "500",
                "error": f"The job was started {MAX_RUNS} times and never "
                "finished (its gateways stopped or failed while running it): it is not started again.",
            }
        else:
            try:
                if record.get("url") and not record.get("video"):  # not downloaded yet (or not to the end)
                    got = await download.download(self.services, board, lease, record, self.resolve)
                    if got is None:
                        return
                    record = {**record, **got}
                final = await run.run(self.services, board, lease, record, found)
            except GatewayError as exc:  # the model is gone, memory for the decoder, a video that no longer opens
                final = {"state": "failed", "error": exc.message[:500], "status": str(HUB.status(exc))}
            if not final:
                return
        now = time.time()
        final |= {"finished": final.get("finished") or f"{now:.3f}", "expires": self._expires(now)}
        if not await board.retire(KIND, lease.id, record["key"], final, lease):
            return  # cancelled meanwhile, or the lease was lost: the record is someone else's now
        lease.lost = True  # retired: the lease is gone with it (nothing for the owner to release)
        seconds = now - float(record.get("created") or now)  # the job's frames in its key's usage, as one request
        status = int(final.get("status") or 200)
        label = self.services.metrics.label(record["model"])
        self.services.store.record(record["key"], label, int(final.get("frames_done") or 0), status, seconds)
        await asyncio.to_thread(_remove_files, self.settings.jobs_dir, lease.id, record["video"], "*.part")
        if record.get("webhook"):
            done = public(lease.id, {**record, "runs": runs, **final})
            self.deliveries.offer(record["key"], record["webhook"], {"type": f"job.{final['state']}", "job": done})


def _expired(record: dict[str, str]) -> bool:
    return bool(record.get("expires")) and float(record["expires"]) <= time.time()


def _remove_files(folder: Path, id: str, path: str, pattern: str = "*") -> None:
    """A job's files: its video, and its result and runs' unfinished parts (those `pattern` matches)."""
    if path:
        videofile.remove(path)
    for found in folder.glob(f"{id}.{pattern}"):
        videofile.remove(str(found))


def _remove_old(folder: Path, before: float, keep: set[str]) -> int:
    """Remove the files of `folder` last changed before `before` (Unix s), but those in `keep`; how many."""
    removed = 0
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and str(path) not in keep and path.stat().st_mtime < before:
                path.unlink()
                removed += 1
    return removed


def _json(value: dict[str, str]) -> str:
    return orjson.dumps(value).decode()


def public(id: str, record: dict[str, str]) -> dict[str, Any]:
    """The job resource."""
    state = record.get("state", "")
    finished = state in ("done", "failed")

    def seconds(name: str) -> float | None:
        return float(record[name]) if record.get(name) else None

    return {
        "id": id,
        "state": state,
        "model": record.get("model", ""),
        "progress": run.public_progress(record) | download.public_progress(record),
        "stage": download.stage(record),
        "url": record.get("url_shown") or None,
        "created": seconds("created"),
        "started": seconds("started"),
        "finished": seconds("finished"),
        "expires": seconds("expires"),
        "runs": int(record.get("runs") or 0),
        "owner": (record.get("owner") or None) if state in UNFINISHED else None,
        "error": record.get("error") or None,
        "error_status": int(record["status"]) if record.get("status") else None,
        "webhook": record.get("webhook_shown") or None,
        "status_url": f"/v1/jobs/{id}",
        "result": f"/v1/jobs/{id}/result" if finished else None,
    }
