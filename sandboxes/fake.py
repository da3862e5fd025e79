"""A backend that runs nothing: the fast test tier's stand-in for a kernel, as httpx's MockTransport is for HTTP.

``FakeSandbox.execute`` never runs the code it is given. By default it reads the cell as a tiny script, one call
per line, arguments as Python literals (``ast.literal_eval``, never ``eval``)::

    print('hi')              stdout "hi\\n"
    eprint('oops')           stderr "oops\\n"
    display('image/png', 'iVBOR...')   a display_data bundle
    result('42')             execute_result text/plain
    raise_('ValueError', 'bad')        an error; the cell ends with status error
    sleep(0.5)               wait (the wall-time limit applies: past it the cell ends with timeout)
    write('out.txt', 'data') a file in the work dir
    die(137)                 the kernel process ends with that status
    hang()                   ignore interrupts: past the wall time the kernel is reported not alive

Or pass ``handler(code) -> iterable of Events (or float seconds to sleep)`` for anything else.

``start_hook(sandbox)``, awaited in every start (after ``start_delay_s``, before ``fail_start``), lets a test
hold starts on an event, count how many run at once, or raise. ``peak_live`` is the most sandboxes alive at once.
"""

from __future__ import annotations

import ast
import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandboxes.base import (
    DisplayEvent,
    EndEvent,
    ErrorEvent,
    Event,
    Limits,
    ResultEvent,
    SandboxBusy,
    SandboxError,
    SandboxState,
    StatusEvent,
    StreamEvent,
)
from sandboxes.layers import LayerTarget, native_target

Step = Event | float
Handler = Callable[[str], Iterable[Step]]


