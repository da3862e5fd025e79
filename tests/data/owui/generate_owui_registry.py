"""Regenerate registry.json: Open WebUI 0.12.4's own answers for the text-only parts of its tool registry.

``extract_frontmatter`` (open_webui/utils/plugin.py) and ``github_url_to_raw_url`` plus the tool-name statements
of ``load_tool_from_url`` (open_webui/routers/tools.py) need only ``re`` and ``logging``, so, as in
``generate_owui_access.py``, their source is taken out of the published wheel with ``ast`` and executed alone
(no stubs needed), byte for byte as published. Any Python 3.11+ runs it:

    python3 tests/data/owui/generate_owui_registry.py /tmp/owui-dl/open_webui-0.12.4-py3-none-any.whl
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

FRONTMATTER_CASES = [
    '"""\ntitle: Weather\nauthor: me\nversion: 0.1.0\nrequirements: requests, beautifulsoup4>=4.12 ,  lxml\n"""\n'
    "class Tools:\n    pass\n",
    '  """  \ntitle: spaces around the opening quotes\n"""\n',
    '"""title: same line\nauthor: x\n"""\n',
    '"""\nTitle: Mixed Case Key\nREQUIREMENTS: a,b\n"""\n',
    '"""\ntitle: first\ntitle: last wins\n"""\n',
    '"""\nkey-with-dash: no\nkey2: digits are not key characters\nok_key:   padded value   \n"""\n',
    '"""\ndescription: ends here """\nauthor: after the end\n',
    '"""\nurl: https://example.com:8080/a:b\n  indented: yes\n"""\n',
    "'''\ntitle: single quotes are not frontmatter\n'''\n",
    '\n"""\ntitle: not on the first line\n"""\n',
    "",
    '"""\nno closing quotes: at all\ntitle: still read\n',
    '"""\ntitle: tabs\tinside\r\nauthor: crlf\r\n"""\r\n',
    '"""\nempty:\nalso_empty:   \n"""\n',
    '"""\ntitle: Ünïcödé välue\n"""\n',
    '""""\ntitle: four quotes\n"""\n',
]

URL_CASES = [
    "https://github.com/org/repo/blob/main/tools/weather.py",
    "https://github.com/org/repo/tree/main/tools/weather/",
    "https://github.com/org/repo/tree/dev/tools/weather",
    "https://example.com/tools/main.py",
    "https://example.com/tools/mytool.py",
    "https://example.com/tools/index.py",
    "https://example.com/tools/__init__.py",
    "https://example.com/tools/mytool",
    "https://example.com/",
    "https://raw.githubusercontent.com/org/repo/refs/heads/main/calc.py",
]


def definitions(wheel: zipfile.ZipFile, module: str, names: list[str]) -> dict[str, Any]:
    """Execute the named top-level definitions of ``module`` (a path in the wheel) in one fresh namespace."""
    source = wheel.read(module).decode()
    tree = ast.parse(source)
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        raise SystemExit(f"{module}: not found: {sorted(missing)}")
    namespace: dict[str, Any] = {"re": re, "log": logging.getLogger("owui")}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), module, "exec"), namespace)
    return namespace


def name_rule(wheel: zipfile.ZipFile) -> Any:
    """The tool-name statements of ``load_tool_from_url`` (inline there): its assignments to ``url_parts``,
    ``file_name`` and ``tool_name``, taken from the wheel and run with ``url`` bound."""
    tree = ast.parse(wheel.read("open_webui/routers/tools.py").decode())
    func = next(n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "load_tool_from_url")
    wanted = [
        n
        for n in func.body
        if isinstance(n, ast.Assign)
        and all(isinstance(t, ast.Name) and t.id in ("url_parts", "file_name", "tool_name") for t in n.targets)
    ]
    if len(wanted) != 3:
        raise SystemExit("load_tool_from_url: the name rule changed shape")
    code = compile(ast.Module(body=wanted, type_ignores=[]), "load_tool_from_url", "exec")

    def tool_name(url: str) -> str:
        namespace: dict[str, Any] = {"url": url}
        exec(code, namespace)
        return str(namespace["tool_name"])

    return tool_name


def main(wheel_path: str) -> None:
    with zipfile.ZipFile(wheel_path) as wheel:
        plugin = definitions(wheel, "open_webui/utils/plugin.py", ["extract_frontmatter"])
        router = definitions(wheel, "open_webui/routers/tools.py", ["github_url_to_raw_url"])
        tool_name = name_rule(wheel)
        version = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    frontmatter = [{"content": c, "expected": plugin["extract_frontmatter"](c)} for c in FRONTMATTER_CASES]
    urls = []
    for url in URL_CASES:
        raw = router["github_url_to_raw_url"](url)
        urls.append({"url": url, "raw_url": raw, "name": tool_name(raw)})
    out = {"source": version.split("/")[0], "frontmatter": frontmatter, "load_url": urls}
    (HERE / "registry.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
