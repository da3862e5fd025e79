"""The kernel layer every backend shares (sandboxes/kernel.py KernelSandbox) and the local provisioner's limits."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from executor.settings import Settings
from sandboxes.base import Limits
from sandboxes.local import LocalBackend, LocalConfig, LocalProcess, UidPool
from tests.conftest import BACKENDS, Service, run


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.max_kernel_message_mb = 8
    settings.work_dir_size_mb = 64
    settings.max_file_size_mb = 32
    return settings


async def test_two_restarts_never_collide(client: httpx.AsyncClient, session: dict) -> None:
    """Today's race on the connection file and the cgroup: one restart runs, the other is told to retry."""
    sid = session["id"]
    await run(client, sid, "x = 1")
    first, second = await asyncio.gather(
        client.post(f"/api/v1/sessions/{sid}/restart"), client.post(f"/api/v1/sessions/{sid}/restart")
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    assert loser.json()["error"] == "session_restarting"
    r = await run(client, sid, "'x' in globals(), 6 * 7")
    assert r["status"] == "ok" and r["result"] == "(False, 42)", r


async def test_a_message_over_the_frame_cap_ends_the_cell_and_the_kernel(
    client: httpx.AsyncClient, session: dict
) -> None:
    """Code in the sandbox holds the kernel's key and sockets: a 16 MiB frame against a cap of 8 MiB."""
    code = (
        "k = get_ipython().kernel\n"
        "k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'x' * (16 << 20)},"
        " parent=k.get_parent())\n"
        "import time; time.sleep(30)\n"
    )
    r = await run(client, session["id"], code, timeout_s=60)
    assert r["status"] == "error" and "larger than 8 MiB" in r["error"]["value"], r["error"]
    assert len(r["stdout"]) < 1 << 20
    info = (await client.get(f"/api/v1/sessions/{session['id']}")).json()
    assert info["status"] == "dead" and "larger than 8 MiB" in info["reason"]


async def test_honest_output_bigger_than_the_cap_is_sliced_not_refused(
    client: httpx.AsyncClient, session: dict
) -> None:
    code = "import sys\nsys.stdout.write('y' * (20 << 20))\n'done'"
    r = await run(client, session["id"], code, timeout_s=60)
    assert r["status"] == "ok" and r["truncated"] is True and r["result"] == "'done'", r["error"]


async def test_output_of_an_earlier_cells_thread_is_counted_not_shown(client: httpx.AsyncClient, session: dict) -> None:
    sid = session["id"]
    start = (
        "import threading, time\n"
        "def tick():\n"
        "    for i in range(30):\n"
        "        print('THREAD_TICK', i, flush=True)\n"
        "        time.sleep(0.1)\n"
        "threading.Thread(target=tick).start()\n"
    )
    await run(client, sid, start)
    r = await run(client, sid, "import time; time.sleep(1)\nprint('CLEAN')")
    assert r["stdout"] == "CLEAN\n", r["stdout"]
    assert r["stray_outputs"] >= 1


@pytest.mark.parametrize("backend_name", ["local"])  # the Docker one is tests/test_docker.py
async def test_the_local_work_dir_is_a_size_capped_tmpfs(service: Service, client: httpx.AsyncClient) -> None:
    if os.geteuid() != 0:
        pytest.skip("the host-side tmpfs needs root")
    sid = (await client.post("/api/v1/sessions", json={})).json()["id"]
    code = (
        "try:\n"
        "    for i in range(4):\n"
        "        with open(f'fill{i}.bin', 'wb') as f:\n"
        "            for _ in range(30):\n"
        "                f.write(b'0' * (1 << 20))\n"
        "except OSError as e:\n"
        "    print('full', e.errno)\n"
    )
    try:
        r = await run(client, sid, code, timeout_s=60)
        assert "full 28" in r["stdout"], r  # ENOSPC at 64 MiB, not the host's disk
    finally:
        await client.delete(f"/api/v1/sessions/{sid}")


def test_uids_are_unique_across_instances_on_one_host(tmp_path: Path) -> None:
    """Two service instances (two data dirs) on one host take uids from one lock dir: never the same."""
    a, b = UidPool(tmp_path / "uids", 61000, 3), UidPool(tmp_path / "uids", 61000, 3)
    a.prepare()
    b.prepare()
    taken = [a.take(), b.take(), a.take()]
    assert len(set(taken)) == 3
    with pytest.raises(Exception, match="no free sandbox uid"):
        b.take()
    a.give(taken[0])
    assert b.take() == taken[0]
    a.close()
    b.close()


def test_an_unprivileged_jail_bounds_processes_with_rlimit_nproc(tmp_path: Path) -> None:
    """bwrap-userns has no cgroup: RLIMIT_NPROC, counted per user namespace, bounds the fork bomb."""
    backend = LocalBackend(LocalConfig(data_dir=tmp_path / "d", use_cgroups=False))
    backend.jail = "bwrap-userns"
    backend.is_root = False
    process = LocalProcess(backend, "abc", Limits(pids=77), {})
    process.paths.dir.mkdir(parents=True)
    argv, _ = process._command()
    limits = argv[: argv.index("--", argv.index(backend.prlimit or "prlimit"))]
    assert "--nproc=77" in limits and "--unshare-all" in argv
    assert "preexec_fn" not in LocalProcess.launch.__code__.co_names


async def test_a_kernels_input_request_is_yielded_and_answered(tmp_path: Path) -> None:
    """The stdin channel (the tool host's ``__event_call__``): asked from the cell and from a thread of it;
    without ``allow_stdin`` input() fails at once instead of waiting."""
    from sandboxes.base import EndEvent, ErrorEvent, InputRequestEvent, StreamEvent

    backend = LocalBackend(LocalConfig(data_dir=tmp_path / "d", use_cgroups=False))
    await backend.start()
    sandbox = await backend.create(Limits())
    try:
        code = (
            "import asyncio, contextvars, threading\n"
            "print('got', input('first?'))\n"
            "ask, ctx, out = input, contextvars.copy_context(), []\n"
            "asked = lambda: out.append(asyncio.run(asyncio.to_thread(ask, 'second?')))\n"
            "t = threading.Thread(target=ctx.run, args=(asked,))\n"
            "t.start(); t.join(); print('thread got', out[0])\n"
        )
        prompts, stdout = [], ""
        async for event in sandbox.execute(code, timeout=20, allow_stdin=True):
            if isinstance(event, InputRequestEvent):
                prompts.append(event.prompt)
                await sandbox.reply_input(event.prompt.upper())
            elif isinstance(event, StreamEvent):
                stdout += event.text
            elif isinstance(event, EndEvent):
                assert event.status == "ok", event
        assert prompts == ["first?", "second?"]
        assert stdout == "got FIRST?\nthread got SECOND?\n"
        events = [e async for e in sandbox.execute("input('x')", timeout=20)]
        assert any(isinstance(e, ErrorEvent) and e.name == "StdinNotImplementedError" for e in events)
    finally:
        await sandbox.close()
        await backend.stop()
