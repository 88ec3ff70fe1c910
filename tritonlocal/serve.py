"""`make serve`: export the default models if needed, start Triton on loopback, run the gateway in front of it.

The export (`python -m export defaults`) and the export worker (`python -m export worker`: uploaded models) run in
processes of their own, so torch and Ultralytics never load into the process that serves (1.6 GB resident with
them, a few hundred MiB without).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tritonlocal import launcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonlocal.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="gateway bind address (Triton always binds 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="gateway port")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--triton-grpc-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--triton-http-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--skip-export", action="store_true", help="serve the repository as it is")
    parser.add_argument("--models", default="", help="comma-separated model ids (default: python -m export's)")
    parser.add_argument("--offline", action="store_true", help="download no weights (cached pinned files are used)")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes, on ports PORT..PORT+N-1")
    parser.add_argument(
        "--state", choices=("file", "redis"), default="file", help="redis: keys, limits, usage in Redis"
    )
    parser.add_argument("--no-worker", action="store_true", help="no export worker for uploaded models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if not args.skip_export:
        flags = (["--models", args.models] if args.models else []) + (["--offline"] if args.offline else [])
        command = [sys.executable, "-m", "export", "defaults", "--repository", str(args.repository), *flags]
        if subprocess.run(command, check=False).returncode != 0:
            return 2

    from gateway.keys.auth import KeyDraft, create_key, read_entries
    from gateway.settings import Settings

    settings = Settings.from_env()
    if args.state == "file" and not read_entries(settings.keys_file):
        _, key = create_key(settings.keys_file, KeyDraft("development"))
        print(f"\nCreated a development API key (stored hashed in {settings.keys_file}):\n\n    {key}\n", flush=True)

    print(f"[serve] starting Triton on {launcher.LOOPBACK} with {args.repository} ...", flush=True)
    server = launcher.start(args.repository, http_port=args.triton_http_port, grpc_port=args.triton_grpc_port)
    print(f"[serve] Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url} (log: {server.log_path})", flush=True)
    worker = None
    try:
        if args.gateways > 1 or args.state == "redis":
            from tritonlocal import stack

            # the worker starts there, once Redis is up (the registry is in Redis with STATE=redis)
            repository = None if args.no_worker else args.repository
            return stack.serve(args.host, args.port, args.gateways, args.state, server, repository)
        if not args.no_worker:
            worker = start_worker(args.repository, server)
        import uvicorn

        from gateway.app import create_app
        from gateway.server import DrainingProtocol

        local = launcher.gateway_environment(server)
        app = create_app(
            replace(
                settings,
                triton_url=server.grpc_url,
                triton_shm_bytes=settings.triton_shm_bytes or int(local["GATEWAY_TRITON_SHM_BYTES"]),
                triton_http_url=settings.triton_http_url or local["GATEWAY_TRITON_HTTP_URL"],
            )
        )
        print(
            f"[serve] gateway on http://{args.host}:{args.port}  (try: curl http://{args.host}:{args.port}/v1/models)",
            flush=True,
        )
        # no access log: the gateway writes its own JSON line per request (uvicorn's holds the query string)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=20,
            http=DrainingProtocol,
        )
    finally:
        if worker is not None:
            stop_worker(worker)
        print("[serve] stopping Triton ...", file=sys.stderr, flush=True)
        server.stop()
    return 0


def start_worker(
    repository: Path, server: launcher.TritonServer, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The export worker for uploaded models, on this Triton and the registry `env` names (GATEWAY_REDIS_URL: Redis;
    else the file, data/models.json)."""
    command = [
        sys.executable,
        "-m",
        "export",
        "worker",
        "--repository",
        str(repository),
        "--triton-url",
        server.grpc_url,
    ]
    env = {**os.environ, **(env or {})}
    if server.admin_key:
        env["GATEWAY_TRITON_ADMIN_KEY"] = server.admin_key
    print("[serve] export worker for uploaded models started (python -m export worker)", flush=True)
    return subprocess.Popen(command, env=env, preexec_fn=launcher._die_with_parent)  # noqa: PLW1509


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
