"""The Jupyter face (executor/api/jupyter.py), driven by a copy of Open WebUI 0.12.4's own client
(tests/owui_jupyter.py) against the real service on loopback with real kernels; and its message fitting."""

from __future__ import annotations

import base64
import io
import json
import logging
import os

import httpx
import pytest
import websockets
from PIL import Image

from executor.jupyter import fit
from executor.jupyter.messages import CellReplies, message
from executor.sessions import LogEvent
from executor.settings import Settings
from tests.conftest import KEY_A, KEY_B, Service, require_bwrap
from tests.owui_jupyter import WS_MAX_SIZE, execute_code_jupyter, execute_request, ws_url

LIMIT = (1 << 20) - (4 << 10)


def _png(width: int, height: int) -> bytes:
    # Random pixels do not compress: the file is about 3 bytes a pixel.
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- fitting (no kernel) ----------------------------------------------------------------------------------


def test_a_5_mb_png_is_reencoded_under_the_limit() -> None:
    raw = _png(1300, 1300)
    assert len(raw) > 5_000_000
    msg = message("iopub", "display_data", {"data": {"image/png": base64.b64encode(raw).decode(),
                  "text/plain": "<Figure>"}, "metadata": {}, "transient": {}}, {"msg_id": "m"}, "s")  # fmt: skip
    fitted = fit.fit(msg, LIMIT)
    assert fit.size(fitted) <= LIMIT
    png = base64.b64decode(fitted["content"]["data"]["image/png"])
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert 100 < image.width < 1300
    assert fitted["content"]["data"]["text/plain"] == "<Figure>"
    assert fit.size(msg) > LIMIT  # the original is left as it was


def test_an_undecodable_oversized_image_becomes_a_note_not_nothing() -> None:
    junk = base64.b64encode(os.urandom(2 << 20)).decode()
    msg = message("iopub", "display_data", {"data": {"image/png": junk}, "metadata": {}}, {}, "s")
    fitted = fit.fit(msg, LIMIT)
    assert fit.size(fitted) <= LIMIT
    assert "image/png" not in fitted["content"]["data"]
    assert "left out" in fitted["content"]["data"]["text/plain"]


def test_long_text_is_cut_with_a_marker() -> None:
    text = 'line "quoted"\n' * 200_000  # escapes make the JSON longer than the text
    msg = message("iopub", "execute_result", {"data": {"text/plain": text}, "execution_count": 1}, {}, "s")
    fitted = fit.fit(msg, LIMIT)
    assert fit.size(fitted) <= LIMIT
    kept = fitted["content"]["data"]["text/plain"]
    assert kept.endswith(fit.marker(LIMIT))
    assert len(kept) > LIMIT // 4  # cut to the limit, not to nothing


def test_a_traceback_of_many_lines_still_fits() -> None:
    lines = [f"frame {i}" for i in range(300_000)]
    msg = message("iopub", "error", {"ename": "RecursionError", "evalue": "deep", "traceback": lines}, {}, "s")
    fitted = fit.fit(msg, LIMIT)
    assert fit.size(fitted) <= LIMIT
    assert fitted["content"]["traceback"][0] == "frame 0"
    assert fitted["content"]["traceback"][-1] == fit.marker(LIMIT)


def test_a_long_stream_is_split_not_cut() -> None:
    text = "".join(f"{i}\n" for i in range(400_000)) + "\x01" * 50_000 + "é" * 300_000
    msg = message("iopub", "stream", {"name": "stdout", "text": text}, {"msg_id": "m"}, "s")
    parts = fit.split_stream(msg, LIMIT)
    assert len(parts) > 1
    assert all(fit.size(p) <= LIMIT for p in parts)
    assert "".join(p["content"]["text"] for p in parts) == text
    assert all(p["parent_header"] == {"msg_id": "m"} for p in parts)


