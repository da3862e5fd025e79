"""A test client that speaks the Jupyter protocol exactly as Open WebUI 0.12.4's code interpreter does.

Replicated (not imported: Open WebUI is not a dependency) from ``open_webui/utils/code_interpreter.py`` of the
``open-webui==0.12.4`` wheel, class ``JupyterCodeExecuter`` and ``execute_code_jupyter`` (lines 25-197). What it
does, with the lines of that file:

- ``__init__`` (l. 51-53): appends ``/`` to the base URL when missing; every later path is relative
  (``api/kernels``...), so a sub-path in the base URL is kept. ``aiohttp.ClientSession(trust_env=True,
  base_url=...)``.
- ``sign_in`` (l. 79-99): with a token, only ``params={"token": T}`` on every HTTP request: never a header.
  (Password mode, l. 81-95, ``GET login`` for ``_xsrf`` then ``POST login``, is not replicated here.)
- ``init_kernel`` (l. 101-105): ``POST api/kernels?token=T`` with no body; ``raise_for_status``; reads ``id``.
- ``init_ws`` (l. 107-117): ``ws`` + base URL (``http`` -> ``ws`` once, so https -> wss), then
  ``api/kernels/{id}/channels?token=T`` built by string joining: the token is NOT URL-encoded there.
- ``execute_code`` (l. 119-124): ``websockets.connect(url, additional_headers=...)`` with the library's default
  ``max_size`` of 1 MiB (2**20): a bigger incoming message fails the connection and so the whole cell
  (``run`` turns any exception into ``stderr = "Error: ..."``, l. 74-76).
- ``execute_in_jupyter`` (l. 126-189): sends ONE JSON text frame, an ``execute_request`` with ``channel: shell``
  (header: msg_id/session uuid4 hex, username ``user``, date ``""``, version ``5.3``; content: silent False,
  store_history True, allow_stdin False, stop_on_error True). Then loops on ``asyncio.wait_for(ws.recv(),
  timeout)``: the timeout is per message (inactivity), not per cell. It skips every message whose
  ``parent_header.msg_id`` differs, and dispatches on the TOP-LEVEL ``msg_type`` (not ``header.msg_type``):
  ``stream`` (content.name stdout/stderr, content.text appended), ``execute_result`` | ``display_data``
  (``image/png`` in content.data -> ``data:image/png;base64,...``, else ``text/plain``, else nothing),
  ``error`` (``"\\n".join(content.traceback)`` appended to stderr; ename/evalue unused), ``status`` with
  ``execution_state == "idle"`` ends the loop. A timeout appends ``"\\nExecution timed out."`` to stderr.
  Everything else (``execute_reply``, ``execute_input``, other channels) is ignored.
  Results: stdout and stderr ``.strip()``-ed, result = ``"\\n".join(results).strip()``.
- ``__aexit__`` (l. 60-67): ``DELETE api/kernels/{id}?token=T`` whenever a kernel id was set, also after a
  timeout or an error; a failing DELETE is only logged.
- Callers (``routers/utils.py`` l. 50, ``utils/middleware.py`` l. 6172, ``tools/builtin.py`` l. 738) pass the
  token only when ``code_*.jupyter.auth == "token"`` (else None) and ``timeout`` from
  ``CODE_INTERPRETER_JUPYTER_TIMEOUT`` (default 60). A fresh kernel per call: nothing survives between runs.

This copy uses httpx instead of aiohttp (aiohttp is not installed here); the requests it sends are the same.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

# websockets' default max_size, which Open WebUI does not change.
WS_MAX_SIZE = 2**20
# aiohttp.ClientSession's default ClientTimeout(total=300), which Open WebUI does not change either.
AIOHTTP_DEFAULT_TIMEOUT_S = 300


@dataclass
class OwuiResult:
    """What ``execute_code_jupyter`` returns (its ResultModel), plus what the test wants to look at."""

    stdout: str = ""
    stderr: str = ""
    result: str = ""
    kernel_id: str = ""
    deleted: int | None = None  # the DELETE's status code, None if it was never sent or failed to connect
    messages: list[dict[str, Any]] = field(default_factory=list)  # every message received, matching or not


async def execute_code_jupyter(base_url: str, code: str, token: str = "", timeout: float = 60) -> OwuiResult:
    """Open WebUI 0.12.4's ``execute_code_jupyter`` (token mode), step for step."""
    if base_url[-1] != "/":
        base_url += "/"
    out = OwuiResult()
    params: dict[str, str] = {"token": token} if token else {}
    # aiohttp's default timeout (300 s in all), not the cell's: Open WebUI's ``timeout`` is only the websocket's.
    async with httpx.AsyncClient(base_url=base_url, timeout=AIOHTTP_DEFAULT_TIMEOUT_S) as http:
        try:
            try:
                r = await http.post("api/kernels", params=params)
                r.raise_for_status()
                out.kernel_id = r.json()["id"]
                await _execute(base_url, params, code, timeout, out)
            except Exception as err:  # as ``run``: any failure becomes the cell's stderr
                out.stderr = f"Error: {err}"
        finally:
            if out.kernel_id:
                try:
                    d = await http.delete(f"api/kernels/{out.kernel_id}", params=params)
                    out.deleted = d.status_code
                except httpx.HTTPError:
                    pass
    return out


def ws_url(base_url: str, params: dict[str, str], kernel_id: str) -> str:
    """``init_ws``: the websocket URL, the token joined in as is (not URL-encoded)."""
    ws_base = base_url.replace("http", "ws", 1)
    ws_params = "?" + "&".join(f"{key}={val}" for key, val in params.items())
    return f"{ws_base}api/kernels/{kernel_id}/channels{ws_params if len(ws_params) > 1 else ''}"


def execute_request(code: str, msg_id: str) -> dict[str, Any]:
    """The one message Open WebUI sends."""
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "user",
            "session": uuid.uuid4().hex,
            "date": "",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
    }


async def _execute(base_url: str, params: dict[str, str], code: str, timeout: float, out: OwuiResult) -> None:
    async with websockets.connect(ws_url(base_url, params, out.kernel_id), max_size=WS_MAX_SIZE) as ws:
        msg_id = uuid.uuid4().hex
        await ws.send(json.dumps(execute_request(code, msg_id)))
        stdout, stderr, result = "", "", []
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout)
                data = json.loads(message)
                out.messages.append(data)
                if data.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                match data.get("msg_type"):
                    case "stream":
                        if data["content"]["name"] == "stdout":
                            stdout += data["content"]["text"]
                        elif data["content"]["name"] == "stderr":
                            stderr += data["content"]["text"]
                    case "execute_result" | "display_data":
                        bundle = data["content"]["data"]
                        if "image/png" in bundle:
                            result.append(f"data:image/png;base64,{bundle['image/png']}")
                        elif "text/plain" in bundle:
                            result.append(bundle["text/plain"])
                    case "error":
                        stderr += "\n".join(data["content"]["traceback"])
                    case "status":
                        if data["content"]["execution_state"] == "idle":
                            break
            except TimeoutError:
                stderr += "\nExecution timed out."
                break
        out.stdout = stdout.strip()
        out.stderr = stderr.strip()
        out.result = "\n".join(result).strip() if result else ""
