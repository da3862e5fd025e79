"""/docs and /redoc render with no network: their assets come from the service, checked in a real headless Chromium."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import Service

# Only loopback resolves and connects: a page that still needed a CDN would stay blank, as it does offline.
OFFLINE = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def chromium() -> str:
    """The headless browser, or skip (outside CI) / fail (CI=true) saying how to get one."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


async def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (``--virtual-time-budget`` lets them finish, fetches included)."""
    proc = await asyncio.create_subprocess_exec(
        chromium(),
        "--headless",
        "--no-sandbox",  # the tests run as root, where Chromium's own sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--host-resolver-rules={OFFLINE}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


async def test_docs_page_links_only_to_the_service(service: Service) -> None:
    async with service.client(key=None) as client:  # the docs need no key, as /openapi.json does not
        await check_docs_page(client)


async def check_docs_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert urls and all(u.startswith("/docs/static/") for u in urls), urls
    assert "https://" not in r.text and "http://" not in r.text
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, url
    r = await client.get("/redoc")
    assert r.status_code == 200 and "https://" not in r.text and "fonts.googleapis" not in r.text


async def test_swagger_ui_renders_offline_in_chromium(service: Service, tmp_path: Path) -> None:
    dom = await rendered_dom(f"{service.url}/docs", tmp_path / "profile")
    # Swagger UI built the operation list from /openapi.json: every operation is an "opblock" with its path.
    assert 'class="swagger-ui"' in dom, dom[:2000]
    assert 'class="opblock opblock-post" id="operations-sessions-create_session' in dom, "POST /sessions not rendered"
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/api/v1/sessions", "/api/v1/sessions/{session_id}", "/api/v1/execute"} <= paths, sorted(paths)


async def test_redoc_renders_offline_in_chromium(service: Service, tmp_path: Path) -> None:
    dom = await rendered_dom(f"{service.url}/redoc", tmp_path / "profile")
    assert "/api/v1/sessions/{session_id}/executions" in dom, dom[:2000]
