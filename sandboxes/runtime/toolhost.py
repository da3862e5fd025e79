"""The tool host: runs an Open WebUI tool file inside its sandbox, one operation per cell.

The service runs ``<this module>.OP("<json text>")`` as a silent cell. Each operation reports by publishing
display messages of one MIME type (``MIME``) whose value is a JSON object: any number of ``{"kind": "event",
"event": {...}}`` (``__event_emitter__``), then exactly one ``{"kind": "done", ...}`` or ``{"kind": "failed",
"error": {name, value, traceback}}`` (or ``"errors"`` for valves). What the tool prints is ordinary stream output.

Operations (see ``executor/tools/dispatch.py``, which sends them):

- ``extract``: import the file as Open WebUI's ``load_tool_module_by_id`` does and answer its function specs
  (``toolspecs.get_tool_specs``) and its ``Valves``/``UserValves`` JSON schemas; nothing is kept.
- ``load``: the same import, kept: ``Tools()`` lives on for the calls of this sandbox's one user.
- ``call``: valves set, ``__user__`` built (with ``valves`` a UserValves), the declared dunder parameters injected
  (never taken from the arguments), Open WebUI's argument coercion, the function run (a coroutine awaited) in a
  thread with its own event loop. ``__event_call__`` asks the service through the kernel's stdin channel
  (``input()`` with a JSON prompt) and fails at once when the service said no client listens.
- ``validate_valves``: ``Model(**values).model_dump(exclude_unset=True)``, secrets revealed (the service stores them
  and masks them in every answer); or the validation errors with their locations.
- ``valves_spec``: the model's schema with dynamic select options resolved for the user.

The return value is encoded (``encode``) so the service can shape it as ``process_tool_result`` does without the
object (``executor/tools/shaping.py`` reads the encoding).

Only the standard library, IPython and pydantic (and RestrictedPython in restricted mode) are imported here.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import inspect
import json
import os
import re
import sys
import tempfile
import threading
import traceback
import types
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, get_args, get_type_hints

from . import toolspecs

MIME = "application/vnd.executor.toolhost+json"
TRACEBACK_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

Publish = Callable[[dict[str, Any]], None]


def _kernel_publish(message: dict[str, Any]) -> None:
    from IPython.display import publish_display_data

    publish_display_data({MIME: message})  # type: ignore[no-untyped-call]


class _Host:
    """This kernel's one loaded tool, and how it talks to the service (swappable for in-process tests)."""

    def __init__(self) -> None:
        self.publish: Publish = _kernel_publish
        self.ask: Callable[[str], str] | None = None  # None: the kernel's input() at call time
        self.tools: Any = None
        self.module: types.ModuleType | None = None
        self.tool_id = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: threading.Thread | None = None

    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The tool's own event loop, in a thread of its own, for the life of the sandbox: what a call leaves
        (an HTTP session, a task) is there for the next one, as in Open WebUI's one loop."""
        loop, thread = self.loop, self.loop_thread
        if loop is None or loop.is_closed() or thread is None or not thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="tool-loop", daemon=True)
            thread.start()
            self.loop, self.loop_thread = loop, thread
        return loop


HOST = _Host()


# -- replies ----------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _error(exc: BaseException) -> dict[str, Any]:
    lines: list[str] = []
    restricted_lines = getattr(exc, "lines", None)
    if type(exc).__name__ == "RestrictedCompileError" and isinstance(restricted_lines, list):
        lines = [str(x) for x in restricted_lines]
        lines.append(f"{type(exc).__name__}: {exc}")
    else:
        for chunk in traceback.format_exception(exc):
            lines.extend(_ANSI.sub("", chunk).rstrip("\n").splitlines())
    return {"name": type(exc).__name__, "value": _ANSI.sub("", str(exc))[:4000], "traceback": lines[-TRACEBACK_LINES:]}


def _done(**body: Any) -> None:
    HOST.publish(_jsonable({"kind": "done", **body}))


def _failed(**body: Any) -> None:
    HOST.publish(_jsonable({"kind": "failed", **body}))


# -- import -----------------------------------------------------------------------------------------------------


