"""Restricted mode for tool files: RestrictedPython's policy, inside the sandbox, as defence in depth.

This narrows what a tool file can reach *inside its own sandbox* (no ``__globals__``/``__subclasses__``, no frame
walking, only the imports the admin allows, no writes to modules or library classes). It is not an isolation
boundary: the sandbox (jail or container) is. A bug in RestrictedPython, in this file or in an allowed library gives
code the sandbox's powers, never more.

``load_module(source, module_name, filename, allowed_imports)`` compiles the file with ``compile_restricted_exec``
under :class:`ToolPolicy` (RestrictedPython's ``RestrictingNodeTransformer`` with the additions below) and executes it
into a fresh module namespace whose builtins are a restricted set; it returns the namespace. Code the policy refuses
raises :class:`RestrictedCompileError` with the offending source lines.

What RestrictedPython 9.0 refuses, and what this policy does about it (for Open WebUI tool files):

* ``x: int = 1`` (``AnnAssign``): no visitor upstream, so refused; allowed here (pydantic ``Valves`` need it), with
  the target and value guarded as usual.
* ``async def``, ``await``, ``async for``, ``async with``: refused upstream; allowed here with the same checks as
  their sync forms (coroutine/generator frames stay unreachable: ``cr_frame``, ``gi_frame``... are refused names).
  ``async for a, b in x`` unpacks through the guarded unpacker inside the loop body.
* Names starting with ``_``: refused upstream. Allowed here: Open WebUI's injected parameters (``__user__``,
  ``__event_emitter__``... see ``INJECTED_NAMES``), reading ``__name__``/``__file__``/``__doc__``, and one-underscore
  "private" names (``_helper``, ``self._cache``) that do not end with ``_`` (the guards are named ``_x_``). A private
  attribute is readable only on the tool's own objects (a class the file defined, or its instance) and only when the
  attribute lives there (not inherited from a library class). Dunder attributes stay refused everywhere.
* Magic methods: ``__init__``, comparisons and ``__contains__`` upstream; here also ``__repr__``, ``__str__``,
  ``__len__``, ``__bool__``, ``__hash__``, ``__iter__``, ``__next__``, ``__getitem__``, ``__call__``, ``__enter__``,
  ``__exit__``, ``__aenter__``, ``__aexit__``, ``__post_init__`` (their bodies are restricted code too).
* ``self.n += 1`` / ``d[k] += 1``: refused upstream; allowed here when the object is a plain name (and the key a name
  or a constant), so evaluating it twice changes nothing. Other augmented targets stay refused.
* ``nonlocal``: refused upstream; allowed here (names checked).
* ``from __future__ import annotations`` is dropped: annotations are evaluated when defined, under the policy.
  (Deferred string annotations would be ``eval``-ed later by ``typing``/pydantic outside the policy.) A forward
  reference to a name defined later must then be quoted.
* String annotations (``x: "Foo"``, ``Optional["Foo"]``) are evaluated by ``typing``/pydantic with a plain ``eval``:
  every such string must be names, subscripts, ``|`` and constants only (no attribute access, calls or ``_``
  names). Literal strings in the source are checked at compile time; strings built at run time are checked when
  they become an annotation (``_annotation_``) or a ``typing.ForwardRef`` created while tool code is on the stack
  (a process-wide check installed on first use: only restricted kernels load this file).
* Refused as upstream: ``match``, ``try/except*``, ``exec``/``eval``, ``print``'s ``printed``, ``*`` imports, relative
  imports, class keywords ``metaclass=``, ``super().__init__()`` (a dunder attribute), ``type(...)``, ``vars``,
  ``dir``, ``globals``, ``open``, ``input``, ``compile``.
* ``str.format``/``format_map`` work through a formatter whose field lookups (``{0.attr}``, ``{0[key]}``) go through
  the same guarded getattr, so ``'{0.__class__}'.format(x)`` is refused; f-strings are checked at compile time.
* ``print`` writes to the kernel's stdout (the tool host streams it).

Tool classes and pydantic models: every class statement in the file goes through ``__metaclass__`` (RestrictedPython
rewrites ``class X(...)`` to ``class X(..., metaclass=__metaclass__)``), which builds the class with the metaclass
its bases call for (so pydantic's ``ModelMetaclass`` and ``Enum``'s ``__prepare__`` work) and records it as the
tool's own. Attribute writes (``self.valves = self.Valves()``, ``setattr``) succeed on the tool's own classes and
their instances (a ``Valves(BaseModel)`` instance included: pydantic's own validation applies); item writes succeed
on anything but modules and classes; attribute writes on modules, library classes, functions and library objects
are refused with a TypeError. RestrictedPython's ``full_write_guard`` would refuse ``self.valves = ...`` (it only
lets dicts and lists through), hence this guard.

Imports: ``__import__`` allows a module when its name, or a parent package of it, is in the allow-list (entries may
be dotted: ``urllib.parse``), and refuses everything else with an ImportError naming the module. Modules reached as
attributes (``typing.sys``) or by ``from x import y`` pass the same check, and so does anything taken from a module
whose home module is not allowed (``logging.currentframe`` is ``sys._getframe``'s wrapper, from ``logging``; a
function from ``posix`` reached through an allowed module is refused). Import statements the allow-list refuses are
compile errors (with their lines), wherever they are in the file. pydantic's ``ImportString`` and ``pydantic.v1``
(which import by name) and ``logging.config`` are refused. ``asyncio`` is allowed without its subprocess and streams
modules, and an event loop offers only ``_LOOP_METHODS`` (no ``subprocess_exec``, ``create_connection``,
``add_reader``...). Frames, tracebacks and code objects are never handed out by an attribute lookup.

Known limits (why this is defence in depth only): what an allowed library does on tool code's behalf is not
policed (a library that formats a user-given template with ``str.format``, e.g. ``logging.Formatter(style="{")``,
can walk attributes; an allowed module's functions return whatever they return); the allow-list is by module, and
an admin who adds ``os``, ``sys``, ``inspect``, ``operator``, ``ctypes`` or ``importlib`` gives the policy away;
strings inside ``Literal[...]`` that are themselves expressions with calls or ``_`` names (``Literal["f()"]``) are
refused as annotations although harmless; RestrictedPython is only reviewed for CPython.
"""

