"""The export worker (`python -m export worker`): turns uploaded checkpoints into served versions, and keeps every
Triton serving what the registry says.

Loop (every GATEWAY_MODELS_POLL_S): reconcile, then claim work from the registry (gateway/models), which is also the
queue. Exports (stages checking, exporting, verifying) run at most GATEWAY_EXPORT_CONCURRENCY at a time, each
sandboxed step in its own confined process (export/sandbox.py); loads (rollbacks, LRU reloads) in a lane of their
own, so they never wait behind an export. Torch and Ultralytics are imported only in the sandbox, never here.

A claimed version goes through its stages from the one it was queued (or stopped) at:

    checking   the upload is there, its size (GATEWAY_MAX_MODEL_BYTES) and sha256 match the record; in the sandbox:
               the pickle allow-list, then Ultralytics' safe loader: a YOLOv8/YOLO11 model of a task we serve?
    exporting  in the sandbox: the export (the serving defaults of `make export`) and the checkpoint's own answers
               on Ultralytics' photos; the result is kept in <models dir>/staging/<id>--v<N>/
    verifying  in the sandbox: the exported graph on ONNX Runtime, through the gateway's pre- and post-processing,
               answers as the checkpoint does (export/verify.py, the parity tolerances of the tests)
    loading    copied into the Triton repository as <id>--v<N>/ (a rename from a hidden name), loaded on every
               Triton, warmed up, and its answers through each Triton compared with the checkpoint's again; then the
               alias flips (one registry write) and the version that served before is retired GATEWAY_RETIRE_GRACE_S
               later (unloaded, its files moved to versions/)

A failing stage leaves the version `failed` with the stage and the reason, removes what it had put in the repository
and Triton, and never touches the alias: the serving version keeps serving. While it works, the worker renews its
lease (a third of GATEWAY_EXPORT_LEASE_S) and writes the stage's progress; a worker that stops is replaced by the
next claim after its lease expires (gateway/models/registry.py `claim`).

Reconcile (export/reconcile.py): each Triton has every `ready` version loaded (a Triton that restarted or joined
loads what is current) and no other uploaded version; replaced versions are retired when their time comes; deleted
models are unloaded, their files removed, then their records; beyond GATEWAY_MAX_LOADED_UPLOADS loaded versions, the
least recently used serving ones are unloaded (`unloaded`; a request queues them to load again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export import sandbox
from export.sandbox import Limits, SandboxFailed, private_folder
from export.places import OutsideModelsDir, Places, checkpoint_name, place, remove, sha256
from export.reconcile import Reconciler
from export.triton_control import TritonControlError, TritonFleet
from export.verify import triton_problems
from gateway.models import (
    Claim,
    LeaseLost,
    ModelSettings,
    Registry,
    RegistryError,
    Version,
    open_registry,
    worker_id,
)
from gateway.models.record import EXPORT_STAGES, STAGES, Stage

log = logging.getLogger("export.worker")
LOAD_STAGES: frozenset[Stage] = frozenset({"loading"})
TASKS = ("detect", "segment", "pose", "obb", "classify")
# The loading stage's check through one Triton: (Triton client, version name, version dir) -> (problems, rows)
ServedCheck = Callable[[Any, str, Path], Awaitable[tuple[list[str], int]]]
ALIVE_EVERY_S = 5.0  # how often the alive file is touched (a container's liveness probe reads its age)


class StageFailed(Exception):
    """The version cannot go on; `reason` is for the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Job:
    """One claimed version while a worker works on it."""

    model_id: str
    version: Version
    stage: Stage
    progress: float = 0.0
    written: float = -1.0  # the progress last written to the registry

    @property
    def name(self) -> str:
        return self.version.triton


