"""Regenerate tool_specs.json and tool_results.json: Open WebUI 0.12.4's own answers for tool files.

Every expected value is produced by the published ``open-webui`` package's code, never by ours, and open-webui is
never a dependency of this project. How they were made (open-webui 0.12.4; the pins are the ones the wheel's
METADATA requires: langchain-core==1.4.8, pydantic==2.13.4, fastapi==0.136.3, requests==2.34.2, httpx==0.28.1):

    python3 -m venv /tmp/owui-tools-venv
    /tmp/owui-tools-venv/bin/pip install langchain-core==1.4.8 pydantic==2.13.4 fastapi==0.136.3 \\
        requests==2.34.2 httpx==0.28.1
    /tmp/owui-tools-venv/bin/pip download --no-deps open-webui==0.12.4 -d /tmp/owui-dl
    /tmp/owui-tools-venv/bin/python tests/data/owui/generate_owui_tools.py \\
        /tmp/owui-dl/open_webui-0.12.4-py3-none-any.whl

(requests and httpx only because the tool files in tests/data/owui_tools/ import them, as published tools do.)

As in ``generate_owui_access.py``, importing ``open_webui`` would drag in the whole application, so the named
top-level definitions are taken out of the wheel with ``ast`` and executed byte for byte as published, each module
in its own namespace, with the real third-party imports (``langchain_core``'s ``convert_to_openai_function``,
pydantic, fastapi's ``HTMLResponse``) and small named stubs for the rest of the app:

- ``open_webui/utils/plugin.py``: ``replace_imports``, ``extract_frontmatter``, ``load_tool_module_by_id`` (stubs:
  ``ENABLE_TOOLS = True``; ``install_frontmatter_requirements`` records and installs nothing; the ``Tools`` table is
  never queried because the content is given), ``resolve_valves_schema_options``;
- ``open_webui/utils/tools.py``: ``get_tool_specs`` and what it calls, and
  ``get_async_tool_function_and_apply_extra_params`` (whose inner ``coerce_kwargs`` the coercion cases run through:
  the wrapped probe returns the keyword arguments it received);
- ``open_webui/utils/middleware.py``: ``process_tool_result`` and ``extract_base64_images`` (``JSONCodec`` is the
  standard ``json``, what it is with ``ENABLE_ORJSON`` unset; ``get_file_url_from_base64`` is only reached by MCP
  tools and raises here).

Per tool file (tests/data/owui_tools/*.py) the steps are those of ``POST /api/v1/tools/create``
(``routers/tools.py``): ``content = replace_imports(content)``, ``load_tool_module_by_id(id, content=content)``
(frontmatter, module, ``Tools()``), ``get_tool_specs(tool_module)``; and of ``GET .../valves/spec`` and
``.../valves/user/spec``: ``Valves.schema()`` then ``resolve_valves_schema_options(Valves, schema, user)`` for a
sample user (a pydantic model, as ``UserModel`` is, so its ``model_dump()`` is what option methods receive).
Return values and coercion inputs are in ``tool_cases.py`` (shared with the test). Output is deterministic
(module names in error texts read ``tool_<id>_<hex>``).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import types
import uuid
import warnings
import zipfile
from functools import partial, update_wrapper
from pathlib import Path
from typing import Any, Awaitable, Callable, get_args, get_type_hints  # noqa: UP035 (what tools.py imports)

from fastapi.responses import HTMLResponse
from langchain_core.utils.function_calling import (
    convert_to_openai_function as convert_pydantic_model_to_openai_function_spec,
)
from pydantic import BaseModel, Field, create_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TOOLS_DIR = HERE.parent / "owui_tools"
VERSION = "0.12.4"
PLUGIN = "open_webui/utils/plugin.py"
TOOLS = "open_webui/utils/tools.py"
MIDDLEWARE = "open_webui/utils/middleware.py"
PINS = {"langchain-core": "1.4.8", "pydantic": "2.13.4", "fastapi": "0.136.3"}
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class Wheel:
    def __init__(self, path: Path) -> None:
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.zf = zipfile.ZipFile(path)

    def load(self, module_path: str, names: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
        """Exec the named top-level definitions of ``module_path`` (plus its ``__future__`` import) in namespace."""
        tree = ast.parse(self.zf.read(module_path).decode())
        keep: list[ast.stmt] = []
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                keep.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
                keep.append(node)
                found.add(node.name)
            elif isinstance(node, ast.Assign):
                targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
                if targets & set(names):
                    keep.append(node)
                    found |= targets & set(names)
        missing = set(names) - found
        if missing:
            raise SystemExit(f"not found in {module_path}: {sorted(missing)}")
        namespace.setdefault("__name__", module_path[:-3].replace("/", "."))
        exec(compile(ast.Module(body=keep, type_ignores=[]), module_path, "exec"), namespace)
        return namespace


class ToolsTableNeverQueried:
    @staticmethod
    async def get_tool_by_id(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the content is always given: the Tools table is never read")


REQUIREMENTS_SEEN: list[str] = []


def install_frontmatter_requirements(requirements: str) -> None:
    """Stub: records what Open WebUI would pip install; installs nothing."""
    REQUIREMENTS_SEEN.append(requirements)


async def get_file_url_from_base64(*args: Any, **kwargs: Any) -> str:
    raise AssertionError("only MCP results reach get_file_url_from_base64")


class SampleUser(BaseModel):
    """What the valves spec routes pass as ``user`` (a ``UserModel``; these are the fields the service forwards)."""

    id: str
    name: str
    email: str
    role: str


SAMPLE_USER = SampleUser(id="u-alice", name="Alice", email="alice@example.com", role="user")


def jsonable(value: Any) -> Any:
    """As stored and served (a JSON column, a JSON response): strict JSON, so nothing non-JSON slips through."""
    return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))


MODULE_NAME = re.compile(r"(tool_\w+?_)[0-9a-f]{32}")


def error_of(exc: BaseException) -> dict[str, str]:
    """The exception; the random part of the module name ``tool_<id>_<uuid hex>`` replaced by ``<hex>``."""
    return {"name": type(exc).__name__, "value": MODULE_NAME.sub(r"\1<hex>", str(exc))}


def load_cases() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("tool_cases", HERE / "tool_cases.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["tool_cases"] = module
    spec.loader.exec_module(module)
    return module


def gen_specs(ns_plugin: dict[str, Any], ns_tools: dict[str, Any], wheel: Wheel) -> None:
    replace_imports = ns_plugin["replace_imports"]
    load_tool_module_by_id = ns_plugin["load_tool_module_by_id"]
    resolve = ns_plugin["resolve_valves_schema_options"]
    get_tool_specs = ns_tools["get_tool_specs"]
    files: dict[str, Any] = {}
    for path in sorted(TOOLS_DIR.glob("*.py")):
        raw = path.read_text(encoding="utf-8")
        entry: dict[str, Any] = {"sha256": hashlib.sha256(raw.encode()).hexdigest()}
        REQUIREMENTS_SEEN.clear()
        content = replace_imports(raw)  # the create route does this before load_tool_module_by_id
        entry["content_replaced"] = content != raw
        try:
            tool, frontmatter, _module = asyncio.run(load_tool_module_by_id(path.stem, content=content))
        except Exception as exc:
            entry.update(stage="load", error=error_of(exc))
            files[path.name] = entry
            continue
        entry["frontmatter"] = frontmatter
        entry["requirements_installed"] = list(REQUIREMENTS_SEEN)
        try:
            entry["specs"] = jsonable(get_tool_specs(tool))
        except Exception as exc:
            entry.update(stage="specs", error=error_of(exc))
            files[path.name] = entry
            continue
        for key, attr in (("valves", "Valves"), ("user_valves", "UserValves")):
            if not hasattr(tool, attr):
                entry[f"{key}_schema"] = entry[f"{key}_spec"] = None
                continue
            model = getattr(tool, attr)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # .schema() is deprecated in pydantic 2; Open WebUI calls it
                entry[f"{key}_schema"] = jsonable(model.schema())
                entry[f"{key}_spec"] = jsonable(resolve(model, model.schema(), SAMPLE_USER))
        files[path.name] = entry
    dump(
        "tool_specs.json",
        {
            "source": f"open-webui {VERSION} {PLUGIN}:load_tool_module_by_id,resolve_valves_schema_options; "
            f"{TOOLS}:get_tool_specs",
            "generator": "tests/data/owui/generate_owui_tools.py",
            "wheel_sha256": wheel.sha256,
            "versions": versions(),
            "sample_user": SAMPLE_USER.model_dump(),
            "stubs": {
                "ENABLE_TOOLS": "True",
                "install_frontmatter_requirements": "records the requirements string, installs nothing",
                "Tools": "the table: never queried (content given)",
            },
            "files": files,
        },
    )


def gen_results(ns_mw: dict[str, Any], ns_tools: dict[str, Any], cases: types.ModuleType, wheel: Wheel) -> None:
    process = ns_mw["process_tool_result"]
    results = []
    for name, function, make in cases.RESULTS:
        row: dict[str, Any] = {"name": name, "function": function}
        try:
            text, files, embeds = asyncio.run(process(None, function, make(), "", False, {}, None))
            row.update(text=ADDRESS.sub(" at 0x…", text) if isinstance(text, str) else text, files=files, embeds=embeds)
        except Exception as exc:
            row["error"] = error_of(exc)
        results.append(jsonable(row))

    wrap = ns_tools["get_async_tool_function_and_apply_extra_params"]
    coercions = []
    for name, probe_name, kwargs in cases.COERCIONS:
        row = {"name": name, "probe": probe_name, "kwargs": cases.typed(kwargs)}
        fn = asyncio.run(wrap(cases.PROBES[probe_name], {}))
        try:
            row["result"] = cases.typed(asyncio.run(fn(**copy.deepcopy(kwargs))))
        except Exception as exc:
            row["error"] = error_of(exc)
        coercions.append(jsonable(row))
    dump(
        "tool_results.json",
        {
            "source": f"open-webui {VERSION} {MIDDLEWARE}:process_tool_result,extract_base64_images; "
            f"{TOOLS}:get_async_tool_function_and_apply_extra_params (coerce_kwargs)",
            "generator": "tests/data/owui/generate_owui_tools.py",
            "wheel_sha256": wheel.sha256,
            "versions": versions(),
            "call": "process_tool_result(None, function, value, '', False, {}, None): tool_type '' as get_tools "
            "gives tool modules (no 'type' key); not a direct tool",
            "normalized": "object addresses ' at 0x...' in text replaced by ' at 0x…'",
            "stubs": {
                "JSONCodec": "stdlib json (ENABLE_ORJSON unset)",
                "get_file_url_from_base64": "raises (MCP only)",
            },
            "results": results,
            "coercions": coercions,
        },
    )


def versions() -> dict[str, str]:
    got = {name: importlib.metadata.version(name) for name in PINS}
    if got != PINS:
        raise SystemExit(f"run with open-webui {VERSION}'s pins {PINS}, not {got}")
    return {"python": sys.version.split()[0], **got}


def dump(name: str, data: dict[str, Any]) -> None:
    out = HERE / name
    out.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} open_webui-{VERSION}-py3-none-any.whl")
    wheel = Wheel(Path(argv[1]))
    logging.disable(logging.CRITICAL)  # load_tool_module_by_id logs every load
    ns_plugin = wheel.load(
        PLUGIN,
        ["log", "resolve_valves_schema_options", "extract_frontmatter", "replace_imports", "load_tool_module_by_id"],
        {"logging": logging, "re": re, "asyncio": asyncio, "os": os, "sys": sys, "tempfile": tempfile,
         "types": types, "uuid": uuid, "Any": Any, "ENABLE_TOOLS": True, "Tools": ToolsTableNeverQueried,
         "install_frontmatter_requirements": install_frontmatter_requirements},
    )  # fmt: skip
    ns_tools = wheel.load(
        TOOLS,
        ["parse_description", "parse_docstring", "convert_function_to_pydantic_model", "clean_properties",
         "clean_openai_tool_schema", "get_functions_from_tool", "get_tool_specs",
         "get_async_tool_function_and_apply_extra_params"],
        {"inspect": inspect, "re": re, "copy": copy, "Any": Any, "Awaitable": Awaitable, "Callable": Callable,
         "get_type_hints": get_type_hints, "get_args": get_args, "partial": partial, "update_wrapper": update_wrapper,
         "BaseModel": BaseModel, "Field": Field, "create_model": create_model,
         "convert_pydantic_model_to_openai_function_spec": convert_pydantic_model_to_openai_function_spec},
    )  # fmt: skip
    ns_mw = wheel.load(
        MIDDLEWARE,
        ["log", "BASE64_IMAGE_DATA_URI_RE", "extract_base64_images", "process_tool_result"],
        {"logging": logging, "re": re, "json": json, "Any": Any, "HTMLResponse": HTMLResponse, "JSONCodec": json,
         "get_file_url_from_base64": get_file_url_from_base64},
    )  # fmt: skip
    gen_specs(ns_plugin, ns_tools, wheel)
    gen_results(ns_mw, ns_tools, load_cases(), wheel)


if __name__ == "__main__":
    main(sys.argv)