from __future__ import annotations

import _string  # str.format's own field-name parser
import ast
import builtins
import copy
import functools
import operator
import re
import string
import sys
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
    safer_getattr_raise,
)
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer, copy_locations

__all__ = [
    "DEFAULT_ALLOWED_IMPORTS",
    "INJECTED_NAMES",
    "RestrictedCompileError",
    "ToolPolicy",
    "load_module",
]

# Top-level modules (or dotted packages) a restricted tool may import unless the admin says otherwise. Left out on
# purpose: os, sys, subprocess, socket, io, pathlib, shutil, importlib, inspect, ctypes, pickle, marshal, types,
# gc, threading, builtins (direct powers); logging
# (logging.config.dictConfig imports and calls any callable by name); operator (attrgetter walks any attribute);
# urllib.request, http, requests, httpx, aiohttp (network: the admin adds them for tools that need it).
DEFAULT_ALLOWED_IMPORTS: tuple[str, ...] = (
    "abc",
    "asyncio",
    "base64",
    "calendar",
    "collections",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "hmac",
    "html",
    "itertools",
    "json",
    "math",
    "numbers",
    "pydantic",
    "pydantic_core",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "time",
    "typing",
    "typing_extensions",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "zoneinfo",
)

# Never importable or reachable, whatever the allow-list says: they import or call things by name (pydantic.v1's
# PyObject, logging.config.dictConfig), or start processes and open sockets (asyncio's subprocess and streams; the
# event loop's own methods for those are refused by _LOOP_METHODS).
_DENIED_MODULES: tuple[str, ...] = (
    "pydantic.v1",
    "logging.config",
    "asyncio.subprocess",
    "asyncio.base_subprocess",
    "asyncio.streams",
    "asyncio.unix_events",
    "asyncio.windows_events",
)
# What tool code may use on an asyncio event loop (subprocess_exec, create_connection, add_reader... are not here).
_LOOP_METHODS = frozenset(
    {
        "call_at",
        "call_later",
        "call_soon",
        "call_soon_threadsafe",
        "close",
        "create_future",
        "create_task",
        "get_debug",
        "is_closed",
        "is_running",
        "run_forever",
        "run_in_executor",
        "run_until_complete",
        "shutdown_asyncgens",
        "shutdown_default_executor",
        "stop",
        "time",
    }
)

