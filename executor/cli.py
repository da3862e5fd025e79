"""The ``executor`` command: ``executor serve [--host] [--port]``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from pydantic import ValidationError

from executor.settings import Settings
from sandboxes.base import SandboxError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from executor.app import create_app, make_backend

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"executor: bad configuration:\n{exc}", file=sys.stderr)
        return 2
    if not settings.auth_enabled and not _is_loopback(settings.host):
        print(
            f"executor: refusing to listen on {settings.host} without an API key: anyone who can reach it could "
            "run code. Set EXECUTOR_API_KEYS (comma-separated), or listen on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    try:
        make_backend(settings)  # fail fast, with the fix, before binding the port
    except SandboxError as exc:
        print(f"executor: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="executor", description="Sandboxed code execution service")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the HTTP service")
    p.add_argument("--host", help="address to listen on (EXECUTOR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (EXECUTOR_PORT, default 8000)")
    p.set_defaults(func=serve)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