class _Die(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Hang(Exception):
    pass


class FakeSandbox:
    """One pretend kernel with a real (temporary) work dir."""

    jail = "fake"

    def __init__(self, backend: FakeBackend, sandbox_id: str, limits: Limits, env: dict[str, str]) -> None:
        self.backend = backend
        self.id = sandbox_id
        self.limits = limits
        self.env = env
        self.dir = backend.root / sandbox_id
        self.workdir = self.dir / "work"
        self.executed: list[str] = []
        self.layers: list[Path] = []
        self.interrupts = 0
        self.restarts = 0
        self.inputs: list[str] = []  # what reply_input was given, in order
        self._state: SandboxState = "starting"
        self._exit_reason: str | None = None
        self._interrupted = asyncio.Event()

    @property
    def state(self) -> SandboxState:
        return self._state

    @property
    def ref(self) -> str | None:
        return f"fake-{self.id}"

    @property
    def file_owner(self) -> int | None:
        return None

    @property
    def egress_socket(self) -> Path | None:
        return None

    @property
    def alive(self) -> bool:
        return self._state in ("starting", "idle", "busy")

    @property
    def exit_reason(self) -> str | None:
        return self._exit_reason

    async def start(self) -> None:
        self.workdir.mkdir(parents=True)
        if self.backend.start_delay_s:
            await asyncio.sleep(self.backend.start_delay_s)
        if self.backend.start_hook is not None:
            await self.backend.start_hook(self)
        if self.backend.fail_start is not None:
            raise SandboxError(self.backend.fail_start)
        self._state = "idle"

    async def execute(
        self, code: str, *, timeout: float, silent: bool = False, allow_stdin: bool = False
    ) -> AsyncIterator[Event]:
        if self._state == "restarting":
            raise SandboxBusy("the kernel is restarting")
        if not self.alive:
            yield EndEvent(status="dead", reason=self._exit_reason or "the kernel is not running", kernel_alive=False)
            return
        self.executed.append(code)
        self._state = "busy"
        self._interrupted.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        saw_error = False
        yield StatusEvent(state="busy")
        try:
            for step in self.backend.handler(code) if self.backend.handler else _script(code, self.workdir):
                if isinstance(step, float | int):
                    outcome = await self._sleep(float(step), deadline - loop.time())
                    if outcome == "slept":
                        continue
                    yield ErrorEvent(name="KeyboardInterrupt", value="")
                    yield StatusEvent(state="idle")
                    if outcome == "timeout":
                        yield EndEvent(status="timeout", reason=f"the cell ran past {timeout:g} s and was interrupted")
                    else:
                        yield EndEvent(status="error")
                    return
                saw_error = saw_error or isinstance(step, ErrorEvent)
                yield step
        except _Die as exc:
            self._state = "dead"
            self._exit_reason = f"the kernel exited with status {exc.code}"
            yield EndEvent(status="dead", reason=self._exit_reason, kernel_alive=False)
            return
        except _Hang:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            yield EndEvent(
                status="timeout",
                reason=f"the cell ran past {timeout:g} s and did not stop when interrupted",
                kernel_alive=False,
            )
            return
        finally:
            if self._state == "busy":
                self._state = "idle"
        yield StatusEvent(state="idle")
        yield EndEvent(status="error" if saw_error else "ok")

    async def _sleep(self, seconds: float, remaining: float) -> str:
        """``slept``, ``timeout`` (the wall time ran out first) or ``interrupted``."""
        try:
            await asyncio.wait_for(self._interrupted.wait(), min(seconds, max(remaining, 0.0)))
        except TimeoutError:
            return "slept" if seconds <= remaining else "timeout"
        return "interrupted"

    async def reply_input(self, value: str) -> None:
        self.inputs.append(value)

    async def interrupt(self) -> None:
        self.interrupts += 1
        self._interrupted.set()

    async def restart(self) -> None:
        if self._state == "closed":
            raise SandboxError("the sandbox is closed")
        if self._state == "restarting":
            raise SandboxBusy("the kernel is already restarting")
        self._state = "restarting"
        await asyncio.sleep(0)
        self.restarts += 1
        self._exit_reason = None
        self._state = "idle"

    async def kill(self, reason: str) -> None:
        if self._state != "closed":
            self._state = "dead"
            self._exit_reason = reason

    async def close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        self._exit_reason = self._exit_reason or "the sandbox was closed"
        self.backend.live.pop(self.id, None)
        self.backend.closed += 1
        await asyncio.to_thread(shutil.rmtree, self.dir, True)


class FakeBackend:
    """Makes FakeSandboxes under a temporary root; counts what it made and closed."""

    name = "fake"
    shared = False

    def __init__(
        self,
        root: Path | None = None,
        *,
        handler: Handler | None = None,
        start_delay_s: float = 0.0,
        fail_start: str | None = None,
        start_hook: Callable[[FakeSandbox], Awaitable[None]] | None = None,
    ) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="executor-fake-"))
        self.handler = handler
        self.start_delay_s = start_delay_s
        self.fail_start = fail_start
        self.start_hook = start_hook
        self.peak_live = 0
        self.live: dict[str, FakeSandbox] = {}
        self.created = 0
        self.closed = 0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "live_sandboxes": len(self.live)}

    async def start(self, keep: Collection[str] = ()) -> dict[str, int]:
        self.root.mkdir(parents=True, exist_ok=True)
        removed = 0
        for entry in list(self.root.iterdir()):
            if entry.name not in keep:
                await asyncio.to_thread(shutil.rmtree, entry, True)
                removed += 1
        return {"dirs": removed}

    def workdir_of(self, sandbox_id: str) -> Path | None:
        path = self.root / sandbox_id / "work"
        return path if sandbox_id not in self.live and path.is_dir() else None

    async def discard(self, sandbox_id: str) -> None:
        if sandbox_id not in self.live:
            await asyncio.to_thread(shutil.rmtree, self.root / sandbox_id, True)

    async def reap(self) -> dict[str, int]:
        return {}

    async def layer_target(self) -> LayerTarget:
        return native_target()

    async def create(
        self,
        limits: Limits,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        layers: Sequence[Path] = (),
    ) -> FakeSandbox:
        sandbox = FakeSandbox(self, secrets.token_hex(6), limits, dict(env or {}))
        sandbox.layers = [Path(p) for p in layers]  # recorded, never mounted: nothing runs here
        self.created += 1
        self.live[sandbox.id] = sandbox
        self.peak_live = max(self.peak_live, len(self.live))
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def stop(self) -> None:
        for sandbox in list(self.live.values()):
            await sandbox.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _script(code: str, workdir: Path) -> Iterable[Step]:
    """The default handler: see the module docstring."""
    for line in code.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            call = ast.parse(line, mode="eval").body
        except SyntaxError:
            yield ErrorEvent(name="SyntaxError", value=line)
            return
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            yield ErrorEvent(name="FakeKernelError", value=f"not a fake-kernel call: {line}")
            return
        args = [ast.literal_eval(a) for a in call.args]
        name = call.func.id
        if name == "print":
            yield StreamEvent(name="stdout", text=" ".join(str(a) for a in args) + "\n")
        elif name == "eprint":
            yield StreamEvent(name="stderr", text=" ".join(str(a) for a in args) + "\n")
        elif name == "display":
            yield DisplayEvent(data={args[0]: args[1], "text/plain": f"<{args[0]}>"})
        elif name == "result":
            yield ResultEvent(data={"text/plain": str(args[0])})
        elif name == "raise_":
            yield ErrorEvent(name=str(args[0]), value=str(args[1]) if len(args) > 1 else "")
            return
        elif name == "sleep":
            yield float(args[0])
        elif name == "write":
            path = workdir / str(args[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(args[1]))
        elif name == "die":
            raise _Die(int(args[0]) if args else 1)
        elif name == "hang":
            raise _Hang
        else:
            yield ErrorEvent(name="NameError", value=f"name {name!r} is not defined")
            return