# The parameters Open WebUI injects into tool functions (and the tool host may inject): plain local names, no guard
# is called like that, so tool code may bind and read them.
INJECTED_NAMES: frozenset[str] = frozenset(
    {
        "__user__",
        "__id__",
        "__metadata__",
        "__messages__",
        "__files__",
        "__model__",
        "__chat_id__",
        "__message_id__",
        "__session_id__",
        "__event_emitter__",
        "__event_call__",
        "__oauth_token__",
        "__request__",
        "__tools__",
        "__task__",
        "__task_body__",
    }
)
_READABLE_DUNDERS = frozenset({"__name__", "__file__", "__doc__"})
_MAGIC_METHODS = frozenset(
    {
        "__init__",
        "__contains__",
        "__lt__",
        "__le__",
        "__eq__",
        "__ne__",
        "__gt__",
        "__ge__",
        "__repr__",
        "__str__",
        "__len__",
        "__bool__",
        "__hash__",
        "__iter__",
        "__next__",
        "__getitem__",
        "__call__",
        "__enter__",
        "__exit__",
        "__aenter__",
        "__aexit__",
        "__post_init__",
    }
)
_TMP_NAME = re.compile(r"_tmp\d*")
_LINE = re.compile(r"^Line (\d+):")

# Marks the builtins dict of a restricted namespace, so a frame running tool code can be recognised.
_MARK_KEY = "__executor_restricted__"
_MARK = object()

# Every class a restricted file defined (through __metaclass__): the tool's own objects.
_OWNED: weakref.WeakSet[type] = weakref.WeakSet()


class RestrictedCompileError(Exception):
    """The tool file does not compile under the restricted policy; ``lines`` are ``"line N: <code>"``."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.lines = lines


# ------------------------------------------------------------------------------------------------ compile time


def _is_private_name(name: str) -> bool:
    """``_helper`` yes; ``__x``, ``_x_`` (the guards' shape), ``_print`` and ``_tmpN`` (the transformer's) no."""
    return (
        name.startswith("_")
        and not name.startswith("__")
        and not name.endswith("_")
        and name != "_print"
        and not _TMP_NAME.fullmatch(name)
    )


def _forward_ref_problem(text: str) -> str | None:
    """Why a string that ``typing``/pydantic would ``eval`` as an annotation is refused, or None.

    Only names, subscripts, tuples/lists, ``|`` and constants (nested strings checked the same way): with no
    attribute access and no calls, a plain ``eval`` of it can do no more than look names up in the tool's namespace.
    A string that is not an expression is left alone (``eval`` fails on it too: ``Literal["a b"]``).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                return f"name {node.id!r} starts with '_'"
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                inner = _forward_ref_problem(node.value)
                if inner:
                    return inner
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.BitOr):
                return f"operator {type(node.op).__name__} in a string annotation"
        elif not isinstance(node, ast.Expression | ast.Subscript | ast.Tuple | ast.List | ast.Load | ast.BitOr):
            return f"{type(node).__name__} in a string annotation (only names, subscripts, '|' and constants)"
    return None


def _is_literal(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Literal") or (
        isinstance(node, ast.Attribute) and node.attr == "Literal"
    )


def _annotation_strings(node: ast.expr) -> Iterator[ast.Constant]:
    """String constants in an annotation, except inside ``Literal[...]`` (no forward references there; an alias
    trick such as ``Literal = Optional`` is caught at run time by the ForwardRef check)."""
    if isinstance(node, ast.Subscript) and _is_literal(node.value):
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
        return
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            yield from _annotation_strings(child)


class ToolPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy, opened up for the forms Open WebUI tool files use (see the module docstring)."""

    # -- names

    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        if name is not None:
            if name in INJECTED_NAMES or _is_private_name(name):
                return
            if allow_magic_methods and name in _MAGIC_METHODS and node.col_offset != 0:
                return
        super().check_name(node, name, allow_magic_methods)

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id == "printed":
            self.error(node, '"printed" is not supported in restricted mode (print writes to stdout).')
            return node
        if isinstance(node.ctx, ast.Load) and node.id in _READABLE_DUNDERS:
            return node
        return super().visit_Name(node)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        # Upstream refuses every "_x" attribute at compile time; one-underscore ones are decided at run time
        # (the tool's own objects only), dunders stay refused here.
        if _is_private_name(node.attr) and node.attr not in INSPECT_ATTRIBUTES:
            node = self.node_contents_visit(node)
            if isinstance(node.ctx, ast.Load):
                new_node = ast.Call(
                    func=ast.Name("_getattr_", ast.Load()), args=[node.value, ast.Constant(node.attr)], keywords=[]
                )
                copy_locations(new_node, node)
                return new_node
            new_value = ast.Call(func=ast.Name("_write_", ast.Load()), args=[node.value], keywords=[])
            copy_locations(new_value, node.value)
            node.value = new_value
            return node
        return super().visit_Attribute(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        # Upstream rebuilds the class node from text (to add metaclass=__metaclass__) with line 1: tracebacks
        # from a class body would point at the file's first line.
        new_node = super().visit_ClassDef(node)
        if isinstance(new_node, ast.ClassDef):
            for kw in new_node.keywords:
                for sub in ast.walk(kw):
                    if "lineno" in sub._attributes:
                        copy_locations(sub, node)  # type: ignore[arg-type]
            copy_locations(new_node, node)
        return new_node

    def visit_Nonlocal(self, node: ast.Nonlocal) -> Any:
        for name in node.names:
            self.check_name(node, name)
        return node

    # -- module: drop deferred annotations, check string annotations before anything is rewritten

    def visit_Module(self, node: ast.Module) -> Any:
        body: list[ast.stmt] = []
        for stmt in node.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                stmt.names = [alias for alias in stmt.names if alias.name != "annotations"]
                if not stmt.names:
                    continue
            body.append(stmt)
        node.body = body
        for sub in ast.walk(node):
            annotations: list[ast.expr | None] = []
            if isinstance(sub, ast.arg):
                annotations.append(sub.annotation)
            elif isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                annotations.append(sub.returns)
            elif isinstance(sub, ast.AnnAssign):
                annotations.append(sub.annotation)
            for ann in annotations:
                if ann is None:
                    continue
                for const in _annotation_strings(ann):
                    problem = _forward_ref_problem(str(const.value))
                    if problem:
                        self.error(const, f"string annotation {const.value!r} is refused: {problem}.")
        return super().visit_Module(node)

    # -- annotations are evaluated through _annotation_ (a string built at run time is checked there)

    def _guard_annotation(self, ann: ast.expr | None) -> ast.expr | None:
        if ann is None:
            return None
        visited = self.visit(ann)
        call = ast.Call(func=ast.Name("_annotation_", ast.Load()), args=[visited], keywords=[])
        copy_locations(call, ann)
        return call

    def visit_arg(self, node: ast.arg) -> Any:
        node.annotation = self._guard_annotation(node.annotation)
        return node

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> Any:
        self.check_name(node, node.name, allow_magic_methods=True)
        self.check_function_argument_names(node)
        returns = node.returns
        node.returns = None
        with self.print_info.new_print_scope():
            node = self.node_contents_visit(node)
            self.inject_print_collector(node)  # type: ignore[arg-type]
        node.returns = self._guard_annotation(returns)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        return self._visit_function(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        node.target = self.visit(node.target)
        node.annotation = self._guard_annotation(node.annotation)  # type: ignore[assignment]
        if node.value is not None:
            node.value = self.visit(node.value)
        if not isinstance(node.target, ast.Name):
            node.simple = 0
        return node

    # -- async forms, checked as their sync counterparts

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
        return self._visit_function(node)

    def visit_Await(self, node: ast.Await) -> Any:
        return self.node_contents_visit(node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> Any:
        node = self.node_contents_visit(node)
        for item in reversed(node.items):
            if isinstance(item.optional_vars, ast.Tuple):
                tmp_target, unpack = self.gen_unpack_wrapper(node, item.optional_vars)
                item.optional_vars = tmp_target
                node.body.insert(0, unpack)
        return node

    def visit_AsyncFor(self, node: ast.AsyncFor) -> Any:
        # An async iterator cannot go through _getiter_ (iter()); tuple targets unpack through the guard in the body.
        node = self.node_contents_visit(node)
        if isinstance(node.target, ast.Tuple):
            tmp_target, unpack = self.gen_unpack_wrapper(node, node.target)
            node.target = tmp_target
            node.body.insert(0, unpack)
        return node

    # -- augmented assignment on attributes/items of a plain name

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        target = node.target
        simple_attr = isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
        simple_item = (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and isinstance(target.slice, ast.Name | ast.Constant)
        )
        if not (simple_attr or simple_item):
            return super().visit_AugAssign(node)
        load = copy.deepcopy(target)
        load.ctx = ast.Load()
        op = {ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/=", ast.Mod: "%=", ast.Pow: "**=",
              ast.LShift: "<<=", ast.RShift: ">>=", ast.BitOr: "|=", ast.BitXor: "^=", ast.BitAnd: "&=",
              ast.FloorDiv: "//=", ast.MatMult: "@="}[type(node.op)]  # fmt: skip
        new_node = ast.Assign(
            targets=[self.visit(target)],
            value=ast.Call(
                func=ast.Name("_inplacevar_", ast.Load()),
                args=[ast.Constant(op), self.visit(load), self.visit(node.value)],
                keywords=[],
            ),
        )
        copy_locations(new_node, node)
        return new_node


def _import_errors(tree: ast.Module, allowed: _Policy) -> list[str]:
    """Import statements the allow-list refuses, as compile errors (so a file that imports ``os`` inside a function
    is refused at registration with its line, not at its first call). ``__import__`` checks the same at run time."""
    errors: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                errors.append(f"Line {node.lineno}: relative imports are not allowed in restricted mode.")
                continue
            if node.module == "__future__":
                continue
            names = [node.module or ""]
        for name in names:
            if not allowed.module_allowed(name):
                errors.append(f"Line {node.lineno}: {allowed.refusal(name)}.")
    return errors


def _compile(source: str, filename: str, policy: _Policy) -> types.CodeType:
    """RestrictedPython's compile_restricted_exec, step by step, with ``dont_inherit=True``.

    RestrictedPython 9.0's compile() call inherits the future flags of its own module, which has
    ``from __future__ import annotations``: every restricted file would get deferred (string) annotations, which
    typing/pydantic then eval outside the policy.
    """
    errors: list[str] = []
    warnings: list[str] = []
    code: types.CodeType | None = None
    try:
        tree = ast.parse(source, filename, "exec")
    except SyntaxError as e:
        text = e.text.strip() if e.text else None
        errors.append(f"Line {e.lineno}: {type(e).__name__}: {e.msg} at statement: {text!r}")
    else:
        errors.extend(_import_errors(tree, policy))
        ToolPolicy(errors, warnings, {}).visit(tree)
        if not errors:
            code = compile(tree, filename, "exec", dont_inherit=True)
    if errors or code is None:
        src_lines = source.splitlines()
        lines: list[str] = []
        for err in errors:
            m = _LINE.match(err)
            if not m:
                continue
            n = int(m.group(1))
            text = src_lines[n - 1].strip() if 0 < n <= len(src_lines) else ""
            line = f"line {n}: {text}"
            if line not in lines:
                lines.append(line)
        errors = errors or ["the restricted compiler produced no code"]
        message = "the file does not compile under the restricted policy:\n" + "\n".join(errors)
        raise RestrictedCompileError(message, lines)
    return code


# ------------------------------------------------------------------------------------------------ run time


def _owned_class(cls: type) -> bool:
    return any(k in _OWNED for k in cls.__mro__)


def _owned(ob: object) -> bool:
    """A class the restricted file defined (or derived from one), or an instance of one."""
    return _owned_class(ob) if isinstance(ob, type) else _owned_class(type(ob))


def _own_private(ob: object, name: str) -> bool:
    """A one-underscore attribute that lives on the tool's own object (not one inherited from a library class)."""
    if not _owned(ob):
        return False
    if not isinstance(ob, type):
        inst = getattr(ob, "__dict__", None)
        if isinstance(inst, dict) and name in inst:
            return True
    cls = ob if isinstance(ob, type) else type(ob)
    return any(k in _OWNED and name in vars(k) for k in cls.__mro__)


