"""Regenerate the Open WebUI parity payloads (``*.owui.json``) beside the specs in this folder.

The expected payloads are produced by the published ``open-webui`` package itself, never by our code, and
open-webui is never a dependency of this project. How they were made (open-webui 0.12.4):

    python3 -m venv /tmp/owui-venv && /tmp/owui-venv/bin/pip install pyyaml
    /tmp/owui-venv/bin/pip download --no-deps open-webui==0.12.4 -d /tmp/owui-dl
    /tmp/owui-venv/bin/python tests/data/openapi/generate_owui_payloads.py \
        /tmp/owui-dl/open_webui-0.12.4-py3-none-any.whl

Importing ``open_webui.utils.tools`` drags in the whole application (database, langchain, ...), so this
script takes the module's source out of the wheel and executes only the conversion functions
(``resolve_schema``, ``convert_openapi_to_tool_payload``, ``add_terminal_display_file_inline_param``, and the
constants they read), byte for byte as published. Specs are parsed the way Open WebUI's
``get_tool_server_data`` does for a ``.yaml`` URL: ``yaml.safe_load``.

Where the specs come from (all shipped in PyPI packages):
- petstore.yaml, petstore-3.1.yaml: openapi-spec-validator 0.9.0 sdist, tests/integration/data/v3.{0,1}/
- airflow-v1.yaml: apache-airflow 2.10.5 wheel, airflow/api_connexion/openapi/v1.yaml (OpenAPI 3.0)
- airflow-v2.yaml: apache-airflow-core 3.3.2 wheel, airflow/api_fastapi/core_api/openapi/
  v2-rest-api-generated.yaml (OpenAPI 3.1)
"""

from __future__ import annotations

import ast
import copy
import json
import sys
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
WANTED = {
    "OPENAPI_HTTP_METHODS",
    "resolve_schema",
    "convert_openapi_to_tool_payload",
    "add_terminal_display_file_inline_param",
}


def load_functions(wheel: Path) -> dict[str, object]:
    """Execute the wanted top-level definitions of open_webui/utils/tools.py from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("open_webui/utils/tools.py").decode()
    tree = ast.parse(source)
    keep: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in WANTED:
            keep.append(node)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in WANTED for t in node.targets):
            keep.append(node)
    found = {getattr(n, "name", None) or n.targets[0].id for n in keep}  # type: ignore[attr-defined]
    missing = WANTED - found
    if missing:
        raise SystemExit(f"not found in the wheel: {sorted(missing)}")
    namespace: dict[str, object] = {"copy": copy}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "open_webui/utils/tools.py", "exec"), namespace)
    return namespace


def main() -> None:
    """Write ``<spec>.owui.json`` for every ``*.yaml`` / ``*.json`` spec in this folder."""
    ns = load_functions(Path(sys.argv[1]))
    convert = ns["convert_openapi_to_tool_payload"]
    add_inline = ns["add_terminal_display_file_inline_param"]
    for spec_path in sorted(HERE.glob("*.yaml")):
        spec = yaml.safe_load(spec_path.read_text())
        payload = [add_inline(s) for s in convert(spec)]  # type: ignore[operator]
        out = spec_path.with_suffix(".owui.json")
        out.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
        print(f"{out.name}: {len(payload)} functions")


if __name__ == "__main__":
    main()
