"""The ``executor`` command: ``executor serve [--host] [--port]`` and ``executor keys create|list|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError

from executor.access.keys import KeyCreate, KeyInfo, KeyStore, env_keys, env_listing
from executor.errors import DomainError
from executor.settings import Settings
from executor.store import Store
from sandboxes.base import SandboxError

T = TypeVar("T")


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
    settings = _settings(**overrides)
    if settings is None:
        return 2
    if not _is_loopback(settings.host) and not settings.env_keys_set:
        _, ever = _run(settings, lambda keys: keys.active())
        if not ever:
            print(
                f"executor: refusing to listen on {settings.host} without an API key: anyone who can reach it "
                "could run code. Set EXECUTOR_API_KEYS / EXECUTOR_ADMIN_API_KEYS, create one with "
                "'executor keys create', or listen on 127.0.0.1.",
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


def _settings(**overrides: object) -> Settings | None:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(f"executor: bad configuration:\n{exc}", file=sys.stderr)
        return None


def _run(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run one key-table operation against the service's own database (same settings as ``serve``)."""

    async def go() -> T:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_url)
        try:
            await store.create_all()
            return await work(KeyStore(settings, store))
        finally:
            await store.close()

    return asyncio.run(go())


def _row(k: KeyInfo) -> str:
    flags = ",".join(f for f, on in (("forward-identity", k.forward_identity), ("tools", k.may_create_tools)) if on)
    flags = flags or "-"
    when = k.created_at.isoformat(timespec="seconds") if k.created_at else "-"
    revoked = f" revoked {k.revoked_at.isoformat(timespec='seconds')}" if k.revoked_at else ""
    return f"{k.name:<24} {k.id:<20} {k.role:<6} {flags:<23} {k.source:<7} {when}{revoked}"


def keys_command(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        if args.action == "create":
            made = _run(
                settings,
                lambda keys: keys.create(
                    KeyCreate(
                        name=args.name,
                        role=args.role,
                        forward_identity=args.forward_identity,
                        may_create_tools=args.may_create_tools,
                    )
                ),
            )
            if args.json:
                print(made.model_dump_json())
            else:
                print(made.key)
                print(
                    f"created key {made.name!r} ({made.id}, role {made.role}"
                    f"{', may forward identity' if made.forward_identity else ''}"
                    f"{', may create tools' if made.may_create_tools else ''}). It is shown only now: "
                    "the service keeps its hash.",
                    file=sys.stderr,
                )
        elif args.action == "list":
            stored = _run(settings, lambda keys: keys.list(include_revoked=args.revoked))
            listed = [*env_listing(env_keys(settings)), *stored]
            if args.json:
                print(json.dumps([k.model_dump(mode="json") for k in listed]))
            else:
                print(f"{'NAME':<24} {'ID':<20} {'ROLE':<6} {'FLAGS':<23} {'SOURCE':<7} CREATED")
                for k in listed:
                    print(_row(k))
        else:
            revoked = _run(settings, lambda keys: keys.revoke(args.name))
            print(f"revoked key {revoked.name!r} ({revoked.id}); it is refused from the next request on")
    except ValidationError as exc:
        print(f"executor: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"executor: {exc.message}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="executor", description="Sandboxed code execution service")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="start the HTTP service")
    p.add_argument("--host", help="address to listen on (EXECUTOR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (EXECUTOR_PORT, default 8000)")
    p.set_defaults(func=serve)

    keys = sub.add_parser("keys", help="manage API keys (same database as the service: EXECUTOR_DATA_DIR etc.)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it once")
    create.add_argument("--name", required=True, help="unique name (letters, digits, '.', '_', '-')")
    create.add_argument("--role", choices=("admin", "user"), default="user")
    create.add_argument(
        "--forward-identity", action="store_true", help="may name the end user behind it (a chat backend's key)"
    )
    create.add_argument(
        "--may-create-tools", action="store_true", help="a user key that may register tool modules (admins always may)"
    )
    create.add_argument("--json", action="store_true", help="print the new key and its record as JSON")
    listing = actions.add_parser("list", help="list keys (never their values)")
    listing.add_argument("--revoked", action="store_true", help="include revoked keys")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a stored key by name or id")
    revoke.add_argument("name")
    keys.set_defaults(func=keys_command)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