@dataclass
class Worker:
    registry: Registry
    settings: ModelSettings
    repository: Path  # the Triton model repository (shared by every Triton)
    fleet: TritonFleet
    triton_timeout_s: float = 30.0
    name: str = field(default_factory=worker_id)
    check_served: ServedCheck = triton_problems  # the loading stage's comparison (tests inject failures here)
    alive_file: Path | None = None  # touched every ALIVE_EVERY_S while the event loop runs (liveness probes)
    _exports: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _loads: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _children: set[int] = field(default_factory=set, init=False, repr=False)
    places: Places = field(init=False)
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        self.places = Places(self.repository, self.settings.models_dir)
        self.reconciler = Reconciler(self.registry, self.settings, self.places, self.fleet)

    @property
    def models_dir(self) -> Path:
        return self.settings.models_dir

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.export_cpu_s, s.export_memory_bytes, s.export_timeout_s, max(2**30, 4 * s.max_model_bytes))

    # --- the loop ------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; then the versions in progress are abandoned (their sandboxes killed) and resumed
        by the next worker once their leases expire."""
        log.info("export worker %s: repository %s, models dir %s", self.name, self.repository, self.models_dir)
        for folder in await asyncio.to_thread(sandbox.sweep):
            log.info("removed %s, left behind by a worker that was killed", folder)
        alive = asyncio.create_task(self._alive()) if self.alive_file is not None else None
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except RegistryError as exc:
                    log.warning("the model registry failed: %s; trying again", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.models_poll_s)
        finally:
            if alive is not None:
                alive.cancel()
            await self.abandon()

    async def _alive(self) -> None:
        """Touch the alive file while the event loop turns: a blocked loop or a dead process lets it age (a step may
        legitimately take minutes, a Triton load up to GATEWAY_TRITON_LOAD_TIMEOUT_S, so the loop's own progress
        is not the signal)."""
        assert self.alive_file is not None
        while True:
            try:
                self.alive_file.touch()
            except OSError as exc:
                log.warning("cannot touch the alive file %s: %s", self.alive_file, exc)
            await asyncio.sleep(ALIVE_EVERY_S)

    async def abandon(self) -> None:
        tasks = self._exports | self._loads
        for task in tasks:
            task.cancel()
        for pgid in list(self._children):
            _kill_group(pgid)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def step(self) -> None:
        """One round: reconcile Triton with the registry, then start what there is room for."""
        await self.reconciler.reconcile()
        while len(self._exports) < self.settings.export_concurrency:
            claim = await self.registry.claim(
                self.name, self.settings.export_lease_s, EXPORT_STAGES, self.settings.export_attempts
            )
            if claim is None:
                break
            self._start(claim, self._exports)
        if not self._loads:
            claim = await self.registry.claim(
                self.name, self.settings.export_lease_s, LOAD_STAGES, self.settings.export_attempts
            )
            if claim is not None:
                self._start(claim, self._loads)

    def _start(self, claim: Claim, lane: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(self.process(claim), name=f"version {claim.version.triton}")
        lane.add(task)
        task.add_done_callback(lane.discard)

    @property
    def busy(self) -> bool:
        return bool(self._exports or self._loads)

    # --- one version ---------------------------------------------------------------------------------------------

    async def process(self, claim: Claim) -> None:
        v = claim.version
        job = Job(claim.model_id, v, v.stage)
        log.info("%s: %s (attempt %d)", v.triton, v.stage, v.attempts)
        heartbeat = asyncio.create_task(self._heartbeat(job, asyncio.current_task()))
        try:
            for i, stage in enumerate(STAGES[STAGES.index(job.stage) :]):
                job.stage, job.progress, job.written = stage, 0.0, 0.0
                if i:
                    await self.registry.progress(job.model_id, v.number, self.name, stage=stage)
                t0 = time.monotonic()
                await getattr(self, f"_{stage}")(job)
                took = round(time.monotonic() - t0, 3)
                await self.registry.progress(job.model_id, v.number, self.name, timings={stage: took}, progress=1.0)
                log.info("%s: %s done in %.1f s", v.triton, stage, took)
            record = await self.registry.ready(job.model_id, v.number, self.name, self.settings.retire_grace_s)
            log.info("%s: ready; model %s now serves version %s", v.triton, job.model_id, record.serving)
            await asyncio.to_thread(self.places.tidy_after_ready, job.name)
        except StageFailed as exc:
            log.warning("%s: failed during %s: %s", v.triton, job.stage, exc.reason)
            await self._undo(job)
            with contextlib.suppress(LeaseLost):
                await self.registry.fail(job.model_id, v.number, self.name, job.stage, exc.reason)
        except LeaseLost as exc:
            log.warning("%s: stopped: %s", v.triton, exc)
        except asyncio.CancelledError:
            log.warning(
                "%s: abandoned during %s (its lease will expire and another claim resumes it)", v.triton, job.stage
            )
            raise
        except Exception as exc:  # a bug or an unexpected failure here: the version must still not stay in a stage
            log.exception("%s: internal error during %s", v.triton, job.stage)
            await self._undo(job)
            with contextlib.suppress(LeaseLost, RegistryError):
                await self.registry.fail(
                    job.model_id, v.number, self.name, job.stage, f"internal error during {job.stage}: {exc}"
                )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, job: Job, owner: asyncio.Task[Any] | None) -> None:
        """Renew the lease every third of its length and write progress at most once a second; when the lease is
        lost, stop the work (`owner`)."""
        renew_every = self.settings.export_lease_s / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, renew_every))
            try:
                if time.monotonic() - renewed >= renew_every:
                    await self.registry.renew(job.model_id, job.version.number, self.name, self.settings.export_lease_s)
                    renewed = time.monotonic()
                if job.progress != job.written:
                    value = job.progress
                    await self.registry.progress(job.model_id, job.version.number, self.name, progress=value)
                    job.written = value
            except LeaseLost as exc:
                log.warning("%s: lease lost (%s): stopping", job.name, exc)
                if owner is not None:
                    owner.cancel()
                return
            except RegistryError as exc:  # Redis blinked: try again; the lease has two more renewals of slack
                log.warning("%s: could not renew the lease: %s", job.name, exc)

    async def _sandboxed(self, job: Job, kind: str, args: dict[str, Any], folder: Path) -> dict[str, Any]:
        pids: list[int] = []

        def started(pid: int) -> None:
            pids.append(pid)
            self._children.add(pid)

        def progress(value: float) -> None:
            job.progress = value

        try:
            outcome = await asyncio.to_thread(sandbox.run, kind, args, folder, self.limits, progress, started)
        except SandboxFailed as exc:
            if exc.kind == "refused":
                raise StageFailed(exc.reason) from None
            if exc.log_tail:
                log.warning("%s: sandboxed %s failed; its log ends:\n%s", job.name, kind, exc.log_tail)
            raise StageFailed(f"the {kind} step {exc.reason}" if exc.kind == "limit" else exc.reason) from None
        except asyncio.CancelledError:
            for pid in pids:
                _kill_group(pid)
            raise
        finally:
            for pid in pids:
                self._children.discard(pid)
        peak = outcome.result.get("peak") or {}
        log.info(
            "%s: sandboxed %s: %.1f s, %.1f CPU-s, peak %.0f MiB resident, %.0f MiB address space",
            job.name,
            kind,
            outcome.wall_s,
            outcome.cpu_s,
            outcome.max_rss_bytes / 2**20,
            float(peak.get("address_space", 0)) / 2**20,
        )
        return outcome.result

    def _upload(self, v: Version) -> Path:
        try:
            return self.places.upload(v)
        except OutsideModelsDir as exc:
            raise StageFailed(str(exc)) from None

    async def _checking(self, job: Job) -> None:
        v = job.version
        path = self._upload(v)
        limit = self.settings.max_model_bytes
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise StageFailed(f"the uploaded file is missing ({v.upload}); upload it again") from None
        if size > limit:
            raise StageFailed(
                f"the file is {size} bytes; the limit is {limit} bytes ({_mib(limit)}, GATEWAY_MAX_MODEL_BYTES): "
                "upload a smaller checkpoint (a trained YOLOv8/YOLO11 .pt is 5-140 MiB)"
            )
        if size != v.size:
            raise StageFailed(f"the stored upload is {size} bytes, {v.size} were uploaded; upload it again")
        job.progress = 0.05
        digest = await asyncio.to_thread(sha256, path)
        if digest != v.sha256:
            raise StageFailed(f"the stored upload's sha256 is {digest}, the upload's was {v.sha256}; upload it again")
        if v.half:
            raise StageFailed(
                "half precision (FP16) needs a GPU target; this worker exports for the CPU (ONNX Runtime): "
                "upload again without half"
            )
        with private_folder() as folder:
            copy = folder / checkpoint_name(v)
            await asyncio.to_thread(shutil.copyfile, path, copy)
            found = await self._sandboxed(job, "check", {"path": str(copy)}, folder)
        task, names, imgsz = _described(found)
        built = {str(k): str(val)[:40] for k, val in dict(found.get("built_with") or {}).items()}
        record = await self.registry.progress(
            job.model_id,
            v.number,
            self.name,
            task=task,
            names=names,
            imgsz=v.imgsz or imgsz,
            built_with=built,
            message=f"{found.get('model')}: {task}, {len(names)} classes",
        )
        job.version = record.version(v.number)

    async def _exporting(self, job: Job) -> None:
        v = job.version
        path = self._upload(v)
        with private_folder() as folder:
            copy = folder / checkpoint_name(v)
            await asyncio.to_thread(shutil.copyfile, path, copy)
            await self._sandboxed(job, "export", {"path": str(copy), "name": v.triton, "imgsz": v.imgsz}, folder)
            await asyncio.to_thread(self._keep_export, folder / "out" / v.triton, v)

    def _keep_export(self, out: Path, v: Version) -> None:
        """Copy the sandbox's export into staging/ (atomically), after checking it is what we asked for."""
        if not (out / "config.pbtxt").is_file() or not (out / "1").is_dir():
            raise StageFailed("the export wrote no model (config.pbtxt and 1/ are missing)")
        if any(p.is_symlink() for p in out.rglob("*")):
            raise StageFailed("the export wrote a symbolic link; refused")
        from export.gateway_parts import model_info

        info = model_info(out)
        if info.name != v.triton or info.names != v.names or info.task != v.task:
            raise StageFailed(
                f"the exported model card ({info.name}, {info.task}, {len(info.names)} classes) does not match the "
                f"checked checkpoint ({v.triton}, {v.task}, {len(v.names)} classes)"
            )
        place(out, self.places.staging(v.triton))

    async def _verifying(self, job: Job) -> None:
        staging = self.places.staging(job.name)
        if not (staging / "config.pbtxt").exists():
            raise StageFailed("its export is gone from staging/ (removed by hand?); upload it again")
        with private_folder() as folder:
            found = await self._sandboxed(job, "verify", {"model_dir": str(staging)}, folder)
        problems = [str(p) for p in found.get("problems", [])]
        if problems:
            raise StageFailed(_differs("ONNX Runtime", problems))
        await self.registry.progress(
            job.model_id, job.version.number, self.name, message=f"verified: {found.get('rows', 0)} rows equal"
        )

    async def _loading(self, job: Job) -> None:
        name = job.name
        target = self.places.served(name)
        if not target.exists():
            source = next(
                (d for d in (self.places.staging(name), self.places.versions(name)) if d.exists()),
                None,
            )
            if source is None:
                raise StageFailed("its exported files are gone (neither in staging/ nor versions/); upload it again")
            await asyncio.to_thread(place, source, target, False)
        endpoints = await self.fleet.endpoints()
        if not endpoints:
            raise StageFailed(f"no Triton answers at {self.fleet.url}")
        job.progress = 0.1
        try:
            await self.fleet.load(name, endpoints)
        except TritonControlError as exc:
            raise StageFailed(str(exc)) from None
        job.progress = 0.5
        rows = 0
        for i, endpoint in enumerate(endpoints):
            problems, rows = await self._check_on(endpoint, name, target)
            if problems:
                raise StageFailed(_differs(f"Triton at {endpoint}", problems))
            job.progress = 0.5 + 0.5 * (i + 1) / len(endpoints)
        await self.registry.progress(
            job.model_id,
            job.version.number,
            self.name,
            message=f"loaded on {len(endpoints)} Triton(s); {rows} rows equal the checkpoint's",
        )

    async def _check_on(self, endpoint: str, name: str, model_dir: Path) -> tuple[list[str], int]:
        from export.gateway_parts import Triton

        triton = Triton(endpoint, self.triton_timeout_s, cache_s=0.0)
        try:
            return await self.check_served(triton, name, model_dir)
        except Exception as exc:  # the gateway's errors (404, 503, 504) and Triton's: the version does not answer
            message = getattr(exc, "message", None) or str(exc)
            return [f"it does not answer through Triton at {endpoint}: {message}"], 0
        finally:
            await triton.close()

    async def _undo(self, job: Job) -> None:
        """Take back what a failed stage put in place: unloaded everywhere, out of the repository and staging/ (a
        failed reload keeps its files: it is still the serving version; a failed rollback goes back to versions/)."""
        name, v = job.name, job.version
        if job.stage == "loading":
            with contextlib.suppress(TritonControlError):
                for problem in await self.fleet.unload(name):
                    log.warning("%s", problem)
        reload = job.stage == "loading" and not v.rollback and v.loaded_at is not None
        if not reload:
            await asyncio.to_thread(self.places.out_of_repository, name, v.rollback)
        if not v.rollback:
            await asyncio.to_thread(remove, self.places.staging(name))