def _is_event_loop(ob: object) -> bool:
    """An asyncio event loop, a loop class, or super() of one (asyncio is looked up only if already imported)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return False
    loop_cls: type = aio.AbstractEventLoop
    if isinstance(ob, super):
        ob = getattr(ob, "__self_class__", None)
    return isinstance(ob, loop_cls) or (isinstance(ob, type) and issubclass(ob, loop_cls))


def _describe(ob: object) -> str:
    if isinstance(ob, types.ModuleType):
        return f"module {ob.__name__!r}"
    if isinstance(ob, type):
        return f"class {ob.__qualname__!r}"
    return f"a {type(ob).__qualname__} object"


class _MetaclassRecorder:
    """``__metaclass__`` of restricted class statements: the metaclass the bases call for, and a record."""

    @staticmethod
    def _meta(bases: tuple[Any, ...]) -> type:
        winner: type = type
        for base in bases:
            meta = type(base)
            if issubclass(winner, meta):
                continue
            if issubclass(meta, winner):
                winner = meta
                continue
            raise TypeError("metaclass conflict: the bases' metaclasses are unrelated")
        return winner

    def __prepare__(self, name: str, bases: tuple[Any, ...], **kwds: Any) -> Any:
        return self._meta(bases).__prepare__(name, bases, **kwds)

    def __call__(self, name: str, bases: tuple[Any, ...], namespace: dict[str, Any], **kwds: Any) -> type:
        cls: type = self._meta(bases)(name, bases, namespace, **kwds)
        _OWNED.add(cls)
        return cls


class _WriteRefused:
    """What ``_write_`` hands back for objects the tool may not change attributes of: item writes pass through
    (except on modules and classes), attribute writes raise."""

    __slots__ = ("_ob",)
    _ob: Any

    def __init__(self, ob: object) -> None:
        object.__setattr__(self, "_ob", ob)

    def _refuse(self, what: str) -> TypeError:
        return TypeError(
            f"restricted mode: {what} on {_describe(self._ob)} is refused "
            "(only the tool's own classes and their instances can be changed)"
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise self._refuse(f"setting attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        raise self._refuse(f"deleting attribute {name!r}")

    def __setitem__(self, key: object, value: object) -> None:
        if isinstance(self._ob, type | types.ModuleType):
            raise self._refuse("item assignment")
        self._ob[key] = value

    def __delitem__(self, key: object) -> None:
        if isinstance(self._ob, type | types.ModuleType):
            raise self._refuse("item deletion")
        del self._ob[key]


def _write_(ob: object) -> object:
    if type(ob) in (dict, list) or _owned(ob):
        return ob
    return _WriteRefused(ob)


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "//=": operator.ifloordiv,
    "@=": operator.imatmul,
}


def _inplacevar_(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


def _apply_(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return f(*args, **kwargs)


def _getitem_(ob: Any, index: Any) -> Any:
    return ob[index]


def _annotation_(value: Any) -> Any:
    """Every annotation in a restricted file is evaluated through this: a string is checked as a forward reference."""
    if isinstance(value, str):
        problem = _forward_ref_problem(value)
        if problem:
            raise TypeError(f"restricted mode: string annotation {value!r} is refused: {problem}")
    return value


class _Print:
    """``print`` in restricted code: to the kernel's stdout, as the tool host expects."""

    def __init__(self, _getattr_: object = None) -> None:
        pass

    def _call_print(self, *objects: object, **kwargs: Any) -> None:
        if kwargs.get("file") is None:
            kwargs["file"] = sys.stdout
        print(*objects, **kwargs)