def test_cell_replies_follow_the_jupyter_order() -> None:
    parent = {"msg_id": "req", "msg_type": "execute_request"}
    replies = CellReplies(parent=parent, session="s", code="1/0", execution_count=3)
    sent = []
    sent += replies.on_event(LogEvent(0, "status", {"status": "queued"}))
    sent += replies.on_event(LogEvent(1, "status", {"status": "running"}))
    sent += replies.on_event(LogEvent(2, "stream", {"name": "stdout", "text": "hi\n"}))
    error = {"name": "ZeroDivisionError", "value": "division by zero", "traceback": ["Traceback", "ZeroDivision"]}
    sent += replies.on_event(LogEvent(3, "error", error))
    done = {"status": "error", "error": error, "truncated": False}
    sent += replies.on_event(LogEvent(4, "done", json.dumps(done)))
    kinds = [(m["channel"], m["msg_type"]) for m in sent]
    assert kinds == [
        ("iopub", "status"),
        ("iopub", "execute_input"),
        ("iopub", "stream"),
        ("iopub", "error"),  # once: the final result's error is the one already sent
        ("shell", "execute_reply"),
        ("iopub", "status"),
    ]
    assert all(m["parent_header"] is parent and m["header"]["msg_type"] == m["msg_type"] for m in sent)
    assert sent[-1]["content"] == {"execution_state": "idle"}
    assert sent[-2]["content"]["status"] == "error"


def test_display_updates_name_the_display_they_replace() -> None:
    replies = CellReplies(parent={"msg_id": "r"}, session="s", code="x", execution_count=1)
    out = {"type": "text", "mime_type": "text/plain", "data": "1", "text": "1"}
    first = replies.on_event(LogEvent(0, "output", {"index": 0, "update": False, "output": out}))[-1]
    again = replies.on_event(LogEvent(1, "output", {"index": 0, "update": True, "output": {**out, "data": "2"}}))
    assert first["msg_type"] == "display_data" and again[0]["msg_type"] == "update_display_data"
    assert first["content"]["transient"] == again[0]["content"]["transient"] == {"display_id": "r-0"}
    assert again[0]["content"]["data"] == {"text/plain": "2"}


def test_a_timeout_is_reported_as_an_error_message() -> None:
    replies = CellReplies(parent={"msg_id": "r"}, session="s", code="x", execution_count=1)
    done = {"status": "timeout", "error": {"name": "TimeoutError", "value": "the cell timed out"}, "truncated": True}
    sent = replies.on_event(LogEvent(0, "done", json.dumps(done)))
    types = [m["msg_type"] for m in sent]
    assert types == ["status", "execute_input", "stream", "error", "execute_reply", "status"]
    assert sent[3]["content"]["traceback"] == ["TimeoutError: the cell timed out"]


# -- the served face, with real kernels -----------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    require_bwrap()
    return settings


async def _kernels(service: Service, key: str = KEY_A) -> list[dict]:
    async with service.client(key) as c:
        r = await c.get("/api/kernels")
        assert r.status_code == 200, r.text
        return list(r.json())


async def test_open_webui_runs_a_cell(service: Service) -> None:
    code = "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n6 * 7"
    out = await execute_code_jupyter(service.url, code, token=KEY_A, timeout=30)
    assert (out.stdout, out.stderr, out.result) == ("hello", "oops", "42")
    assert out.deleted == 204
    assert await _kernels(service) == []
    # Every message answering the request names it, and carries the top-level msg_type Open WebUI reads.
    answering = [m for m in out.messages if m["parent_header"].get("msg_type") == "execute_request"]
    assert answering and all(m["msg_type"] == m["header"]["msg_type"] for m in answering)


async def test_open_webui_sees_the_traceback(service: Service) -> None:
    out = await execute_code_jupyter(service.url, "x = 1\n1 / 0", token=KEY_A, timeout=30)
    assert "ZeroDivisionError" in out.stderr and "Traceback" in out.stderr
    assert out.result == ""


async def test_a_matplotlib_plot_is_a_png_data_url(service: Service) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    out = await execute_code_jupyter(service.url, code, token=KEY_A, timeout=60)
    assert out.result.startswith("data:image/png;base64,"), out
    with Image.open(io.BytesIO(base64.b64decode(out.result.split(",", 1)[1]))) as image:
        assert image.format == "PNG"
    shown = next(m for m in out.messages if m["msg_type"] == "display_data")
    assert shown["content"]["data"]["text/plain"].startswith("<Figure")