def _described(found: dict[str, Any]) -> tuple[str, dict[int, str], int]:
    """The check step's answer, validated (it comes from the sandbox: untrusted)."""
    task = found.get("task")
    raw_names = found.get("names")
    imgsz = found.get("imgsz")
    if task not in TASKS or not isinstance(raw_names, dict) or not isinstance(imgsz, int) or not 32 <= imgsz <= 4096:
        raise StageFailed("the check step gave an answer of the wrong shape")
    names = {int(k): str(n)[:200] for k, n in raw_names.items() if str(k).isdigit()}
    if not names or len(names) != len(raw_names) or len(names) > 100_000:
        raise StageFailed("the checkpoint's class names are not a list of 1 to 100000 names")
    return str(task), names, imgsz


def _differs(where: str, problems: list[str]) -> str:
    more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
    return f"its answers through {where} differ from the checkpoint's own: " + "; ".join(problems[:4]) + more


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """`python -m export worker`: settings from GATEWAY_* (the gateway's Triton URL and Redis; the models settings)."""
    parser = argparse.ArgumentParser(prog="python -m export worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    parser.add_argument(
        "--triton-url", default="", help="default: GATEWAY_TRITON_URL (several Tritons: comma-separated)"
    )
    parser.add_argument(
        "--alive-file",
        type=Path,
        default=None,
        help=f"touched every {ALIVE_EVERY_S:g} s while the worker runs (a container's liveness probe reads its age)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from export.gateway_parts import Settings

    gateway = Settings.from_env()
    settings = ModelSettings.from_env()
    url = args.triton_url or gateway.triton_url
    return asyncio.run(_serve(args.repository, url, gateway, settings, args.alive_file))


async def _serve(
    repository: Path, triton_url: str, gateway: Any, settings: ModelSettings, alive_file: Path | None = None
) -> int:
    # Triton loads this folder at start (--model-repository): it must exist before the first version does, or a
    # Triton that starts first serves nothing (measured on 2.51: a missing repository leaves the server not ready).
    repository.mkdir(parents=True, exist_ok=True)
    registry = open_registry(settings, gateway.redis_url, gateway.redis_password)
    fleet = TritonFleet(triton_url, settings.triton_admin_key, settings.triton_load_timeout_s)
    worker = Worker(
        registry, settings, repository, fleet, triton_timeout_s=gateway.triton_timeout_s, alive_file=alive_file
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await report_confinement(worker)
    try:
        await worker.run(stop)
    finally:
        await fleet.close()
        await registry.close()
    return 0


async def report_confinement(worker: Worker) -> dict[str, Any]:
    """Run the sandbox's probe once and log what it is allowed (it must be refused the network and processes)."""
    with private_folder() as folder:
        outside = folder.parent / f".{folder.name}-outside"
        try:
            found = await asyncio.to_thread(
                sandbox.run, "probe", {"outside": str(outside), "port": 9}, folder, worker.limits
            )
        except SandboxFailed as exc:
            log.error("the export sandbox does not start: %s\n%s", exc.reason, exc.log_tail)
            raise
        finally:
            remove(outside)
    result = found.result
    confinement = result.get("confinement", {})
    log.info(
        "export sandbox: network namespace %s, audit hook %s; connect %s, os.system %s, writes outside %s",
        "yes" if confinement.get("network_namespace") else "no (the audit hook alone keeps Python off the network)",
        "yes" if confinement.get("audit_hook") else "no",
        result.get("connect"),
        result.get("os_system"),
        result.get("write_outside"),
    )
    return result
