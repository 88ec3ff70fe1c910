"""Run one step on an untrusted checkpoint in a confined child process: `python -m export.sandbox <folder>/job.json`.

The parent (the export worker, `run`) gives the child a private folder (`private_folder`: mode 0700, removed after)
holding the job and a copy of what it works on, an environment without the parent's (no GATEWAY_* secrets, no
proxies), and a wall-clock limit after which it kills the child's process group. The child confines itself before it
imports torch or reads the checkpoint (`confine`):

- resource limits: CPU seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL), address space (RLIMIT_AS: allocations fail),
  the size of any file it writes (RLIMIT_FSIZE), no core files; and `nice` 10, so inference keeps the CPUs;
- no network: a new user and network namespace (`unshare`; the namespace has no interface up), where the kernel
  allows it, and in any case an audit hook (`sys.addaudithook`) that refuses sockets' connect, bind, send and name
  look-ups, starting processes (subprocess, os.system, exec, spawn, fork), and writing files outside the private
  folder; refusals raise PermissionError, so code that handles an offline machine carries on;
- Ultralytics offline (YOLO_OFFLINE, no auto-install), its settings and every temporary file inside the folder, and
  its safe loader on (ULTRALYTICS_SAFE_LOAD=1: torch.load(weights_only=True) against its own allow-list).

The child's answer is `result.json` in the folder; its output goes to `log.txt` there; it reports progress (0..1) in
`progress`. What the child writes is read as untrusted data (size-capped, types checked by the caller).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the project: the child imports `export` from here
FOLDER_PREFIX = "yt-export-"
RESULT = "result.json"
RESULT_MAX_BYTES = 4 * 2**20
LOG = "log.txt"
PROGRESS = "progress"
NICE = 10
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1

NETWORK_EVENTS = frozenset(
    {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"}
    | {"socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
)
PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn"}
)
WRITE_EVENTS = frozenset(
    {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link"}
    | {"os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "os.removexattr", "os.setxattr"}
)


@dataclass(frozen=True)
class Limits:
    """What one sandboxed step may use (GATEWAY_EXPORT_CPU_S, GATEWAY_EXPORT_MEMORY_BYTES, GATEWAY_EXPORT_TIMEOUT_S)."""

    cpu_s: int
    memory_bytes: int
    timeout_s: float
    file_bytes: int = 4 * 2**30


@dataclass(frozen=True)
class Outcome:
    """A step's answer and what it cost: wall and CPU seconds (user + system, all threads), peak resident bytes."""

    result: dict[str, Any]
    wall_s: float
    cpu_s: float
    max_rss_bytes: int


