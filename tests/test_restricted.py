"""Restricted mode (sandboxes/runtime/restricted.py): tool files under RestrictedPython's policy, in process and
in a real local-backend kernel."""

from __future__ import annotations

import asyncio
import json
import textwrap
import typing
from typing import Any

import httpx
import pytest

from sandboxes.runtime import restricted
from sandboxes.runtime.restricted import DEFAULT_ALLOWED_IMPORTS, RestrictedCompileError, load_module
from tests.conftest import run

TOOL = '''\
"""
title: Restricted demo
version: 0.1
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, Field, field_validator


class Unit(str, Enum):
    C = "celsius"
    F = "fahrenheit"


@dataclass
class Point:
    x: int
    y: int = 0


class Tools:
    class Valves(BaseModel):
        api_key: str = Field(default="", description="The API key")
        max_results: int = Field(default=3, ge=1, description="How many")

        @field_validator("api_key")
        @classmethod
        def strip(cls, v: str) -> str:
            return v.strip()

    class UserValves(BaseModel):
        units: Literal["metric", "imperial", "no preference"] = "metric"

    def __init__(self):
        self.valves = self.Valves()
        self.calls = 0
        self._cache: Dict[str, int] = {}

    def _words(self, text: str) -> List[str]:
        return re.findall(r"\\w+", text)

    def count_words(self, text: str, minimum: Optional[int] = None, __user__: dict = {}) -> str:
        """
        Count the words of a text.
        :param text: The text.
        :param minimum: Only words at least this long.
        """
        self.calls += 1
        words = [w for w in self._words(text) if len(w) >= (minimum or 0)]
        self._cache[text] = len(words)
        counts = {}
        for word in words:
            counts[word] = counts.get(word, 0) + 1
        for word, n in sorted(counts.items()):
            counts[word] = n
        name = __user__.get("name", "nobody")
        print("counted", len(words), "for", name)
        return "{0} words for {1}; top: {top}".format(len(words), name, top=max(counts, key=counts.get))

    def settings(self) -> Dict[str, Any]:
        p = Point(1)
        p.y += 2
        return {"key_set": bool(self.valves.api_key), "max": self.valves.max_results, "unit": Unit.C.value,
                "point": [p.x, p.y], "year": datetime(2024, 1, 1, tzinfo=timezone.utc).year, "calls": self.calls}

    async def slow_echo(self, text: str, __event_emitter__=None, __user__: dict = {}) -> str:
        """Echo, reporting progress."""
        if __event_emitter__:
            await __event_emitter__({"type": "status", "data": {"description": f"echo {text}", "done": False}})
        units = __user__["valves"].units if "valves" in __user__ else "?"
        async for i, part in _parts(text):
            if __event_emitter__:
                await __event_emitter__({"type": "message", "data": {"content": f"{i}:{part}"}})
        return json.dumps({"text": text, "units": units})


async def _parts(text):
    for i, part in enumerate(text.split()):
        yield i, part
'''


def load(source: str, allowed: typing.Iterable[str] = DEFAULT_ALLOWED_IMPORTS) -> dict[str, Any]:
    return load_module(textwrap.dedent(source), "tool_test_restricted", "/tmp/tool_test_restricted.py", allowed)


def test_a_normal_tool_file_loads_and_works(capsys: pytest.CaptureFixture[str]) -> None:
    ns = load(TOOL)
    tools = ns["Tools"]()
    out = tools.count_words("the cat saw the dog", __user__={"name": "Ann"})
    assert out == "5 words for Ann; top: the"
    assert "counted 5 for Ann" in capsys.readouterr().out
    assert tools.count_words("a bb ccc", minimum=2).startswith("2 words for nobody")
    assert tools._cache == {"the cat saw the dog": 5, "a bb ccc": 2}

    # What the tool host does: set valves from outside, read the schemas, resolve the hints of a function.
    tools.valves = tools.Valves(api_key="  k  ", max_results=5)
    assert tools.valves.api_key == "k"
    assert tools.settings() == {"key_set": True, "max": 5, "unit": "celsius", "point": [1, 2], "year": 2024,
                                "calls": 2}  # fmt: skip
    schema = tools.Valves.model_json_schema()
    assert schema["properties"]["max_results"] == {
        "default": 3, "description": "How many", "minimum": 1, "title": "Max Results", "type": "integer"
    }  # fmt: skip
    assert tools.UserValves.model_json_schema()["properties"]["units"]["enum"] == [
        "metric",
        "imperial",
        "no preference",
    ]
    hints = typing.get_type_hints(tools.count_words)
    assert hints["text"] is str and hints["minimum"] == int | None and hints["return"] is str

    events: list[dict[str, Any]] = []

    async def emit(event: dict[str, Any]) -> None:
        events.append(event)

    user = {"name": "Ann", "valves": tools.UserValves(units="imperial")}
    result = asyncio.run(tools.slow_echo("hello big world", __event_emitter__=emit, __user__=user))
    assert json.loads(result) == {"text": "hello big world", "units": "imperial"}
    assert [e["type"] for e in events] == ["status", "message", "message", "message"]
    assert events[-1]["data"]["content"] == "2:world"


