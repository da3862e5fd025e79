"""Tool requirements: parsing and refusals, the layer id, real layer builds from a local wheelhouse (no network),
kernels importing from a read-only layer (local backend; Docker when an engine answers), and the pool's cold start.

No test asserts a duration; builds use ``--no-index --find-links`` to wheels generated here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import stat
import sys
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from executor.errors import Invalid
from executor.tools.layers import LayerBuilder, LayerSettings, RequirementsBuildFailed, _rmtree
from executor.tools.requirements import Requirements, layer_id, parse_requirements
from sandboxes.base import EndEvent, ErrorEvent, Limits, ResultEvent, Sandbox, StreamEvent
from sandboxes.fake import FakeBackend
from sandboxes.layers import LAYERS_ROOT, LayerTarget, native_target, parse_probe_output, target_from_probe
from sandboxes.pool import Pool
from tests.conftest import require_bwrap, require_docker

# -- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        "--index-url https://evil.example/simple",
        "--extra-index-url=https://evil.example",
        "-i https://evil.example",
        "-e .",
        "-e git+https://github.com/a/b#egg=b",
        "-r requirements.txt",
        "-c constraints.txt",
        "--find-links /tmp",
        "--pre",
        "--trusted-host example.com",
        "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
        "pkg@https://example.com/x.tar.gz",
        "pkg @ file:///tmp/pkg.whl",
        "https://example.com/pkg-1.0.tar.gz",
        "git+https://github.com/owner/repo.git",
        "hg+https://example.com/repo",
        "./local/pkg",
        "../pkg",
        "/abs/path/pkg-1.0-py3-none-any.whl",
        "dir/pkg",
        "~/pkg",
        "C:\\pkg",
        "pkg-1.0-py3-none-any.whl",
        "pkg.tar.gz",
        "pkg.zip",
        "pkg==",
        "pkg >=",
        "two words",
        "pkg; not_a_marker == 'x'",
    ],
)
def test_refused_items_name_the_field_and_the_item(item: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_requirements(f"requests, {item}")
    assert info.value.field == "content"
    assert info.value.code == "invalid_requirements"
    assert repr(item[:77]).strip("'\"")[:40] in info.value.message
    assert "frontmatter requirements" in info.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("  ,  , ", ()),
        ("requests", ("requests",)),
        ("a, b>=2, c[extra]==1.0", ("a", "b>=2", "c[extra]==1.0")),
        ("Requests, requests", ("requests",)),
        ("Foo.Bar_baz", ("foo-bar-baz",)),
        ("b>=2,<3", ("b<3,>=2",)),  # Open WebUI would hand pip a broken "<3": joined back here
        ("c[B,a]>=1", ("c[a,b]>=1",)),
        ("x (>=1.0, <2)", ("x<2,>=1.0",)),
        ("pydantic~=2.7", ("pydantic~=2.7",)),
        ("numpy!=1.26.0,>=1.24", ("numpy!=1.26.0,>=1.24",)),
        ("tzdata; sys_platform == 'win32'", ('tzdata; sys_platform == "win32"',)),
        ("legacy===1.0.post1", ("legacy===1.0.post1",)),
    ],
)
def test_accepted_forms_are_normalized(value: str, expected: tuple[str, ...]) -> None:
    assert parse_requirements(value).items == expected


def test_a_list_and_none_are_accepted_and_the_count_is_bounded() -> None:
    assert parse_requirements(["b", " a "]).items == ("a", "b")
    assert not parse_requirements(None)
    with pytest.raises(Invalid) as info:
        parse_requirements(", ".join(f"p{i}" for i in range(65)))
    assert info.value.field == "content" and "65 items" in info.value.message


def test_the_layer_id_is_stable_and_independent_of_order_and_spelling() -> None:
    a = parse_requirements("b>=2, A, c[x,y]==1.0")
    b = parse_requirements("c[Y,X]==1.0,a ,B>=2")
    assert a == b and layer_id(a, "t") == layer_id(b, "t")
    assert layer_id(a, "t") == layer_id(Requirements(("a", "b>=2", "c[x,y]==1.0")), "t")  # same across runs
    assert len(layer_id(a, "t")) == 32
    assert layer_id(a, "t") != layer_id(a, "other-python")
    assert layer_id(a, "t") != layer_id(parse_requirements("a, b>=3, c[x,y]==1.0"), "t")


def test_targets_from_probes() -> None:
    t = target_from_probe(
        {"version": "3.12", "implementation": "cpython", "abiflags": "", "libc": ["glibc", "2.36"], "machine": "x86_64"}
    )
    assert (t.python_version, t.implementation, t.abi) == ("3.12", "cp", "cp312")
    assert t.platforms[0] == "manylinux_2_36_x86_64" and t.platforms[-1] == "manylinux1_x86_64"
    assert "manylinux2014_x86_64" in t.platforms and "manylinux_2_17_x86_64" in t.platforms
    assert t.pip_options()[:6] == ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    assert native_target().python_version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert parse_probe_output(b'noise\n{"version": "3.11", "implementation": "cpython", "libc": ["glibc", "2.31"],'
                              b' "machine": "aarch64"}\n').platforms[0] == "manylinux_2_31_aarch64"  # fmt: skip
    with pytest.raises(Exception, match="glibc"):
        target_from_probe({"version": "3.12", "implementation": "cpython", "libc": ["", ""], "machine": "x86_64"})


# -- a local wheelhouse ---------------------------------------------------------------------------------------


def make_wheel(where: Path, name: str, version: str, files: dict[str, str], requires: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A minimal pure-Python wheel, written by hand (no build backend needed)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    content = {
        **files,
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in content.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    wheel = where / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in content.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("wheels")
    make_wheel(where, "exectest-dep", "2.0", {"exectest_dep/__init__.py": "VALUE = 'dep'\n"})
    make_wheel(
        where,
        "exectest-top",
        "1.0",
        {"exectest_top/__init__.py": "from exectest_dep import VALUE as DEP\nVALUE = 42\n"},
        requires=["exectest-dep>=2"],
    )
    make_wheel(where, "exectest-top", "0.5", {"exectest_top/__init__.py": "VALUE = 5\n"})
    return where


@pytest.fixture
def builder(tmp_path: Path, wheelhouse: Path) -> LayerBuilder:
    return LayerBuilder(
        LayerSettings(cache_dir=tmp_path / "cache", no_index=True, find_links=(str(wheelhouse),), timeout_s=120)
    )


def leftovers(builder: LayerBuilder) -> list[str]:
    return sorted(p.name for p in builder.root.iterdir()) if builder.root.exists() else []


async def test_a_build_resolves_dependencies_and_is_read_only(builder: LayerBuilder) -> None:
    reqs = parse_requirements("exectest-top>=1")
    lines: list[str] = []
    layer = await builder.ensure(reqs, lines.append)
    assert layer.path == builder.root / layer.id and layer.id == layer_id(reqs, native_target().key)
    assert {p.replace("_", "-") for p in layer.packages} == {"exectest-top==1.0", "exectest-dep==2.0"}
    assert (layer.path / "exectest_top" / "__init__.py").is_file()
    assert any("exectest" in line for line in lines) and lines[-1].startswith("layer ready")
    for dirpath, _dirnames, filenames in os.walk(layer.path):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o555
        for f in filenames:
            assert not os.stat(os.path.join(dirpath, f)).st_mode & 0o222
    assert leftovers(builder) == [layer.id]  # no temporary dir left
    # Cached: a new builder on the same dir finds it without running pip.
    again = LayerBuilder(builder.settings)
    calls = 0
    original = again._pip

    async def counting(*args: object) -> list[str]:
        nonlocal calls
        calls += 1
        return await original(*args)  # type: ignore[arg-type]

    again._pip = counting  # type: ignore[method-assign]
    assert (await again.ensure(parse_requirements("Exectest_Top >= 1"))).path == layer.path
    assert calls == 0


async def test_a_layer_for_another_interpreter_is_built_with_its_tags(builder: LayerBuilder) -> None:
    """The Docker image's Python may differ from the service's: pip on the host picks wheels for it."""
    other = LayerTarget("3.12", "cp", "cp312", ("manylinux_2_17_x86_64", "manylinux2014_x86_64"))
    assert other != builder.native()
    reqs = parse_requirements("exectest-top")
    layer = await builder.ensure(reqs, target=other)
    native = await builder.ensure(reqs)
    assert layer.id != native.id and layer.target == other.key
    assert {p.split("==")[0].replace("_", "-") for p in layer.packages} == {"exectest-top", "exectest-dep"}
    # No bytecode of the host's Python in a layer for another version; the native one has it (imports from a
    # read-only layer cannot write it later).
    assert not list(layer.path.rglob("*.pyc")) and list(native.path.rglob("*.pyc"))


async def test_prune_removes_layers_not_kept(builder: LayerBuilder) -> None:
    a = await builder.ensure(parse_requirements("exectest-dep"))
    b = await builder.ensure(parse_requirements("exectest-top"))
    assert await builder.prune([b.id]) == [a.id]
    assert leftovers(builder) == [b.id]
    assert (await builder.ensure(parse_requirements("exectest-dep"))).id == a.id  # built again on demand


async def test_no_requirements_need_no_layer(builder: LayerBuilder) -> None:
    with pytest.raises(ValueError):
        await builder.ensure(parse_requirements(""))


async def test_two_callers_share_one_build(builder: LayerBuilder) -> None:
    calls = 0
    original = builder._pip

    async def counting(*args: object) -> list[str]:
        nonlocal calls
        calls += 1
        return await original(*args)  # type: ignore[arg-type]

    builder._pip = counting  # type: ignore[method-assign]
    seen_a: list[str] = []
    seen_b: list[str] = []
    reqs = parse_requirements("exectest-dep")
    a, b = await asyncio.gather(builder.ensure(reqs, seen_a.append), builder.ensure(reqs, seen_b.append))
    assert a == b and calls == 1
    assert seen_a[-1].startswith("layer ready") and seen_b[-1].startswith("layer ready")
    assert not builder.building()


async def test_a_failing_build_gives_pips_last_lines_and_stores_nothing(builder: LayerBuilder) -> None:
    reqs = parse_requirements("exectest-nonexistent-package==9")
    results = await asyncio.gather(builder.ensure(reqs), builder.ensure(reqs), return_exceptions=True)
    for exc in results:
        assert isinstance(exc, RequirementsBuildFailed), exc
        assert isinstance(exc, Invalid) and exc.field == "content" and exc.code == "requirements_build_failed"
        assert any("exectest-nonexistent-package" in line for line in exc.lines), exc.lines
        assert "No matching distribution" in exc.message or "Could not find a version" in exc.message
    assert leftovers(builder) == []
    assert not builder.building()
    # Not cached as a failure either: the next call runs pip again (and fails again).
    with pytest.raises(RequirementsBuildFailed):
        await builder.ensure(reqs)


async def test_an_oversized_layer_is_refused_and_not_stored(tmp_path: Path, wheelhouse: Path) -> None:
    builder = LayerBuilder(
        LayerSettings(cache_dir=tmp_path / "c", no_index=True, find_links=(str(wheelhouse),), max_layer_mb=0)
    )
    with pytest.raises(RequirementsBuildFailed, match="more than the 0 MiB"):
        await builder.ensure(parse_requirements("exectest-dep"))
    assert leftovers(builder) == []


async def test_a_hanging_pip_is_killed_at_the_timeout(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    pidfile = tmp_path / "pid"
    fake_python.write_text(f"#!/bin/sh\necho starting\necho $$ > {pidfile}\nexec sleep 300\n")
    fake_python.chmod(0o755)
    builder = LayerBuilder(LayerSettings(cache_dir=tmp_path / "c", python=str(fake_python), timeout_s=1))
    with pytest.raises(RequirementsBuildFailed, match="longer than 1 s") as info:
        await builder.ensure(parse_requirements("anything"))
    assert info.value.lines == ["starting"]
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert leftovers(builder) == []


async def test_close_kills_a_build_in_flight(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    pidfile = tmp_path / "pid"
    fake_python.write_text(f"#!/bin/sh\necho $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}\nexec sleep 300\n")
    fake_python.chmod(0o755)
    builder = LayerBuilder(LayerSettings(cache_dir=tmp_path / "c", python=str(fake_python)))
    waiter = asyncio.create_task(builder.ensure(parse_requirements("anything")))
    async with asyncio.timeout(30):
        while not pidfile.exists():  # noqa: ASYNC110  (a file the fake pip writes; no event to wait on)
            await asyncio.sleep(0.01)
    await builder.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
    assert leftovers(builder) == [] and not builder.building()


async def test_pip_sees_no_secrets_of_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_python = tmp_path / "python"
    seen = tmp_path / "seen"
    fake_python.write_text(f'#!/bin/sh\nenv > {seen}\nfor a; do echo "ARG $a" >> {seen}; done\necho nope\nexit 3\n')
    fake_python.chmod(0o755)
    monkeypatch.setenv("EXECUTOR_SECRET_THING", "hunter2")
    monkeypatch.setenv("PIP_INDEX_URL", "https://evil.example/simple")
    builder = LayerBuilder(LayerSettings(cache_dir=tmp_path / "c", python=str(fake_python)))
    with pytest.raises(RequirementsBuildFailed, match="pip exited with 3") as info:
        await builder.ensure(parse_requirements("Some.Pkg>=1"))
    assert info.value.lines == ["nope"]
    text = seen.read_text()
    assert "hunter2" not in text and "PIP_INDEX_URL" not in text
    args = [line[4:] for line in text.splitlines() if line.startswith("ARG ")]
    assert args[:3] == ["-m", "pip", "--isolated"] and "--only-binary=:all:" in args
    assert args[-2:] == ["--", "some-pkg>=1"]
    assert leftovers(builder) == []


# -- kernels using a layer ------------------------------------------------------------------------------------


async def execute(sandbox: Sandbox, code: str) -> tuple[str, str | None, EndEvent]:
    out, result, end = "", None, None
    async for event in sandbox.execute(code, timeout=60):
        if isinstance(event, StreamEvent):
            out += event.text
        elif isinstance(event, ResultEvent):
            result = event.data.get("text/plain")
        elif isinstance(event, ErrorEvent):
            out += f"{event.name}: {event.value}"
        elif isinstance(event, EndEvent):
            end = event
    assert end is not None
    return out, result, end


PROBE_LAYER = (
    "import exectest_top, os, sys\n"
    "def attempt(f):\n"
    "    try:\n"
    "        f(); return 'written'\n"
    "    except OSError as e:\n"
    "        return type(e).__name__\n"
    "d = os.path.dirname(exectest_top.__file__)\n"
    "(exectest_top.VALUE, exectest_top.DEP, d,\n"
    " attempt(lambda: open(exectest_top.__file__, 'a').write('x')),\n"
    " attempt(lambda: open(os.path.join(d, 'new.py'), 'w').write('x')))\n"
)


@pytest.fixture
async def local_backend(tmp_path: Path) -> AsyncIterator[object]:
    require_bwrap()
    from sandboxes.local import LocalBackend, LocalConfig

    backend = LocalBackend(LocalConfig(data_dir=tmp_path / "d", cache_dir=tmp_path / "mpl", allow_unjailed=True))
    await backend.start()
    yield backend
    await backend.stop()


@pytest.mark.parametrize("jail", ["jailed", "none"])
async def test_a_local_kernel_imports_from_the_layer_and_cannot_write_it(
    local_backend: object, builder: LayerBuilder, jail: str, request: pytest.FixtureRequest
) -> None:
    from sandboxes.local import LocalBackend

    assert isinstance(local_backend, LocalBackend)
    if jail == "none":
        # Unjailed, the kernel reads the layer in place under its dropped uid: the cache must be reachable by it
        # (pytest's tmp dirs are 0700).
        local_backend.jail = "none"
        shared = Path(tempfile.mkdtemp(prefix="executor-layers-test-"))
        os.chmod(shared, 0o755)
        request.addfinalizer(lambda: _rmtree(shared))
        builder = LayerBuilder(dataclasses.replace(builder.settings, cache_dir=shared))
    target = await local_backend.layer_target()
    layer = await builder.ensure(parse_requirements("exectest-top"), target=target)
    sandbox = await local_backend.create(Limits(), layers=[layer.path])
    try:
        out, result, end = await execute(sandbox, PROBE_LAYER)
        assert end.status == "ok", (out, end)
        assert result is not None
        value, dep, where, rewrite, create = eval(result)
        assert (value, dep) == (42, "dep")
        expected = f"{LAYERS_ROOT}/0/exectest_top" if jail == "jailed" else str(layer.path / "exectest_top")
        assert where == expected
        if os.geteuid() == 0 or jail == "jailed":
            assert rewrite != "written" and create != "written"
        # Without layers the package is not there.
        plain = await local_backend.create(Limits())
        try:
            _, _, end = await execute(plain, "import exectest_top")
            assert end.status == "error"
        finally:
            await plain.close()
    finally:
        await sandbox.close()
    assert not any(layer.path.glob("exectest_top/new.py"))


async def test_a_layer_that_is_not_a_dir_is_refused(local_backend: object, tmp_path: Path) -> None:
    from sandboxes.base import SandboxError
    from sandboxes.local import LocalBackend

    assert isinstance(local_backend, LocalBackend)
    with pytest.raises(SandboxError, match="not an existing absolute directory"):
        await local_backend.create(Limits(), layers=[tmp_path / "missing"])


@pytest.mark.docker
async def test_a_docker_kernel_imports_from_the_layer_and_cannot_write_it(
    tmp_path: Path, builder: LayerBuilder
) -> None:
    require_docker()
    from sandboxes.base import instance_id
    from sandboxes.docker import DockerBackend, DockerConfig

    data = tmp_path / "docker-data"
    backend = DockerBackend(DockerConfig(data_dir=data, instance=instance_id(data)))
    from tests import conftest

    conftest.DOCKER_INSTANCES.add(backend.instance)
    await backend.start()
    try:
        target = await backend.layer_target()
        assert isinstance(target, LayerTarget)
        layer = await builder.ensure(parse_requirements("exectest-top"), target=target)
        sandbox = await backend.create(Limits(), layers=[layer.path])
        try:
            out, result, end = await execute(sandbox, PROBE_LAYER)
            assert end.status == "ok", (out, end)
            assert result is not None
            value, dep, where, rewrite, create = eval(result)
            assert (value, dep, where) == (42, "dep", f"{LAYERS_ROOT}/0/exectest_top")
            assert rewrite != "written" and create != "written"
        finally:
            await sandbox.close()
    finally:
        await backend.stop()


# -- the pool ---------------------------------------------------------------------------------------------------


async def test_a_request_with_layers_is_a_cold_start_past_the_ready_pool(tmp_path: Path) -> None:
    backend = FakeBackend()
    await backend.start()
    pool = Pool(backend, Limits(), 1, lambda: True, warm_up=None)
    try:
        pool.refill()
        async with asyncio.timeout(10):
            while not pool.ready:  # noqa: ASYNC110  (a counter, no event to wait on)
                await asyncio.sleep(0.002)
        pooled = pool.ready[0]
        layer = tmp_path / "layer"
        layer.mkdir()
        got = await pool.acquire(Limits(), deadline_s=10, layers=[layer])
        assert got is not pooled and pool.ready == [pooled]
        assert got.layers == [layer]  # type: ignore[attr-defined]
        plain = await pool.acquire(Limits(), deadline_s=10)
        assert plain is pooled and plain.layers == []  # type: ignore[attr-defined]
        await got.close()
        await plain.close()
    finally:
        await pool.close()
        await backend.stop()