class SandboxFailed(Exception):
    """The step did not answer. `kind`: "refused" (the checkpoint is not one we serve: `reason` is for the uploader),
    "limit" (it ran out of time, CPU, memory or file size), "error" (anything else)."""

    def __init__(self, kind: str, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.log_tail = log_tail


@contextlib.contextmanager
def private_folder(base: Path | None = None) -> Iterator[Path]:
    """A new folder only this user can enter, removed with everything in it afterwards. Its name carries this
    process's id, so that `sweep` can remove what a killed worker left behind."""
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=base))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(base: Path | None = None) -> list[Path]:
    """Remove the private folders of worker processes that are gone (killed before they could); those removed."""
    removed = []
    for path in Path(base or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = path.name[len(FOLDER_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its worker is alive (or the pid was reused by a live process: left for next time)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def child_environment(folder: Path) -> dict[str, str]:
    """The child's whole environment: nothing of the parent's but PATH, the locale and the thread count."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS") if k in os.environ}
    tmp = folder / "tmp"
    env |= {
        "HOME": str(folder),
        "TMPDIR": str(tmp),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_CONFIG_DIR": str(folder / "ultralytics"),
        "ULTRALYTICS_SAFE_LOAD": "1",
        "MPLCONFIGDIR": str(folder / "matplotlib"),
        "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per thread arena otherwise
    }
    return env


def run(
    job: str,
    args: dict[str, Any],
    folder: Path,
    limits: Limits,
    progress: Callable[[float], None] | None = None,
    started: Callable[[int], None] | None = None,
) -> Outcome:
    """Run `job` with `args` in the confined child, in `folder` (from `private_folder`); blocks until it ends.

    progress: called with the child's progress as it changes; started: with the child's pid (its process group id).
    Raises SandboxFailed with the reason when the child gives no answer or a refusal.
    """
    (folder / "tmp").mkdir(exist_ok=True)
    spec = {"job": job, "args": args, "limits": asdict(limits), "parent": os.getpid()}
    (folder / "job.json").write_text(json.dumps(spec))
    t0 = time.monotonic()
    with open(folder / LOG, "wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            [sys.executable, "-m", "export.sandbox", str(folder / "job.json")],
            cwd=folder,
            env=child_environment(folder),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole
            close_fds=True,
        )
    if started is not None:
        started(process.pid)
    timed_out = False
    seen = -1.0
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > limits.timeout_s:
                timed_out = True
                _kill_group(process.pid)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            if progress is not None:
                seen = _report_progress(folder, seen, progress)
            time.sleep(0.05)
    except BaseException:
        _kill_group(process.pid)
        with contextlib.suppress(ChildProcessError):
            os.wait4(process.pid, 0)
        process.returncode = -9
        raise
    finally:
        _kill_group(process.pid)  # whatever it left behind in its group
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss * 1024
    tail = _log_tail(folder)
    if timed_out:
        raise SandboxFailed("limit", f"took longer than {limits.timeout_s:g} s (GATEWAY_EXPORT_TIMEOUT_S)", tail)
    answer = _answer(folder)
    code = process.returncode
    if answer is None or code != 0:
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= limits.cpu_s):
            raise SandboxFailed("limit", f"used more than {limits.cpu_s} CPU-seconds (GATEWAY_EXPORT_CPU_S)", tail)
        if code == -signal.SIGXFSZ:
            raise SandboxFailed("limit", f"wrote a file over {_mib(limits.file_bytes)}", tail)
        if answer is not None and not answer.get("ok"):
            raise SandboxFailed(str(answer.get("kind", "error")), str(answer.get("reason", "no reason given")), tail)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        raise SandboxFailed("error", f"the export process {how} ({last[:300]})", tail)
    if not answer.get("ok"):
        raise SandboxFailed(str(answer.get("kind", "error")), str(answer.get("reason", "no reason given")), tail)
    return Outcome(answer, wall, cpu, rss)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _report_progress(folder: Path, seen: float, progress: Callable[[float], None]) -> float:
    try:
        value = float((folder / PROGRESS).read_text()[:32])
    except (OSError, ValueError):
        return seen
    if value != seen and 0.0 <= value <= 1.0:
        progress(value)
        return value
    return seen


def _answer(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULT
    try:
        if path.is_symlink() or path.stat().st_size > RESULT_MAX_BYTES:
            return None
        answer = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _log_tail(folder: Path, lines: int = 30) -> str:
    try:
        with open(folder / LOG, "rb") as f:
            f.seek(max(0, (folder / LOG).stat().st_size - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


# --- the child -------------------------------------------------------------------------------------------------------


def confine(limits: dict[str, Any], folder: Path, parent: int) -> dict[str, Any]:
    """Limit this process (the child) before it touches the checkpoint; what it got, for the worker's log.
    parent: the worker's pid (in a container it is 1, so "reparented to init" can't be told by the pid 1 alone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the worker dies: so does this step
    if os.getppid() != parent:
        raise SystemExit(3)  # the worker died before the line above
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # soft: SIGXCPU; hard, 5 s later: SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (int(limits["memory_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(NICE)
    namespace = _unshare_network(libc)
    root = str(folder.resolve())
    sys.addaudithook(_audit_hook(root))
    return {"network_namespace": namespace, "audit_hook": True, "nice": NICE}


def _unshare_network(libc: Any) -> bool:
    """Enter a new network namespace (no interface up: nothing reachable, loopback included); False when refused."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        with contextlib.suppress(OSError):  # keep our own ids inside the new user namespace
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        return True
    return bool(libc.unshare(CLONE_NEWNET) == 0)  # allowed to a privileged user without user namespaces


def _audit_hook(root: str) -> Callable[[str, tuple[Any, ...]], None]:
    inside = root.rstrip("/") + "/"

    def writable(path: Any) -> bool:
        if isinstance(path, int):
            return True  # an open descriptor: it was opened (and checked) before
        text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        full = os.path.realpath(text)
        return full == "/dev/null" or (full + "/").startswith(inside)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in NETWORK_EVENTS:
            raise PermissionError(f"sandbox: no network ({event})")
        if event in PROCESS_EVENTS:
            raise PermissionError(f"sandbox: starting processes is not allowed ({event})")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            )
            if writes and not writable(path):
                raise PermissionError(f"sandbox: writing outside the private folder is not allowed ({path!r})")
        elif event in WRITE_EVENTS and args and not all(writable(a) for a in args[:2] if _is_path(a)):
            raise PermissionError(f"sandbox: changing files outside the private folder is not allowed ({event})")

    return hook


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, bytes, os.PathLike))


def main(argv: list[str] | None = None) -> int:
    job_file = Path((argv if argv is not None else sys.argv[1:])[0])
    folder = job_file.parent.resolve()
    spec = json.loads(job_file.read_text())
    confinement = confine(spec["limits"], folder, int(spec["parent"]))

    def answer(body: dict[str, Any]) -> None:
        (folder / RESULT).write_text(json.dumps(body))

    try:
        from export import jobs

        result = jobs.run(spec["job"], spec["args"], folder)
    except MemoryError:
        answer({"ok": False, "kind": "limit", "reason": _memory_reason(spec)})
        return 1
    except Exception as exc:  # every failure is reported, with its kind, to the worker
        from export.jobs import Refused

        if isinstance(exc, Refused):
            answer({"ok": False, "kind": "refused", "reason": str(exc)})
            return 1
        text = str(exc)
        lowered = text.lower()
        # torch's allocator, and the loader mapping torch's libraries, under RLIMIT_AS
        if ("allocate" in lowered and "memory" in lowered) or "failed to map segment" in lowered:
            answer({"ok": False, "kind": "limit", "reason": _memory_reason(spec)})
            return 1
        import traceback

        traceback.print_exc()
        answer({"ok": False, "kind": "error", "reason": f"{type(exc).__name__}: {text[:500]}"})
        return 1
    answer({"ok": True, "confinement": confinement, "peak": _peak(), **result})
    return 0


def _peak() -> dict[str, int]:
    """This process's peak address space and resident memory (bytes): what GATEWAY_EXPORT_MEMORY_BYTES must allow."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmPeak", "VmHWM"):
                found["address_space" if key == "VmPeak" else "resident"] = int(value.split()[0]) * 1024
    return found


def _memory_reason(spec: dict[str, Any]) -> str:
    limit = int(spec["limits"]["memory_bytes"])
    return f"ran out of memory (limit {_mib(limit)} of address space, GATEWAY_EXPORT_MEMORY_BYTES)"


if __name__ == "__main__":
    raise SystemExit(main())
