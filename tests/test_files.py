"""Files in the work dir: upload, list, download, delete, traversal refused, changes listed in results."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import BACKENDS, Service, run


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """This whole module runs once per backend: the same API, the same expectations."""
    return request.param


async def test_upload_list_download_delete(client: httpx.AsyncClient, session: dict) -> None:
    sid = session["id"]
    base = f"/api/v1/sessions/{sid}/files"
    r = await client.put(f"{base}/data/in.csv", content=b"a,b\n1,2\n")
    assert r.status_code == 201 and r.json()["size"] == 8
    listing = (await client.get(base)).json()
    assert [(f["path"], f["size"], f["mime_type"]) for f in listing] == [("data/in.csv", 8, "text/csv")]
    r = await run(client, sid, "open('data/in.csv').read()")
    assert r["result"] == "'a,b\\n1,2\\n'"
    r = await client.get(f"{base}/data/in.csv")
    assert r.status_code == 200 and r.content == b"a,b\n1,2\n"
    assert "attachment" in r.headers["content-disposition"]
    # The kernel can change what was uploaded: it owns it.
    assert (await run(client, sid, "open('data/in.csv', 'a').write('3,4\\n')"))["status"] == "ok"
    assert (await client.delete(f"{base}/data/in.csv")).status_code == 204
    assert (await client.get(f"{base}/data/in.csv")).status_code == 404
    assert (await client.delete(f"{base}/data")).status_code == 204
    assert (await client.get(base)).json() == []


async def test_traversal_and_symlinks_out_are_refused(client: httpx.AsyncClient, session: dict, tmp_path) -> None:
    sid = session["id"]
    base = f"/api/v1/sessions/{sid}/files"
    outside = tmp_path / "host-secret.txt"
    outside.write_text("host secret")
    for bad in ("..%2F..%2Fetc%2Fpasswd", "a/..%2F..%2Fx", "%2Fetc%2Fpasswd", ".%2Fx"):
        r = await client.get(f"{base}/{bad}")
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["field"] == "path"
    # Links planted by the cell point at host paths that are not in its jail; the service must not follow them.
    code = (
        "import os\n"
        f"os.symlink({str(outside)!r}, 'leak.txt')\n"
        f"os.symlink({str(tmp_path)!r}, 'leakdir')\n"
        "os.symlink('/etc', 'etc')\n"
    )
    assert (await run(client, sid, code))["status"] == "ok"
    for path in ("leak.txt", "leakdir/host-secret.txt", "etc/passwd"):
        r = await client.get(f"{base}/{path}")
        assert r.status_code == 400, (path, r.text)
        assert "host secret" not in r.text
    r = await client.put(f"{base}/leakdir/new.txt", content=b"x")
    assert r.status_code == 400
    assert not (tmp_path / "new.txt").exists()
    # Uploading over a link replaces the link, never writes through it.
    r = await client.put(f"{base}/leak.txt", content=b"replaced")
    assert r.status_code == 201
    assert outside.read_text() == "host secret"
    assert (await client.get(f"{base}/leak.txt")).content == b"replaced"
    assert "leak.txt" in [f["path"] for f in (await client.get(base)).json()]


async def test_changed_files_are_listed_inline_or_by_url(
    service: Service, client: httpx.AsyncClient, session: dict
) -> None:
    sid = session["id"]
    big = service.settings.inline_file_max_bytes + 1
    code = (
        "open('small.txt', 'w').write('hello')\n"
        f"open('big.bin', 'wb').write(b'x' * {big})\n"
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 2]); plt.savefig('plot.png'); plt.close('all')\n"
    )
    r = await run(client, sid, code)
    files = {f["path"]: f for f in r["files"]}
    assert set(files) == {"small.txt", "big.bin", "plot.png"}
    assert base64.b64decode(files["small.txt"]["data"]) == b"hello"
    assert files["plot.png"]["mime_type"] == "image/png"
    assert base64.b64decode(files["plot.png"]["data"]).startswith(b"\x89PNG")
    assert files["big.bin"]["data"] is None and files["big.bin"]["size"] == big
    url = files["big.bin"]["url"]
    assert url == f"/api/v1/sessions/{sid}/files/big.bin"
    assert len((await client.get(url)).content) == big
    # Unchanged files are not listed again.
    r = await run(client, sid, "open('small.txt').read()")
    assert r["files"] == []


async def test_upload_too_large_is_refused(service: Service, client: httpx.AsyncClient, session: dict) -> None:
    service.settings.max_upload_mb = 1
    r = await client.put(f"/api/v1/sessions/{session['id']}/files/x.bin", content=b"0" * (1024 * 1024 + 1))
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"
    assert (await client.get(f"/api/v1/sessions/{session['id']}/files")).json() == []


async def test_a_cell_writing_more_files_than_a_result_lists_says_how_many_are_left_out(
    service: Service, client: httpx.AsyncClient, session: dict
) -> None:
    service.settings.max_result_files = 100
    code = "import os\nos.mkdir('many')\nfor i in range(150):\n    open(f'many/{i:04d}', 'w').close()\n"
    r = await run(client, session["id"], code)
    assert len(r["files"]) == 100
    assert r["files_truncated"] is True and r["files_omitted"] == 50
    r = await run(client, session["id"], "open('one.txt', 'w').write('1')")
    assert [f["path"] for f in r["files"]] == ["one.txt"]
    assert r["files_truncated"] is False and r["files_omitted"] == 0
