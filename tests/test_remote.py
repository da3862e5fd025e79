"""The remote backend against a real Kernel Gateway on loopback (local ipykernel kernels)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandboxes.base import EndEvent, ErrorEvent, Event, Limits, ResultEvent, SandboxError, StreamEvent
from sandboxes.remote import GONE, RESTARTED, RemoteBackend, RemoteConfig, RemoteSandbox, kernel_username
from tests.gateway import Gateway, delete_kernel, gateway_kernels, start_gateway


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.stop()


def config(gw: Gateway, **extra: object) -> RemoteConfig:
    return RemoteConfig(url=gw.url, token=gw.token, work_dir=str(gw.work_dir), **extra)  # type: ignore[arg-type]


@pytest.fixture
async def backend(gateway: Gateway) -> AsyncIterator[RemoteBackend]:
    before = set(gateway_kernels(gateway))
    b = RemoteBackend(config(gateway))
    await b.start()
    try:
        yield b
    finally:
        await b.stop()
        assert set(gateway_kernels(gateway)) <= before, "kernels left on the gateway"


async def collect(sandbox: RemoteSandbox, code: str, timeout: float = 30) -> list[Event]:
    return [e async for e in sandbox.execute(code, timeout=timeout)]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, StreamEvent))


def result(events: list[Event]) -> str | None:
    return next((e.data.get("text/plain") for e in events if isinstance(e, ResultEvent)), None)


def end(events: list[Event]) -> EndEvent:
    last = events[-1]
    assert isinstance(last, EndEvent)
    return last


async def test_execute_env_and_kernel_env(backend: RemoteBackend, gateway: Gateway) -> None:
    sandbox = await backend.create(
        Limits(memory_mb=256, cpus=0.5), env={"GREETING": "hi"}, labels={"executor.owner": "Key:Alice@Example"}
    )
    assert sandbox.id in gateway_kernels(gateway) and sandbox.ref == sandbox.id and sandbox.workdir is None
    events = await collect(
        sandbox,
        "import os\nprint(os.environ['GREETING'])\n"
        "(os.environ['KERNEL_USERNAME'], os.environ['KERNEL_MEMORY'], os.environ['KERNEL_CPUS'], os.getcwd())",
    )
    assert end(events).status == "ok"
    assert text(events) == "hi\n"
    value = result(events)
    assert value is not None
    assert eval(value) == ("key-alice-example", "256Mi", "0.5", str(gateway.work_dir / sandbox.id))
    events = await collect(sandbox, "1/0")
    assert end(events).status == "error"
    assert any(isinstance(e, ErrorEvent) and e.name == "ZeroDivisionError" for e in events)
    await sandbox.close()
    await sandbox.close()
    assert sandbox.id not in gateway_kernels(gateway)
    assert not (gateway.work_dir / sandbox.id).exists()


async def test_timeout_interrupts_and_the_kernel_lives(backend: RemoteBackend) -> None:
    sandbox = await backend.create(Limits())
    await collect(sandbox, "x = 5")
    events = await collect(sandbox, "import time\ntime.sleep(30)", timeout=1)
    assert end(events).status == "timeout" and end(events).kernel_alive
    assert sandbox.alive
    assert result(await collect(sandbox, "x")) == "5"


async def test_a_kernel_death_is_reported_and_restart_revives(backend: RemoteBackend) -> None:
    sandbox = await backend.create(Limits(), env={"A": "1"})
    events = await collect(sandbox, "import os\nos._exit(3)")
    assert end(events).status == "dead" and end(events).reason == RESTARTED
    assert sandbox.state == "dead" and sandbox.exit_reason == RESTARTED
    assert end(await collect(sandbox, "1")).status == "dead"
    await sandbox.restart()
    assert sandbox.state == "idle"
    assert result(await collect(sandbox, "import os\nos.environ['A']")) == "'1'"


async def test_a_culled_kernel_is_dead_with_the_reason(backend: RemoteBackend, gateway: Gateway) -> None:
    sandbox = await backend.create(Limits())
    assert delete_kernel(gateway, sandbox.id) == 204
    events = await collect(sandbox, "1")
    assert end(events).status == "dead" and end(events).reason == GONE
    with pytest.raises(SandboxError, match="culled"):
        await backend.attach(sandbox.id)
    await sandbox.close()


async def test_attach_from_a_second_backend(backend: RemoteBackend, gateway: Gateway) -> None:
    sandbox = await backend.create(Limits())
    await collect(sandbox, "shared = 41")
    other = RemoteBackend(config(gateway))
    try:
        attached = await other.attach(sandbox.id)
        assert result(await collect(attached, "shared + 1")) == "42"
        await attached.close()
        assert sandbox.id not in gateway_kernels(gateway)
    finally:
        await other.stop()


async def test_an_oversized_message_ends_the_cell(gateway: Gateway) -> None:
    b = RemoteBackend(config(gateway, max_message_bytes=1 << 20))
    try:
        sandbox = await b.create(Limits())
        events = await collect(sandbox, "print('x' * (2 << 20))")
        assert any(isinstance(e, ErrorEvent) and e.name == "OutputLimitExceeded" for e in events)
        assert end(events).status == "dead" and not sandbox.alive
        await sandbox.restart()
        assert result(await collect(sandbox, "2 + 2")) == "4"
    finally:
        await b.stop()


async def test_layers_and_bad_settings_are_refused(backend: RemoteBackend) -> None:
    with pytest.raises(SandboxError, match="layers"):
        await backend.create(Limits(), layers=[Path("/x")])
    with pytest.raises(SandboxError, match="KERNEL_"):
        RemoteConfig(url="http://h", kernel_env={"PATH": "/"})
    with pytest.raises(SandboxError, match="URL"):
        RemoteConfig(url="ftp://h")
    assert kernel_username("") == "executor" and len(kernel_username("a" * 100)) == 26


async def test_a_wrong_token_says_so(gateway: Gateway) -> None:
    b = RemoteBackend(RemoteConfig(url=gateway.url, token="wrong"))
    try:
        with pytest.raises(SandboxError, match="EXECUTOR_REMOTE_TOKEN"):
            await b.create(Limits())
    finally:
        await b.stop()


async def test_files_round_trip_through_kernel_code(backend: RemoteBackend, gateway: Gateway) -> None:
    sandbox = await backend.create(Limits())
    big = bytes(range(256)) * (40 << 10)  # 10 MiB: several chunks each way
    assert await sandbox.write_file("in/data.bin", big) == len(big)
    assert await sandbox.write_file("small.txt", b"hi") == 2
    assert result(await collect(sandbox, "open('small.txt').read()")) == "'hi'"
    files, cut = await sandbox.list_files(1000)
    assert not cut and sorted((f.path, f.size) for f in files) == [("in/data.bin", len(big)), ("small.txt", 2)]
    assert await sandbox.read_file("in/data.bin", len(big)) == big
    assert await sandbox.read_file("in/data.bin", len(big) - 1) is None
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("nope", 10)
    with pytest.raises(IsADirectoryError):
        await sandbox.read_file("in", 10)
    await collect(sandbox, "import os\nos.symlink('/etc/passwd', 'link')\nos.symlink('/etc', 'up')")
    with pytest.raises(PermissionError):
        await sandbox.read_file("link", 1 << 20)
    with pytest.raises(PermissionError):
        await sandbox.read_file("up/passwd", 1 << 20)
    await sandbox.delete_file("in")
    files, _ = await sandbox.list_files(1000)
    assert [f.path for f in files] == ["small.txt"]
    files, cut = await sandbox.list_files(1)
    assert cut
    await sandbox.close()


def test_make_backend_builds_it_from_settings(tmp_path: Path) -> None:
    from executor.app import make_backend
    from executor.settings import Settings

    s = Settings(_env_file=None, data_dir=tmp_path, backend="remote")  # type: ignore[call-arg]
    with pytest.raises(SandboxError, match="EXECUTOR_REMOTE_URL"):
        make_backend(s)
    s = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, backend="remote", remote_url="http://gw:8888", remote_token="t0ken-xyz"
    )
    b = make_backend(s)
    assert isinstance(b, RemoteBackend) and b.shared and b.config.token == "t0ken-xyz"
    assert "t0ken" not in repr(s) and "t0ken" not in str(b.describe())
