"""One access line per request through the real HTTP service: method, path, status, duration, principal; never the
query string or a header."""

from __future__ import annotations

import logging
import re

import pytest

from tests.conftest import KEY_A, Service

LINE = re.compile(r"^(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}|-) (?P<ms>\d+\.\d)ms (?P<who>\S+)$")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "executor.access"]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m for m in matches if m]


async def test_one_line_per_request_with_status_duration_and_principal(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.access")
    async with service.client() as c:
        me = (await c.get("/api/v1/me")).json()
        caplog.clear()
        assert (await c.get("/api/v1/sessions", params={"all": "false", "api_key": "query-secret"})).status_code == 200
        assert (await c.get("/api/v1/sessions/no-such-session")).status_code == 404
        bad = await c.post("/api/v1/sessions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422
    async with service.client(key="wrong-key-xyz") as c:
        assert (await c.get("/api/v1/sessions", headers={"X-Secret-Header": "header-secret"})).status_code == 401
    async with service.client(key=None) as c:
        assert (await c.get("/healthz")).status_code == 200

    got = access_lines(caplog)
    assert [(m["method"], m["path"], m["status"]) for m in got] == [
        ("GET", "/api/v1/sessions", "200"),
        ("GET", "/api/v1/sessions/no-such-session", "404"),
        ("POST", "/api/v1/sessions", "422"),
        ("GET", "/api/v1/sessions", "401"),
        ("GET", "/healthz", "200"),
    ]
    principal = me["id"]
    # The malformed body is refused before authentication runs; a bad key never becomes a principal.
    assert [m["who"] for m in got] == [principal, principal, "-", "-", "-"]
    assert principal.startswith("key-")
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("query-secret", "api_key", "header-secret", KEY_A, "wrong-key-xyz", "Bearer"):
        assert secret not in text
    record = next(r for r in caplog.records if r.name == "executor.access")
    assert record.http_status == 200 and record.duration_ms >= 0  # type: ignore[attr-defined]


async def test_a_path_cannot_forge_a_second_log_line(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="executor.access")
    async with service.client() as c:
        await c.get("/api/v1/sessions/x%0AGET%20/forged%20200")
    (line,) = access_lines(caplog)
    assert "\n" not in line.string and line["path"] == "/api/v1/sessions/x%0AGET%20/forged%20200"
