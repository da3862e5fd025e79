"""The code that runs inside every kernel (sandboxes/runtime): a seccomp filter that fails closed, binary
stdout/stderr, and thread output routed to the cell that started the thread.

The filter is never loaded into the test process (it would be inherited by every kernel the in-process service
starts later): unit tests use a fake libseccomp, and real loads happen in child processes or real kernels.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from sandboxes.runtime import SECCOMP_FAILED_EXIT, harden
from sandboxes.runtime.streams import BinaryStream
from tests.conftest import BACKENDS, Service, run

ROOT = Path(__file__).resolve().parent.parent


# -- the filter, with a fake libseccomp ------------------------------------------------------------------


class FakeSeccomp(SimpleNamespace):
    """libseccomp as ctypes shows it, every call answering what the test says (0 = success)."""

    def __init__(self, **fail: int) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[str] = []
        self.rules: list[int] = []

    def _rc(self, name: str) -> int:
        self.calls.append(name)
        return self.fail.get(name, 0)

    def seccomp_init(self, action: int) -> int | None:
        self.calls.append("seccomp_init")
        return None if self.fail.get("seccomp_init") else 0xC0FFEE

    def seccomp_attr_set(self, ctx: int, attr: int, value: int) -> int:
        return self._rc("seccomp_attr_set")

    def seccomp_syscall_resolve_name(self, name: bytes) -> int:
        if self.fail.get(f"resolve:{name.decode()}"):
            return -1
        return 1000 + len(self.calls)

    def seccomp_rule_add_array(self, ctx: int, action: int, nr: int, count: int, args: Any) -> int:
        self.rules.append(action)
        # Fail the n-th rule when asked (1-based), so a failure in the middle is covered too.
        if self.fail.get("rule") == len(self.rules):
            return -errno.EFAULT
        return self._rc("seccomp_rule_add_array")

    def seccomp_load(self, ctx: int) -> int:
        return self._rc("seccomp_load")

    def seccomp_release(self, ctx: int) -> None:
        self.calls.append("seccomp_release")


def test_a_fake_library_that_succeeds_builds_every_rule() -> None:
    lib = FakeSeccomp()
    harden.install(lib)
    # Every denied syscall, clone3, clone with CLONE_NEWUSER, and the probe; then one load; always released.
    assert len(lib.rules) == len(harden.DENIED) + 3
    assert lib.calls.count("seccomp_load") == 1 and lib.calls[-1] == "seccomp_release"


@pytest.mark.parametrize(
    "fail",
    [
        {"seccomp_init": 1},
        {"seccomp_attr_set": -errno.EINVAL},
        {"rule": 1},
        {"rule": 10},
        {"rule": len(harden.DENIED) + 3},  # the probe rule
        {"seccomp_load": -errno.EACCES},
        {"seccomp_load": 1},  # not even a negated errno
        {"resolve:unshare": 1},
        {"resolve:close": 1},
    ],
    ids=repr,
)
def test_every_libseccomp_failure_raises(fail: dict[str, int]) -> None:
    lib = FakeSeccomp(**fail)
    with pytest.raises(harden.SeccompError):
        harden.install(lib)
    if "seccomp_init" not in fail:
        assert lib.calls[-1] == "seccomp_release"
        if "seccomp_load" not in fail:
            assert "seccomp_load" not in lib.calls, "nothing is loaded after a failed step"


def test_an_unknown_syscall_of_another_architecture_is_skipped() -> None:
    lib = FakeSeccomp(**{"resolve:io_uring_setup": 1})
    harden.install(lib)
    assert len(lib.rules) == len(harden.DENIED) + 2


def test_verify_refuses_this_unfiltered_process() -> None:
    with pytest.raises(harden.SeccompError, match="not in force"):
        harden.verify()


def test_verify_wants_a_filter_on_every_thread(tmp_path: Path) -> None:
    def probe_answers(fd: int) -> None:
        assert fd == harden.PROBE_FD
        raise OSError(harden.PROBE_ERRNO, "probe")

    for tid, mode in (("100", 2), ("101", 2)):
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "status").write_text(f"Name:\tpython\nSeccomp:\t{mode}\nSeccomp_filters:\t1\n")
    harden.verify(str(tmp_path), probe_answers)
    (tmp_path / "102").mkdir()
    (tmp_path / "102" / "status").write_text("Name:\tpython\nSeccomp:\t0\n")
    with pytest.raises(harden.SeccompError, match="102"):
        harden.verify(str(tmp_path), probe_answers)
    # A probe answering as an unfiltered (or differently filtered) process would.
    with pytest.raises(harden.SeccompError, match="EBADF"):
        harden.verify(str(tmp_path), lambda fd: os.close(-1))


def _child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (where loading a filter harms nobody) with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_real_filter_loads_and_is_verified_in_a_child() -> None:
    proc = _child(
        """
        import ctypes, errno, threading
        from sandboxes.runtime import harden
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()   # TSYNC must reach threads that already exist
        harden.install(); harden.verify()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) == -1 and ctypes.get_errno() == errno.EPERM:
            print("unshare denied")
        stop.set(); t.join()
        print(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["unshare", "denied", "2"]


@pytest.mark.parametrize(
    "sabotage",
    [
        # A loader that reports success and loads nothing: only verify() can tell.
        "harden.install = lambda lib=None: None",
        # A library whose load call fails.
        "real = harden.load_library\n"
        "def broken():\n"
        "    lib = real(); lib.seccomp_load = lambda ctx: -13; return lib\n"
        "harden.load_library = broken",
        # No libseccomp at all.
        "def missing():\n    raise harden.SeccompError('libseccomp not found')\nharden.load_library = missing",
    ],
    ids=["lying-loader", "load-fails", "no-library"],
)
def test_setup_ends_the_process_when_the_filter_is_not_in_force(sabotage: str) -> None:
    proc = _child(
        "import sandboxes.runtime as runtime\nfrom sandboxes.runtime import harden\n"
        + sabotage
        + "\nruntime.load_filter()\nprint('USER CODE RAN')\n"
    )
    assert proc.returncode == SECCOMP_FAILED_EXIT, (proc.returncode, proc.stdout, proc.stderr)
    assert "USER CODE RAN" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox runtime: the seccomp filter")


def test_a_filter_not_required_is_reported_not_fatal() -> None:
    proc = _child(
        "import sandboxes.runtime as runtime\nfrom sandboxes.runtime import harden\n"
        "harden.install = lambda lib=None: None\nruntime.load_filter(required=False)\nprint(runtime.SECCOMP)\n"
    )
    assert proc.returncode == 0 and proc.stdout.startswith("failed: the filter is not in force")


# -- binary streams, without a kernel ----------------------------------------------------------------------


class _Text:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.flushes = 0

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        self.flushes += 1


def test_binary_writes_decode_with_replacement_and_keep_split_characters_whole() -> None:
    text = _Text()
    buf = BinaryStream(text)
    euro = "€".encode()
    assert buf.write(b"a\xff") == 2
    assert buf.write(euro[:1]) == 1 and buf.write(bytearray(euro[1:])) == 2
    assert buf.write(memoryview(b"z")) == 1
    buf.write(b"\xe2\x82")  # left incomplete: flush ends it as one replacement character
    buf.flush()
    assert "".join(text.parts) == "a\ufffd€z\ufffd" and text.flushes == 1
    with pytest.raises(TypeError):
        buf.write("text")  # type: ignore[arg-type]


# -- in real kernels, through the service -----------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_the_kernel_runs_under_its_own_filter(client: httpx.AsyncClient, session: dict) -> None:
    code = (
        "import os, errno\n"
        f"try:\n    os.close({harden.PROBE_FD})\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\n"
    )
    r = await run(client, session["id"], code)
    assert r["stdout"] == f"{errno.errorcode[harden.PROBE_ERRNO]}\n2\n", r


async def test_callers_may_not_set_loader_or_interpreter_variables(client: httpx.AsyncClient) -> None:
    """LD_LIBRARY_PATH plus an uploaded library would run code before the filter loads: refused at the API."""
    for name in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONHOME", "PYTHONSTARTUP", "IPYTHONDIR", "GLIBC_TUNABLES"):
        r = await client.post("/api/v1/sessions", json={"env": {name: "/work/lib"}})
        assert r.status_code == 422 and "env" in r.json()["detail"][0]["loc"], (name, r.text)


async def _session_with_broken_libseccomp(service: Service, client: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    """A broken libseccomp first on the library path makes the load fail for real. The API refuses LD_* (see
    above), so the test sets it where only the service itself could: the sandbox's launch environment.
    Returns the session id and the restart answer."""
    r = await client.post("/api/v1/sessions", json={})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    sandbox = service.app.state.sessions.sessions[sid].sandbox  # type: ignore[attr-defined]
    sandbox.provisioner.env["LD_LIBRARY_PATH"] = "/work/lib"
    up = await client.put(f"/api/v1/sessions/{sid}/files/lib/libseccomp.so.2", content=b"\x7fELF not really")
    assert up.status_code == 201
    return sid, await client.post(f"/api/v1/sessions/{sid}/restart")


async def test_a_kernel_whose_filter_cannot_load_never_runs_code(service: Service, client: httpx.AsyncClient) -> None:
    sid, _ = await _session_with_broken_libseccomp(service, client)
    try:
        r = await client.post(f"/api/v1/sessions/{sid}/executions", json={"code": "print('ran')"})
        if r.status_code == 200:
            assert r.json()["status"] == "error" and "ran" not in r.json()["stdout"], r.text
            assert f"status {SECCOMP_FAILED_EXIT}" in r.json()["error"]["value"]
        assert (await client.get(f"/api/v1/sessions/{sid}")).json()["status"] == "dead"
    finally:
        await client.delete(f"/api/v1/sessions/{sid}")


async def test_a_kernel_whose_filter_cannot_load_fails_its_start_with_the_reason(
    service: Service, client: httpx.AsyncClient
) -> None:
    sid, r = await _session_with_broken_libseccomp(service, client)
    try:
        assert r.status_code == 503, r.text
        assert "seccomp filter is not in force" in r.json()["detail"]
    finally:
        await client.delete(f"/api/v1/sessions/{sid}")


async def test_binary_stdout_and_stderr(client: httpx.AsyncClient, session: dict) -> None:
    code = (
        "import sys\n"
        "sys.stdout.buffer.write(b'bin:\\xff:')\n"
        "sys.stdout.buffer.write('€'.encode()[:1]); sys.stdout.buffer.write('€'.encode()[1:])\n"
        "sys.stdout.buffer.flush()\n"
        "sys.stderr.buffer.write(b'err\\xfe\\n')\n"
        "print()\n"
    )
    r = await run(client, session["id"], code)
    assert r["status"] == "ok", r
    assert r["stdout"] == "bin:\ufffd:€\n"
    assert r["stderr"] == "err\ufffd\n"


THREAD_CELL = """
import threading, time
def tick():
    for i in range(1, 8):
        time.sleep(0.2)
        print('THREAD_TICK', i, flush=True)
threading.Thread(target=tick).start()
"""


async def test_a_previous_cells_thread_does_not_print_into_the_next_cell(
    client: httpx.AsyncClient, session: dict
) -> None:
    sid = session["id"]
    r = await run(client, sid, THREAD_CELL)
    assert r["status"] == "ok" and "THREAD_TICK" not in r["stdout"]
    r = await run(client, sid, "print('CLEAN')")
    assert r["stdout"] == "CLEAN\n", r
    # The thread surely ticks while this one runs.
    r = await run(client, sid, "import time\ntime.sleep(0.5)\nprint('CLEAN')")
    assert r["stdout"] == "CLEAN\n", r
    r = await run(client, sid, "import time\ntime.sleep(1.2)")
    assert r["stdout"] == "", r


async def test_a_previous_cells_thread_does_not_display_into_the_next_cell(
    client: httpx.AsyncClient, session: dict
) -> None:
    sid = session["id"]
    code = (
        "import threading, time\nfrom IPython.display import HTML, display\n"
        "def late():\n    time.sleep(0.3)\n    display(HTML('<b>LATE</b>'))\n"
        "threading.Thread(target=late).start()\n"
    )
    assert (await run(client, sid, code))["outputs"] == []
    r = await run(client, sid, "import time\ntime.sleep(0.8)\nprint('CLEAN')")
    assert r["stdout"] == "CLEAN\n" and r["outputs"] == [], r


async def test_a_threads_output_lands_in_its_own_cell_while_that_cell_runs(
    client: httpx.AsyncClient, session: dict
) -> None:
    code = (
        "import threading\n"
        "import sys\n"
        "def work(n):\n    sys.stdout.write(f'from thread {n}\\n')\n"  # one write: concurrent prints interleave
        "ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "class Sub(threading.Thread):\n    def run(self):\n        print('from subclass')\n"
        "s = Sub(); s.start(); s.join()\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(2)\n"
        "pool.submit(print, 'from pool').result()\n"
        "print('main')\n"
    )
    r = await run(client, session["id"], code)
    assert sorted(r["stdout"].splitlines()) == sorted(
        ["from thread 0", "from thread 1", "from thread 2", "from subclass", "from pool", "main"]
    ), r
    # A pool made by an earlier cell: each task writes to the cell that submitted it.
    r = await run(client, session["id"], "pool.submit(print, 'pool again').result()\nprint('done')")
    assert r["stdout"] == "pool again\ndone\n", r
