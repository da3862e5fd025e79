"""A throwaway PostgreSQL server for the tests that need one (replicas sharing a database).

Debian's ``postgresql`` package provides the binaries (``.ci/run`` installs it); the cluster lives in a temp dir,
listens on loopback and a socket dir of its own, and is stopped and removed by ``stop``. As root, the server runs
as the ``postgres`` user (it refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


def postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (Debian keeps them out of PATH), or None."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def require_postgres() -> Path:
    """The binaries' dir; skip outside CI, fail in CI (CI=true), where the replica tests must run."""
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    message = "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Postgres:
    root: Path
    port: int
    bindir: Path
    user: str

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/executor"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(_as(self.user, list(args)), check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _as(user: str, argv: list[str]) -> list[str]:
    if os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--", *argv]
    return argv


def start_postgres(port: int) -> Postgres:
    """initdb + start on 127.0.0.1:``port`` (trust auth on loopback only), and create database ``executor``."""
    bindir = require_postgres()
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="executor-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    pg = Postgres(root=root, port=port, bindir=bindir, user=user)
    try:
        data = root / "data"
        pg._run(str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
        pg._run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
        pg._run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "executor")
    except BaseException:
        with contextlib.suppress(Exception):
            pg.stop()  # a server that did start must not outlive the failure
        shutil.rmtree(root, ignore_errors=True)
        raise
    return pg