async def test_wrong_token_is_403_and_nothing_runs(service: Service) -> None:
    out = await execute_code_jupyter(service.url, "print('no')", token="not-a-key-at-all", timeout=10)
    assert "403" in out.stderr and out.kernel_id == ""
    async with httpx.AsyncClient(base_url=service.url) as c:
        assert (await c.post("/api/kernels")).status_code == 403  # no token at all
        assert (await c.get("/api/kernels", params={"token": "wrong-token"})).status_code == 403
    async with service.client() as c:
        assert (await c.get("/api/v1/sessions")).json() == []
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{service.url.replace('http', 'ws')}/api/kernels/x/channels?token=bad"):
            pass
    assert refused.value.response.status_code == 403


async def test_another_keys_kernel_is_404(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"token {KEY_A}"}) as a:
        r = await a.post("/api/kernels")
        assert r.status_code == 201, r.text
        kid = r.json()["id"]
        assert (await a.get(f"/api/kernels/{kid}")).json()["execution_state"] == "idle"
        async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {KEY_B}"}) as b:
            assert (await b.get(f"/api/kernels/{kid}")).status_code == 404
            assert (await b.delete(f"/api/kernels/{kid}")).status_code == 404
            assert (await b.get("/api/kernels")).json() == []
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(f"{service.url}/", {"token": KEY_B}, kid)):
                pass
        assert refused.value.response.status_code == 404
        assert (await a.delete(f"/api/kernels/{kid}")).status_code == 204
        assert (await a.get(f"/api/kernels/{kid}")).status_code == 404


async def test_output_is_streamed_as_it_happens(service: Service) -> None:
    # Open WebUI's timeout is per message: a cell longer than it works as long as output keeps coming.
    code = "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.5)"
    out = await execute_code_jupyter(service.url, code, token=KEY_A, timeout=3)
    assert out.stdout.split() == [str(i) for i in range(6)]
    assert "timed out" not in out.stderr


async def test_a_silent_cell_times_out_and_the_kernel_is_deleted(service: Service) -> None:
    out = await execute_code_jupyter(service.url, "import time\ntime.sleep(60)", token=KEY_A, timeout=1)
    assert out.stderr == "Execution timed out."
    assert out.deleted == 204
    assert await _kernels(service) == []


async def test_a_5_mb_image_arrives_under_1_mib(service: Service) -> None:
    code = (
        "import io, os\nfrom PIL import Image\nfrom IPython.display import Image as Show, display\n"
        "im = Image.frombytes('RGB', (1300, 1300), os.urandom(1300 * 1300 * 3))\n"
        "b = io.BytesIO(); im.save(b, 'PNG'); print(len(b.getvalue()))\ndisplay(Show(data=b.getvalue()))"
    )
    out = await execute_code_jupyter(service.url, code, token=KEY_A, timeout=60)
    assert int(out.stdout) > 5_000_000
    assert out.result.startswith("data:image/png;base64,")
    png = base64.b64decode(out.result.removeprefix("data:image/png;base64,"))
    assert len(png) < WS_MAX_SIZE
    with Image.open(io.BytesIO(png)) as image:
        assert image.width < 1300


async def test_a_flood_of_text_arrives_split_and_says_it_was_cut(service: Service) -> None:
    out = await execute_code_jupyter(service.url, "print('x' * 3_000_000)", token=KEY_A, timeout=30)
    cap = service.settings.max_stream_bytes
    assert not out.stderr.startswith("Error"), out.stderr[:300]
    assert set(out.stdout) == {"x"} and cap // 2 < len(out.stdout) <= cap
    assert "truncated" in out.stderr  # the cut is said, on stderr, as the cell's own output
    assert all(len(json.dumps(m).encode()) <= WS_MAX_SIZE for m in out.messages)