class _SafeFormatter(string.Formatter):
    """``str.format`` whose field lookups go through the guarded getattr (no ``{0.__class__}``)."""

    def __init__(self, getattr_: Callable[[Any, str], Any]) -> None:
        self._guarded_getattr = getattr_

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self._guarded_getattr(obj, key) if is_attr else obj[key]
        return obj, first


def _module_matches(name: str, entries: Iterable[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in entries)


class _Policy:
    """The run-time half for one load: the allow-list and the guards that consult it."""

    def __init__(self, allowed_imports: Iterable[str]) -> None:
        self.allowed = tuple(sorted({a.strip() for a in allowed_imports if a and a.strip()}))
        self.formatter = _SafeFormatter(self.getattr_)

    @staticmethod
    def denied(value: object) -> bool:
        """pydantic's ImportString imports and returns any object named by a string (looked up now: pydantic may
        have been imported after this policy was made)."""
        for mod_name in ("pydantic", "pydantic.types"):
            mod = sys.modules.get(mod_name)
            if mod is not None and value is mod.__dict__.get("ImportString", _MARK):
                return True
        return False

    def module_allowed(self, name: str) -> bool:
        if _module_matches(name, _DENIED_MODULES):
            return False
        return _module_matches(name, self.allowed)

    def refusal(self, name: str) -> str:
        return f"import of {name!r} is not allowed (allowed: {', '.join(self.allowed) or 'none'})"

    def _home_allowed(self, home: str) -> bool:
        # C accelerators live in "_name" modules (_json, _datetime, _hashlib, pydantic_core._pydantic_core).
        return home == "builtins" or self.module_allowed(home) or self.module_allowed(home.lstrip("_"))

    def check_value(self, source: object, name: str, value: Any) -> Any:
        """Refuse what an attribute lookup must not hand out: a module outside the allow-list, or (looked up on a
        module) a function/class/object whose home module is outside it."""
        if self.denied(value) or isinstance(value, types.FrameType | types.TracebackType | types.CodeType):
            raise AttributeError(f"restricted mode: {name!r} is refused")
        if isinstance(value, types.ModuleType):
            if not self.module_allowed(value.__name__):
                raise AttributeError(
                    f"restricted mode: module {value.__name__!r} (reached as {name!r}) is not in the import allow-list"
                )
            return value
        if isinstance(source, types.ModuleType):
            home = getattr(value, "__module__", None) if isinstance(value, type) or callable(value) else None
            if not isinstance(home, str):
                home = type(value).__module__
            if not self._home_allowed(home):
                raise AttributeError(
                    f"restricted mode: {source.__name__}.{name} comes from module {home!r}, "
                    "which is not in the import allow-list"
                )
        return value

    def getattr_(self, ob: Any, name: str) -> Any:
        """``_getattr_``: RestrictedPython's safer_getattr plus the tool's own private names, a safe str.format and
        the module checks."""
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if isinstance(ob, str) and name in ("format", "format_map"):
            if name == "format":
                return functools.partial(self.formatter.format, ob)
            return lambda mapping: self.formatter.vformat(ob, (), mapping)
        if _is_private_name(name) and name not in INSPECT_ATTRIBUTES:
            if not _own_private(ob, name):
                raise AttributeError(
                    f'"{name}" is refused: private attributes are readable only on the tool\'s own objects'
                )
            return getattr(ob, name)
        if _is_event_loop(ob) and name not in _LOOP_METHODS:
            raise AttributeError(f"restricted mode: the event loop's {name!r} is refused")
        value = safer_getattr_raise(ob, name)  # type: ignore[no-untyped-call]
        return self.check_value(ob, name, value)

    def getattr_builtin(self, ob: Any, name: str, *default: Any) -> Any:
        try:
            return self.getattr_(ob, name)
        except AttributeError:
            if default:
                return default[0]
            raise

    def hasattr_builtin(self, ob: Any, name: str) -> bool:
        try:
            self.getattr_(ob, name)
        except (AttributeError, NotImplementedError):
            return False
        return True

    @staticmethod
    def _check_write_name(name: object) -> str:
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if name.startswith("_") and not _is_private_name(name):
            raise AttributeError(f'restricted mode: writing "{name}" is refused')
        return name

    def setattr_builtin(self, ob: Any, name: str, value: Any) -> None:
        setattr(_write_(ob), self._check_write_name(name), value)

    def delattr_builtin(self, ob: Any, name: str) -> None:
        delattr(_write_(ob), self._check_write_name(name))

    def import_(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: tuple[str, ...] | list[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        """``__import__``: only the allow-list; ``from m import x`` goes through the guarded getattr."""
        if level != 0:
            raise ImportError(f"restricted mode: relative import of {name!r} is refused", name=name)
        if not self.module_allowed(name):
            raise ImportError(f"restricted mode: {self.refusal(name)}", name=name)
        module = builtins.__import__(name, None, None, fromlist or (), 0)
        if fromlist:
            leaf = sys.modules.get(name, module)
            for item in fromlist:
                if not hasattr(leaf, item):
                    continue  # the import statement raises its own ImportError
                try:
                    self.getattr_(leaf, item)
                except (AttributeError, NotImplementedError) as e:
                    raise ImportError(f"restricted mode: from {name} import {item}: {e}", name=name) from None
        return module

    def builtins(self) -> dict[str, Any]:
        b: dict[str, Any] = dict(safe_builtins)
        for name in (
            "dict", "list", "tuple", "set", "frozenset", "sorted", "reversed", "zip", "enumerate", "map", "filter",
            "sum", "min", "max", "all", "any", "iter", "next", "bytes", "bytearray", "format", "bin", "ascii",
            "object", "super", "classmethod", "staticmethod", "property", "NotImplemented", "range",
        ):  # fmt: skip
            # RestrictedPython leaves out the builtins that iterate in C past _getiter_: here _getiter_ is plain
            # iter() (no per-item security), so nothing is bypassed.
            b[name] = getattr(builtins, name)
        for name, value in vars(builtins).items():
            if isinstance(value, type) and issubclass(value, BaseException) and not name.startswith("_"):
                b[name] = value
        b.update(
            {
                "getattr": self.getattr_builtin,
                "hasattr": self.hasattr_builtin,
                "setattr": self.setattr_builtin,
                "delattr": self.delattr_builtin,
                "__import__": self.import_,
                "__build_class__": builtins.__build_class__,
                "__metaclass__": _MetaclassRecorder(),
                "_getattr_": self.getattr_,
                "_getitem_": _getitem_,
                "_getiter_": iter,
                "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
                "_unpack_sequence_": guarded_unpack_sequence,
                "_write_": _write_,
                "_inplacevar_": _inplacevar_,
                "_apply_": _apply_,
                "_print_": _Print,
                "_annotation_": _annotation_,
                _MARK_KEY: _MARK,
            }
        )
        return b


# ------------------------------------------------------------------------------------------------ ForwardRef check


def _restricted_on_stack() -> bool:
    """Tool code is the nearest caller that matters: a restricted frame up the stack, with no import in between
    (a library module executing because tool code imported it is library code, with its own forward refs)."""
    frame = sys._getframe(2)
    while frame is not None:
        b = frame.f_globals.get("__builtins__")
        if type(b) is dict and b.get(_MARK_KEY) is _MARK:
            return True
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return False
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _install_forward_ref_check() -> None:
    """typing.ForwardRef compiles a string that typing/pydantic later ``eval`` outside the policy: while restricted
    code is on the stack (a string it built or handed over), the string must pass the forward-reference check."""
    cls: Any = typing.ForwardRef
    if getattr(cls.__init__, "_executor_restricted", False):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, arg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(arg, str) and _restricted_on_stack():
            problem = _forward_ref_problem(arg)
            if problem:
                raise TypeError(f"restricted mode: forward reference {arg!r} is refused: {problem}")
        original(self, arg, *args, **kwargs)

    __init__._executor_restricted = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


# ------------------------------------------------------------------------------------------------ entry point


def load_module(source: str, module_name: str, filename: str, allowed_imports: Iterable[str]) -> dict[str, Any]:
    """Compile ``source`` under the restricted policy and execute it as module ``module_name``; return its namespace.

    Raises RestrictedCompileError for code the policy refuses (before anything runs); an exception raised by the
    module's own code propagates as it is. The module is in ``sys.modules`` while it executes (as Open WebUI does,
    so pydantic resolves the file's names) and removed afterwards.
    """
    policy = _Policy(allowed_imports)
    code = _compile(source, filename, policy)
    _install_forward_ref_check()
    module = types.ModuleType(module_name)
    namespace = module.__dict__
    namespace["__file__"] = filename
    namespace["__builtins__"] = policy.builtins()
    sys.modules[module_name] = module
    try:
        exec(code, namespace)
    finally:
        sys.modules.pop(module_name, None)
    return namespace