def _import(payload: dict[str, Any]) -> tuple[Any, types.ModuleType]:
    """``load_tool_module_by_id``: the source with ``replace_imports``, a fresh module ``tool_<id>_<hex>`` with
    ``__file__`` set, executed; ``Tools()`` instantiated. Restricted mode compiles under RestrictedPython."""
    tool_id = str(payload.get("tool_id", "tool"))
    source = toolspecs.replace_imports(str(payload.get("source", "")))
    name = f"tool_{tool_id}_{uuid.uuid4().hex}"
    # A real file, as Open WebUI gives one: __file__ works, and tracebacks show the tool's lines.
    fd, filename = tempfile.mkstemp(prefix=f"tool_{tool_id}_", suffix=".py")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(source)
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        if payload.get("restricted"):
            from . import restricted

            allowed = payload.get("allowed_imports")
            namespace = restricted.load_module(
                source, name, filename, allowed if isinstance(allowed, list) else restricted.DEFAULT_ALLOWED_IMPORTS
            )
            module.__dict__.update(namespace)
            sys.modules[name] = module  # load_module registered and dropped its own module object
        else:
            module.__dict__["__file__"] = filename
            exec(compile(source, filename, "exec"), module.__dict__)
        if not hasattr(module, "Tools"):
            raise Exception("No Tools class found in the module")
        # Tools() while the module is still in sys.modules, as load_tool_module_by_id does: pydantic finishes a
        # model that names a class defined later in the file (Valves -> Target) by looking the module up there.
        return module.Tools(), module
    finally:
        sys.modules.pop(name, None)


def _schema(model: Any) -> dict[str, Any] | None:
    if model is None or not hasattr(model, "model_json_schema"):
        return None
    schema: dict[str, Any] = model.model_json_schema()
    return schema


def extract(text: str) -> None:
    """Import the file; answer its specs and valves schemas."""
    try:
        tools, _ = _import(json.loads(text))
        specs = toolspecs.get_tool_specs(tools)
        _done(
            specs=specs,
            valves_schema=_schema(getattr(tools, "Valves", None)),
            user_valves_schema=_schema(getattr(tools, "UserValves", None)),
        )
    except BaseException as exc:
        _failed(error=_error(exc))


def load(text: str) -> None:
    """Import the file and keep ``Tools()`` for the calls of this sandbox."""
    try:
        payload = json.loads(text)
        HOST.tools, HOST.module = _import(payload)
        HOST.tool_id = str(payload.get("tool_id", ""))
        sys.modules["__executor_toolhost__"] = sys.modules[__name__]
        _done()
    except BaseException as exc:
        _failed(error=_error(exc))


# -- calls ------------------------------------------------------------------------------------------------------


def coerce_kwargs(sig: inspect.Signature, type_hints: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Open WebUI's ``coerce_kwargs`` (in ``get_async_tool_function_and_apply_extra_params``)."""
    for name, value in kwargs.items():
        if name not in sig.parameters or value is None:
            continue
        annotation = type_hints.get(name, sig.parameters[name].annotation)
        args = set(get_args(annotation))
        if isinstance(value, str) and (annotation is int or args == {int, type(None)}):
            kwargs[name] = int(value)
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (annotation is str or args == {str, type(None)})
        ):
            kwargs[name] = str(value)
    return kwargs


def encode(value: Any) -> dict[str, Any]:
    """The return value as tagged JSON (see ``executor/tools/shaping.py``)."""
    if value is None:
        return {"type": "none"}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    if isinstance(value, bool | int | float):
        return {"type": "scalar", "value": value if value == value else None, "text": str(value)}
    if isinstance(value, tuple):
        return {"type": "tuple", "items": [encode(v) for v in value]}
    mro = [c.__name__ for c in type(value).__mro__]
    if "Response" in mro and hasattr(value, "body") and hasattr(value, "status_code"):
        body = value.body
        headers = getattr(value, "headers", {}) or {}
        return {
            "type": "response",
            "html": "HTMLResponse" in mro,
            "status_code": int(value.status_code),
            "headers": {str(k): str(v) for k, v in dict(headers).items()},
            "body": body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else str(body),
            "repr": str(value),
        }
    if isinstance(value, dict | list):
        try:
            return {"type": "json", "value": json.loads(json.dumps(value, ensure_ascii=False))}
        except (TypeError, ValueError):
            return {"type": "repr", "value": str(value)}
    return {"type": "repr", "value": str(value)}


def _model(kind: str) -> Any:
    return getattr(HOST.tools, "Valves" if kind == "valves" else "UserValves", None)


def call(text: str) -> None:
    """Call one function of the loaded tool; events as they happen, then the encoded value."""
    try:
        payload = json.loads(text)
        _call(payload)
    except BaseException as exc:
        _failed(error=_error(exc))