async def test_kernel_info_and_stdin_over_the_websocket(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    async with service.client() as c:
        kid = (await c.post("/api/kernels", json={"name": "python3"})).json()["id"]
        try:
            async with websockets.connect(ws_url(f"{service.url}/", {"token": KEY_A}, kid)) as ws:
                info = execute_request("", "info-1")
                info["header"]["msg_type"] = "kernel_info_request"
                await ws.send(json.dumps({**info, "content": {}}))
                await ws.send(json.dumps({**execute_request("", "in-1"), "channel": "stdin"}))
                replies = [json.loads(await ws.recv()) for _ in range(3)]
                assert [m["msg_type"] for m in replies] == ["status", "kernel_info_reply", "status"]
                assert replies[1]["content"]["language_info"]["name"] == "python"
                # input() with allow_stdin off fails in the cell with the kernel's own message.
                await ws.send(json.dumps(execute_request("input('name? ')", "ex-1")))
                seen = []
                while not seen or seen[-1].get("content") != {"execution_state": "idle"}:
                    seen.append(json.loads(await ws.recv()))
                assert any(m["msg_type"] == "error" for m in seen)
                assert all(m["parent_header"]["msg_id"] == "ex-1" for m in seen)
        finally:
            await c.delete(f"/api/kernels/{kid}")
    # uvicorn logs the handshake; the key the client put in the query string is not in that line.
    assert f"WebSocket /api/kernels/{kid}/channels" in caplog.text
    assert KEY_A not in caplog.text


class TestPrefix:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"jupyter_prefix": "/jupyter"})

    async def test_open_webui_with_a_sub_path(self, service: Service) -> None:
        out = await execute_code_jupyter(f"{service.url}/jupyter", "print(1 + 1)", token=KEY_A, timeout=30)
        assert out.stdout == "2" and out.deleted == 204
        async with service.client() as c:
            assert (await c.get("/api/kernels")).status_code == 404
            assert (await c.get("/jupyter/api")).json() == {"version": "2.14.0"}
            specs = (await c.get("/jupyter/api/kernelspecs")).json()
            assert specs["default"] == "python3" and "python3" in specs["kernelspecs"]


async def _run_ws(ws: websockets.ClientConnection, code: str, msg_id: str) -> list[dict]:
    """Send one execute_request and collect what answers it, up to its idle status."""
    await ws.send(json.dumps(execute_request(code, msg_id)))
    seen: list[dict] = []
    while not seen or seen[-1].get("content") != {"execution_state": "idle"}:
        m = json.loads(await ws.recv())
        if m["parent_header"].get("msg_id") == msg_id:
            seen.append(m)
    return seen


async def test_sessions_interrupt_restart_and_shutdown(service: Service) -> None:
    async with service.client() as c:
        r = await c.post("/api/sessions", json={"path": "a.ipynb", "name": "a", "type": "notebook",
                                                "kernel": {"name": "python3"}})  # fmt: skip
        assert r.status_code == 201, r.text
        js = r.json()
        kid = js["kernel"]["id"]
        assert [s["id"] for s in (await c.get("/api/sessions")).json()] == [js["id"]]
        async with service.client(KEY_B) as b:
            assert (await b.get(f"/api/sessions/{js['id']}")).status_code == 404
            assert (await b.get("/api/sessions")).json() == []
        async with websockets.connect(ws_url(f"{service.url}/", {"token": KEY_A}, kid)) as ws:
            await _run_ws(ws, "x = 41", "set")
            await ws.send(
                json.dumps(execute_request("import time\nprint('sleeping', flush=True)\ntime.sleep(60)", "s"))
            )
            while json.loads(await ws.recv())["msg_type"] != "stream":
                pass  # the cell is running
            assert (await c.post(f"/api/kernels/{kid}/interrupt")).status_code == 204
            seen = []
            while not seen or seen[-1].get("content") != {"execution_state": "idle"}:
                seen.append(json.loads(await ws.recv()))
            reply = next(m for m in seen if m["msg_type"] == "execute_reply")
            assert reply["content"]["status"] in ("error", "aborted")
            # The kernel and its state survive an interrupt.
            got = await _run_ws(ws, "x + 1", "after")
            assert next(m for m in got if m["msg_type"] == "execute_result")["content"]["data"]["text/plain"] == "42"
        r = await c.post(f"/api/kernels/{kid}/restart")
        assert r.status_code == 200 and r.json()["id"] == kid
        async with websockets.connect(ws_url(f"{service.url}/", {"token": KEY_A}, kid)) as ws:
            got = await _run_ws(ws, "x", "gone")
            assert any(m["msg_type"] == "error" and m["content"]["ename"] == "NameError" for m in got)
            shutdown = execute_request("", "bye")
            shutdown.update(channel="control", content={"restart": False})
            shutdown["header"]["msg_type"] = "shutdown_request"
            await ws.send(json.dumps(shutdown))
            assert json.loads(await ws.recv())["msg_type"] == "shutdown_reply"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert (await c.get(f"/api/kernels/{kid}")).status_code == 404
        assert (await c.get("/api/sessions")).json() == []