def test_attribute_writes_on_the_tools_own_objects_work_and_on_others_are_refused() -> None:
    ns = load(
        """
        import json
        class Box:
            pass
        box = Box()
        box.label = "a"
        setattr(box, "size", 3)
        Box.kind = "box"
        data = {"a": [1]}
        data["b"] = 2
        data["a"][0] = 5

        def poke_module():
            json.dumps = None

        def poke_class():
            setattr(str, "upper", None)
        """
    )
    box = ns["box"]
    assert (box.label, box.size, ns["Box"].kind, ns["data"]) == ("a", 3, "box", {"a": [5], "b": 2})
    with pytest.raises(TypeError, match="setting attribute 'dumps' on module 'json' is refused"):
        ns["poke_module"]()
    with pytest.raises(TypeError, match="setting attribute 'upper' on class 'str' is refused"):
        ns["poke_class"]()
    assert json.dumps is not None


# Each is refused: at compile time (RestrictedCompileError) or when it runs (the exception named).
REFUSED = {
    "subclasses": ("x = ().__class__.__subclasses__()", RestrictedCompileError, "__subclasses__"),
    "type_subclasses": ("x = type.__subclasses__(type)", RestrictedCompileError, "__subclasses__"),
    "globals": ("def f(): pass\nx = f.__globals__", RestrictedCompileError, "__globals__"),
    "getattr_globals": ("def f(): pass\nx = getattr(f, '__globals__')", AttributeError, "__globals__"),
    "getframe": ("import sys\nsys._getframe()", RestrictedCompileError, "'sys' is not allowed"),
    "import_os": ("import os", RestrictedCompileError, "'os' is not allowed"),
    "import_os_in_function": ("def f():\n    import os", RestrictedCompileError, "'os' is not allowed"),
    "from_os": ("from os import system", RestrictedCompileError, "'os' is not allowed"),
    "import_subprocess": ("import subprocess", RestrictedCompileError, "'subprocess' is not allowed"),
    "relative_import": ("from . import x", RestrictedCompileError, "relative imports"),
    "module_via_attribute": ("import typing\nx = typing.sys", AttributeError, "module 'sys'"),
    "module_via_from_import": ("from typing import sys", ImportError, "module 'sys'"),
    "module_write": ("import json\njson.dumps = None", TypeError, "on module 'json' is refused"),
    "module_setattr": ("import json\nsetattr(json, 'loads', None)", TypeError, "on module 'json' is refused"),
    "dunder_setattr": ("class A:\n    pass\nsetattr(A(), '__class__', int)", AttributeError, "__class__"),
    "library_private": ("import json\nx = json._default_encoder", AttributeError, "_default_encoder"),
    "gi_frame": ("def g():\n    yield 1\nx = g().gi_frame", RestrictedCompileError, "gi_frame"),
    "getattr_gi_frame": ("def g():\n    yield 1\nx = getattr(g(), 'gi_frame')", AttributeError, "gi_frame"),
    "cr_frame": (
        "async def c():\n    pass\nco = c()\ntry:\n    x = getattr(co, 'cr_frame')\nfinally:\n    co.close()",
        AttributeError,
        "cr_frame",
    ),
    "format_attribute": ("def f(): pass\nx = '{0.__class__}'.format(f)", AttributeError, "__class__"),
    "format_globals": ("def f(): pass\nx = '{0.__globals__[x]}'.format(f)", AttributeError, "__globals__"),
    "format_map": ("def f(): pass\nx = '{f.__globals__}'.format_map({'f': f})", AttributeError, "__globals__"),
    "fstring": ("def f(): pass\nx = f'{f.__globals__}'", RestrictedCompileError, "__globals__"),
    "formatter": ("from string import Formatter", ImportError, "not safe"),
    "string_annotation": ("def f(x: '().__class__'): pass", RestrictedCompileError, "string annotation"),
    "built_annotation": ("s = '()' + '.__class__'\ndef f(x: s): pass", TypeError, "string annotation"),
    "built_forward_ref": ("from typing import List\ns = 'typing' + '.sys'\nx = List[s]", TypeError, "forward ref"),
    "create_model_string": (
        "import pydantic\nM = pydantic.create_model('M', a=('typing' + '.sys', ...))",
        TypeError,
        "forward reference",
    ),
    "import_string": ("from pydantic import ImportString", ImportError, "ImportString"),
    "pydantic_v1": ("import pydantic.v1", RestrictedCompileError, "'pydantic.v1' is not allowed"),
    "asyncio_subprocess": ("import asyncio\nx = asyncio.create_subprocess_exec", AttributeError, "asyncio.subprocess"),
    "asyncio_from_subprocess": ("from asyncio import create_subprocess_shell", ImportError, "asyncio.subprocess"),
    "asyncio_streams": ("import asyncio\nx = asyncio.open_connection", AttributeError, "asyncio.streams"),
    "asyncio_loop_class": ("import asyncio\nx = asyncio.AbstractEventLoop.subprocess_exec", AttributeError, "loop"),
    "asyncio_loop": (
        "import asyncio\nloop = asyncio.new_event_loop()\ntry:\n    x = loop.subprocess_shell\n"
        "finally:\n    loop.close()",
        AttributeError,
        "the event loop's 'subprocess_shell' is refused",
    ),
    "eval": ("eval('1')", RestrictedCompileError, "Eval calls"),
    "exec": ("exec('1')", RestrictedCompileError, "Exec calls"),
    "open": ("open('/etc/passwd')", NameError, "open"),
    "type": ("x = type(1)", NameError, "type"),
    "metaclass_keyword": ("class A(metaclass=object):\n    pass", RestrictedCompileError, "metaclass"),
    "guard_shadowing": ("_getattr_ = getattr", RestrictedCompileError, "_getattr_"),
    "builtins_name": ("x = __builtins__", RestrictedCompileError, "__builtins__"),
    "try_star": ("try:\n    pass\nexcept* ValueError:\n    pass", RestrictedCompileError, "TryStar"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_escapes_are_refused(case: str) -> None:
    source, error, text = REFUSED[case]
    with pytest.raises(error) as info:
        load(source)
    assert text in (info.value.message if isinstance(info.value, RestrictedCompileError) else str(info.value))


def test_allowed_modules_still_do_not_hand_out_what_comes_from_elsewhere() -> None:
    # logging.currentframe is sys._getframe's wrapper; logging.config.dictConfig calls callables named by strings.
    allowed = [*DEFAULT_ALLOWED_IMPORTS, "logging"]
    ns = load("import logging\nlog = logging.getLogger(__name__)\nname = log.name", allowed)
    assert ns["name"] == "tool_test_restricted"
    with pytest.raises(RestrictedCompileError, match=r"'logging\.config' is not allowed"):
        load("import logging.config", allowed)
    with pytest.raises(RestrictedCompileError, match="'json' is not allowed"):
        load("import json", ["math"])
    # A dotted entry allows that package only.
    ns = load("import urllib.parse\nq = urllib.parse.quote('a b')", ["urllib.parse"])
    assert ns["q"] == "a%20b"
    with pytest.raises(RestrictedCompileError, match=r"'urllib\.request' is not allowed"):
        load("import urllib.request", ["urllib.parse"])


def test_the_import_hook_refuses_what_the_allow_list_does_not_name() -> None:
    """Behind the compile-time check, __import__ itself refuses (the name is on the ImportError)."""
    policy = restricted._Policy(["math", "urllib.parse"])
    assert policy.import_("math").__name__ == "math"
    for name, level in (("os", 0), ("urllib.request", 0), ("math", 1)):
        with pytest.raises(ImportError) as info:
            policy.import_(name, level=level)
        assert info.value.name == name


def test_compile_errors_carry_the_offending_lines() -> None:
    source = """\
import json

class Tools:
    def leak(self):
        return self.__class__.__mro__

    def frames(self, g):
        return g.gi_frame
"""
    with pytest.raises(RestrictedCompileError) as info:
        load(source)
    assert info.value.lines == ["line 5: return self.__class__.__mro__", "line 8: return g.gi_frame"]
    assert "Line 5:" in info.value.message and "Line 8:" in info.value.message
    with pytest.raises(RestrictedCompileError) as info:
        load("def broken(:\n    pass\n")
    assert info.value.lines == ["line 1: def broken(:"] and "SyntaxError" in info.value.message
    with pytest.raises(RestrictedCompileError) as info:
        load("import json\n\ndef run():\n    import subprocess\n    return subprocess\n")
    assert info.value.lines == ["line 4: import subprocess"]


def test_forms_the_policy_adds_to_restrictedpython() -> None:
    ns = load(
        """
        def counter():
            n = 0
            def bump():
                nonlocal n
                n += 1
                return n
            return bump

        class Acc:
            def __init__(self):
                self.items = {"a": 1}
            def __len__(self):
                return len(self.items)
            def __repr__(self):
                return "Acc({})".format(len(self))
            def add(self, k):
                items = self.items
                items[k] = items.get(k, 0) + 1
                items["a"] += 10

        class Ctx:
            async def __aenter__(self):
                return (1, 2)
            async def __aexit__(self, *exc):
                return False

        async def use():
            async with Ctx() as (a, b):
                return a + b

        bump = counter()
        bump()
        acc = Acc()
        acc.add("b")
        """
    )
    assert ns["bump"]() == 2
    assert repr(ns["acc"]) == "Acc(2)" and ns["acc"].items == {"a": 11, "b": 1}
    assert asyncio.run(ns["use"]()) == 3


def test_asyncio_works_without_its_process_and_socket_parts() -> None:
    ns = load(
        """
        import asyncio
        async def run():
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 5)
            task = asyncio.create_task(asyncio.sleep(0, result=1))
            queue = asyncio.Queue()
            await queue.put(2)
            async with asyncio.Lock():
                pass
            total = await asyncio.to_thread(sum, [1, 1])
            return await asyncio.wait_for(fut, 5) + await task + await queue.get() + total
        """
    )
    assert asyncio.run(ns["run"]()) == 10


def test_class_statements_build_with_the_metaclass_their_bases_need() -> None:
    ns = load(
        """
        from enum import Enum, auto
        from typing import NamedTuple, TypedDict
        class Color(Enum):
            RED = auto()
            BLUE = auto()
        class Pair(NamedTuple):
            a: int
            b: str = "x"
        class Movie(TypedDict):
            title: str
        names = [c.name for c in Color]
        """
    )
    assert ns["names"] == ["RED", "BLUE"]
    assert ns["Pair"](1) == (1, "x")
    assert typing.get_type_hints(ns["Movie"]) == {"title": str}
    assert restricted._owned(ns["Color"].RED)


async def test_restricted_python_is_importable_in_a_real_kernel(client: httpx.AsyncClient, session: dict) -> None:
    """The local backend's kernel (jailed: sandbox_runtime; unjailed: sandboxes.runtime) loads a restricted module."""
    source = 'class Tools:\n    def add(self, a: int, b: int) -> int:\n        """Add."""\n        return a + b\n'
    code = textwrap.dedent(
        f"""
        import importlib
        try:
            r = importlib.import_module("sandbox_runtime.restricted")
        except ImportError:
            r = importlib.import_module("sandboxes.runtime.restricted")
        ns = r.load_module({source!r}, "tool_k", "/tmp/tool_k.py", r.DEFAULT_ALLOWED_IMPORTS)
        print("sum", ns["Tools"]().add(2, 3))
        try:
            r.load_module("import os", "tool_k2", "/tmp/tool_k2.py", r.DEFAULT_ALLOWED_IMPORTS)
        except r.RestrictedCompileError as e:
            print("refused", e.lines)
        """
    )
    result = await run(client, session["id"], code)
    assert result["status"] == "ok", result
    assert "sum 5" in result["stdout"] and "refused ['line 1: import os']" in result["stdout"], result["stdout"]