def _call(payload: dict[str, Any]) -> None:
    tools = HOST.tools
    if tools is None:
        raise RuntimeError("no tool is loaded in this sandbox")
    name = str(payload.get("function", ""))
    functions = {f.__name__: f for f in toolspecs.get_functions_from_tool(tools) if hasattr(f, "__name__")}
    if name not in functions:
        raise AttributeError(f"the tool has no function {name!r}")
    function = getattr(tools, name)
    if hasattr(tools, "valves") and hasattr(tools, "Valves"):
        tools.valves = tools.Valves(**(payload.get("valves") or {}))
    user = dict(payload.get("user") or {})
    if hasattr(tools, "UserValves"):
        user["valves"] = tools.UserValves(**(payload.get("user_valves") or {}))
    listening = bool(payload.get("event_call"))
    ask = HOST.ask or builtins.input  # the kernel's input(), bound to this cell (allow_stdin)

    async def __event_emitter__(event: Any) -> None:
        HOST.publish({"kind": "event", "event": _jsonable(event)})

    async def __event_call__(event: Any) -> Any:
        if not listening:
            raise RuntimeError(
                "__event_call__: no client is listening for this call (call it through .../call/{function}/stream "
                "and answer with POST .../calls/{call_id}/reply)"
            )
        prompt = json.dumps({"kind": "event_call", "event": _jsonable(event)})
        reply = json.loads(await asyncio.to_thread(ask, prompt))
        if isinstance(reply, dict) and reply.get("error") is not None:
            raise RuntimeError(f"__event_call__: {reply['error']}")
        return reply.get("value") if isinstance(reply, dict) else None

    extras = dict(payload.get("extras") or {})
    extra_params = {**extras, "__id__": HOST.tool_id, "__user__": user,
                    "__event_emitter__": __event_emitter__, "__event_call__": __event_call__}  # fmt: skip
    sig = inspect.signature(function)
    try:
        type_hints = get_type_hints(function)
    except Exception:
        type_hints = {}
    extra_params = {k: v for k, v in extra_params.items() if k in sig.parameters}
    # A caller's arguments never set the injected parameters.
    arguments = {k: v for k, v in dict(payload.get("arguments") or {}).items() if not str(k).startswith("__")}
    bound = partial(function, **extra_params)

    async def invoke() -> Any:
        kwargs = coerce_kwargs(sig, type_hints, arguments)
        if inspect.iscoroutinefunction(function):
            return await bound(**kwargs)
        return bound(**kwargs)

    box: dict[str, Any] = {}
    finished = threading.Event()
    # contextvars carry this cell's parent: what the tool prints, displays or asks belongs to this cell.
    context = contextvars.copy_context()
    loop = HOST.event_loop()

    def begin() -> None:
        task = loop.create_task(invoke(), context=context)

        def end(done: asyncio.Task[Any]) -> None:
            if done.cancelled():
                box["error"] = asyncio.CancelledError("the call was cancelled")
            elif done.exception() is not None:
                box["error"] = done.exception()
            else:
                box["value"] = done.result()
            finished.set()

        task.add_done_callback(end)

    loop.call_soon_threadsafe(begin)
    finished.wait()
    if "error" in box:
        _failed(error=_error(box["error"]))
    else:
        _done(result=encode(box.get("value")))


# -- valves -----------------------------------------------------------------------------------------------------


def _reveal(value: Any) -> Any:
    if hasattr(value, "get_secret_value") and callable(value.get_secret_value):
        secret = value.get_secret_value()
        return secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


def validate_valves(text: str) -> None:
    """``Model(**values)`` as Open WebUI's valves update does; the set fields, secrets revealed."""
    try:
        payload = json.loads(text)
        kind = str(payload.get("kind", "valves"))
        model = _model(kind)
        if model is None:
            _failed(errors=[{"loc": [], "msg": f"this tool has no {'Valves' if kind == 'valves' else 'UserValves'}",
                             "type": "missing_model"}])  # fmt: skip
            return
        values = {k: v for k, v in dict(payload.get("values") or {}).items() if v is not None}
        from pydantic import ValidationError

        try:
            instance = model(**values)
        except ValidationError as exc:
            errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                      for e in exc.errors()]  # fmt: skip
            _failed(errors=errors)
            return
        _done(values=_reveal(instance.model_dump(exclude_unset=True)))
    except BaseException as exc:
        _failed(errors=[{"loc": [], "msg": f"{type(exc).__name__}: {exc}", "type": "error"}])


def valves_spec(text: str) -> None:
    """The schema of Valves or UserValves, select options resolved for this user."""
    try:
        payload = json.loads(text)
        model = _model(str(payload.get("kind", "valves")))
        if model is None:
            _done(schema=None)
            return
        schema = toolspecs.resolve_valves_schema_options(model, model.model_json_schema(), payload.get("user"))
        _done(schema=schema)
    except BaseException as exc:
        _failed(error=_error(exc))
