"""The forward proxy one sandbox reaches through a Unix socket in its run dir.

HTTP/1.1 only: ``CONNECT host:port`` (HTTPS and any other TCP protocol; the proxy never sees inside the
tunnel) and absolute-form plain HTTP (``GET http://host/path``), forwarded in origin form on a fresh upstream
connection, one request per client connection. Every target is decided by :func:`decide` on the name asked
for, and the connection goes to exactly the addresses that decision checked (no second lookup). Limits are per
sandbox: live connections, total bytes each way, and the lifetime and idle time of one connection. Each
connection yields one :class:`EgressRecord` (who asked is the caller's to add); headers and payloads are never
logged or recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import h11

from executor.egress.policy import Decision, Resolver, SandboxPolicy, decide, system_resolve

log = logging.getLogger(__name__)

CHUNK = 64 << 10
# Never forwarded: they describe one hop, not the request (RFC 9110 7.6.1), or they are the proxy's own.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",  # the proxy answers 100-continue itself
    }
)


@dataclass(frozen=True)
class ProxyLimits:
    """Per-sandbox limits: byte caps are totals over the proxy's life (downloads in, uploads out)."""

    max_connections: int = 16
    max_bytes_in: int = 512 << 20
    max_bytes_out: int = 64 << 20
    connection_timeout_s: float = 300
    idle_timeout_s: float = 60
    connect_timeout_s: float = 10
    max_head_bytes: int = 32 << 10


@dataclass
class EgressRecord:
    """What the audit keeps of one decision/connection: never headers or payloads."""

    host: str
    port: int
    method: str
    addresses: tuple[str, ...] = ()
    allowed: bool = False
    rule: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: int = 0
    cut: str | None = None  # "bytes" | "time" | "idle" | "connections"
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = asdict(self)
        data["addresses"] = list(self.addresses)
        return data


class _Reject(Exception):
    """Answer the client with ``status`` and a JSON body, then close."""

    def __init__(self, status: int, body: dict[str, Any], *, rule: str, error: str | None = None) -> None:
        super().__init__(rule)
        self.status = status
        self.body = body
        self.rule = rule
        self.error = error


class _Cut(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    504: b"Gateway Timeout",
}


def _json_response(status: int, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} ".encode()
        + _REASONS.get(status, b"Error")
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    return head + payload


def _bad(message: str) -> _Reject:
    return _Reject(400, {"error": "egress_bad_request", "reason": message}, rule="bad-request", error=message)


def _with_host(head: bytes) -> bytes:
    """h11 refuses an HTTP/1.1 request without ``Host``; a proxy request names its target anyway (some CONNECT
    clients leave it out), so give the parser a placeholder. Only the request line's target is ever used."""
    line, sep, rest = head.partition(b"\r\n")
    if any(h.split(b":", 1)[0].strip().lower() == b"host" for h in rest.split(b"\r\n")):
        return head
    return line + sep + b"Host: proxy.invalid\r\n" + rest


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` (with a default port) -> (host, port); ValueError when malformed."""
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep:
            raise ValueError("unclosed [")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError("junk after ]")
    else:
        host, sep, port_text_ = authority.rpartition(":")
        if not sep:
            host, port_text = authority, None
        else:
            port_text = port_text_
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets")
    if port_text is None or port_text == "":
        if default_port is None:
            raise ValueError("no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("bad port")
    return host, int(port_text)


class _Conn:
    """Book-keeping of one client connection: what becomes its record."""

    def __init__(self, proxy: SandboxProxy, started: float) -> None:
        self.proxy = proxy
        self.started = started
        self.record = EgressRecord(host="", port=0, method="")
        self.last_activity = started


class SandboxProxy:
    """The egress proxy of one sandbox. ``policy`` may be replaced at any time; new connections use the new one."""

    def __init__(
        self,
        policy: SandboxPolicy,
        limits: ProxyLimits,
        on_record: Callable[[EgressRecord], None],
        *,
        resolve: Resolver = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self._on_record = on_record
        self._resolve = resolve
        # Reserved for upstream TLS the proxy would originate itself; today HTTPS only travels through CONNECT.
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._path: Path | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._total = 0
        self._refused = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def serve(self, path: Path, *, owner_uid: int | None) -> None:
        """Listen on the Unix socket ``path`` (a stale file there is replaced); returns once listening."""
        if self._closed:
            raise RuntimeError("this proxy is closed")
        if self._server is not None:
            raise RuntimeError("this proxy is already serving")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of an earlier run (a directory there is an error)
        self._server = await asyncio.start_unix_server(self._handle, path=str(path), limit=self.limits.max_head_bytes)
        self._path = path
        if owner_uid is not None:
            os.chown(path, owner_uid, -1)
            os.chmod(path, 0o600)
        else:
            # The sandbox's uid is unknown here: the run dir around the socket is what keeps others out.
            os.chmod(path, 0o666)

    def usage(self) -> dict[str, int]:
        """Live counts: open connections, bytes so far each way, connections handled and refused."""
        return {
            "connections": self._active,
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
            "total_connections": self._total,
            "refused": self._refused,
        }

    async def aclose(self) -> None:
        """Stop listening, cut every live connection, remove the socket file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    # -- one connection --------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._closed:
            writer.close()
            return
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        conn = _Conn(self, loop.time())
        counted = False
        decided = False
        try:
            try:
                head = await self._read_head(reader)
                if head is None:
                    return  # closed before sending anything: nothing was asked, nothing to record
                decided = True
                head = _with_host(head)
                method, target, headers = self._parse_head(head)
                conn.record.method = method
                host, port, url, authority = self._parse_target(method, target)
                conn.record.host, conn.record.port = host, port
                if self._active >= self.limits.max_connections:
                    conn.record.cut = "connections"
                    raise _Reject(429, {"error": "egress_limit", "limit": "connections"}, rule="limit:connections")
                for name, used, cap in (
                    ("bytes_in", self._bytes_in, self.limits.max_bytes_in),
                    ("bytes_out", self._bytes_out, self.limits.max_bytes_out),
                ):
                    if used >= cap:
                        conn.record.cut = "bytes"
                        raise _Reject(429, {"error": "egress_limit", "limit": name}, rule=f"limit:{name}")
                self._active += 1
                counted = True
                decision = await self._decide(conn, host, port)
                if url is None:
                    await self._connect(conn, reader, writer, decision)
                else:
                    deadline = conn.started + self.limits.connection_timeout_s
                    try:
                        async with asyncio.timeout_at(deadline):
                            await self._exchange(conn, reader, writer, method, url, authority, headers, head, decision)
                    except TimeoutError:
                        raise _Cut("time") from None
            except _Reject as rej:
                conn.record.rule = conn.record.rule or rej.rule
                conn.record.error = rej.error
                self._refused += 1
                with contextlib.suppress(Exception):
                    writer.write(_json_response(rej.status, rej.body))
                    await asyncio.wait_for(writer.drain(), self.limits.idle_timeout_s)
            except _Cut as cut:
                conn.record.cut = cut.why
            except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError) as exc:
                conn.record.error = conn.record.error or type(exc).__name__
        except asyncio.CancelledError:
            conn.record.error = conn.record.error or "proxy closed"
            raise
        except Exception as exc:  # a bug here must cost one connection, not the proxy
            log.exception("egress proxy: connection failed")
            conn.record.error = type(exc).__name__
        finally:
            if counted:
                self._active -= 1
            self._tasks.discard(task)
            writer.close()
            if decided or conn.record.rule:
                self._total += 1
                conn.record.duration_ms = int((loop.time() - conn.started) * 1000)
                try:
                    self._on_record(conn.record)
                except Exception:
                    log.exception("egress proxy: on_record failed")

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                return await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise _bad("the request head ended early") from None
        except asyncio.LimitOverrunError:
            raise _Reject(
                431, {"error": "egress_bad_request", "reason": "request head too large"}, rule="bad-request"
            ) from None
        except TimeoutError:
            raise _bad("no complete request head in time") from None

    def _parse_head(self, head: bytes) -> tuple[str, str, list[tuple[bytes, bytes]]]:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        parser.receive_data(head)
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise _bad(f"malformed request: {exc}") from None
        if not isinstance(event, h11.Request):
            raise _bad("malformed request")
        return (
            event.method.decode("ascii", "replace").upper(),
            event.target.decode("ascii", "replace"),
            list(event.headers),
        )

    @staticmethod
    def _parse_target(method: str, target: str) -> tuple[str, int, SplitResult | None, str]:
        """(host, port, the URL for plain HTTP or None for CONNECT, the authority as written)."""
        if method == "CONNECT":
            try:
                host, port = split_authority(target, None)
            except ValueError as exc:
                raise _bad(f"CONNECT needs host:port ({exc})") from None
            return host, port, None, target
        if target.startswith("/") or target == "*":
            raise _bad("this is a forward proxy: send absolute-form requests (http://host/path) or CONNECT")
        try:
            url = urlsplit(target)
        except ValueError:
            raise _bad("unparsable request target") from None
        if url.scheme == "https":
            raise _bad("https:// through a proxy goes by CONNECT")
        if url.scheme != "http" or not url.netloc:
            raise _bad("only http:// targets are forwarded (https goes by CONNECT)")
        authority = url.netloc.rpartition("@")[2]  # user info never travels on
        try:
            host, port = split_authority(authority, 80)
        except ValueError as exc:
            raise _bad(f"bad host in the request target ({exc})") from None
        return host, port, url, authority

    async def _decide(self, conn: _Conn, host: str, port: int) -> Decision:
        policy = self.policy  # one policy for the whole decision, even if it is replaced meanwhile
        decision = await decide(policy, host, port, resolve=self._resolve)
        rec = conn.record
        rec.host, rec.port, rec.addresses = decision.host, decision.port, decision.addresses
        rec.allowed, rec.rule = decision.allowed, decision.rule
        if not decision.allowed:
            raise _Reject(
                403,
                {
                    "error": "egress_refused",
                    "rule": decision.rule,
                    "reason": decision.reason,
                    "host": decision.host,
                    "port": decision.port,
                    "policy": policy.mode.value,
                },
                rule=decision.rule,
            )
        return decision

    async def _open_upstream(
        self, conn: _Conn, decision: Decision
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last = "no address"
        for address in decision.addresses:
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    up_reader, up_writer = await asyncio.open_connection(address, decision.port, limit=CHUNK)
            except TimeoutError:
                last = f"connect to {address} timed out"
                continue
            except OSError as exc:
                last = f"connect to {address} failed: {exc.strerror or type(exc).__name__}"
                continue
            sock = up_writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return up_reader, up_writer
        conn.record.error = last[:200]
        raise _Reject(
            502,
            {"error": "egress_upstream", "host": decision.host, "port": decision.port, "reason": last},
            rule=conn.record.rule,
            error=last[:200],
        )

    # -- CONNECT ---------------------------------------------------------------------------------------------

    async def _connect(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decision: Decision
    ) -> None:
        up_reader, up_writer = await self._open_upstream(conn, decision)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._pipe(conn, reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _pipe(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy both ways until both ends are done; raise _Cut when a limit ends it first."""
        loop = asyncio.get_running_loop()
        cut: list[str] = []

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, inbound: bool) -> None:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                conn.last_activity = loop.time()
                room = self._room(inbound)
                if len(data) > room:
                    data = data[:room]
                    cut.append("bytes")
                self._count(conn, inbound, len(data))
                dst.write(data)
                await dst.drain()
                if cut:
                    return

        async def watchdog() -> None:
            while True:
                left = conn.last_activity + self.limits.idle_timeout_s - loop.time()
                if left <= 0:
                    cut.append("idle")
                    return
                await asyncio.sleep(left)

        deadline = conn.started + self.limits.connection_timeout_s
        tasks = [
            asyncio.ensure_future(copy(reader, up_writer, inbound=False)),
            asyncio.ensure_future(copy(up_reader, writer, inbound=True)),
        ]
        dog = asyncio.ensure_future(watchdog())
        try:
            pending = set(tasks)
            while pending:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    cut.append("time")
                    break
                done, pending = await asyncio.wait(
                    pending | {dog}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(dog)
                if cut:
                    break
                for task in done:
                    # The server finished (or one side reset): nothing more can usefully travel.
                    if task is tasks[1] or (task is not dog and task.exception() is not None):
                        pending = set()
                        break
        finally:
            for task in [*tasks, dog]:
                task.cancel()
            await asyncio.gather(*tasks, dog, return_exceptions=True)
        if cut:
            raise _Cut(cut[0])

    def _room(self, inbound: bool) -> int:
        if inbound:
            return max(0, self.limits.max_bytes_in - self._bytes_in)
        return max(0, self.limits.max_bytes_out - self._bytes_out)

    def _count(self, conn: _Conn, inbound: bool, n: int) -> None:
        if inbound:
            self._bytes_in += n
            conn.record.bytes_in += n
        else:
            self._bytes_out += n
            conn.record.bytes_out += n

    # -- plain HTTP ------------------------------------------------------------------------------------------

    async def _exchange(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        url: SplitResult,
        authority: str,
        headers: list[tuple[bytes, bytes]],
        head: bytes,
        decision: Decision,
    ) -> None:
        idle = self.limits.idle_timeout_s
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        client.receive_data(head)
        request = client.next_event()
        assert isinstance(request, h11.Request)
        listed = {
            token.strip().lower()
            for name, value in headers
            if name.lower() == b"connection"
            for token in value.split(b",")
        }
        chunked = any(name.lower() == b"transfer-encoding" for name, _ in headers)
        out_headers = [
            (name, value)
            for name, value in headers
            if (low := name.lower()) not in HOP_BY_HOP
            and low not in listed
            and not low.startswith(b"proxy-")
            and low != b"host"
        ]
        out_headers.insert(0, (b"host", authority.encode("ascii", "replace")))
        if chunked:
            out_headers.append((b"transfer-encoding", b"chunked"))
        out_headers.append((b"connection", b"close"))
        path = url.path or "/"
        origin_target = path + (f"?{url.query}" if url.query else "")

        up_reader, up_writer = await self._open_upstream(conn, decision)
        started_response = False
        try:
            upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.limits.max_head_bytes)

            def send_up(event: h11.Event) -> None:
                data = upstream.send(event)
                if data:
                    room = self._room(inbound=False)
                    if len(data) > room:
                        raise _Cut("bytes")
                    self._count(conn, False, len(data))
                    up_writer.write(data)

            send_up(h11.Request(method=method, target=origin_target, headers=out_headers))
            await up_writer.drain()
            if client.they_are_waiting_for_100_continue:
                writer.write(client.send(h11.InformationalResponse(status_code=100, headers=[])))
                await writer.drain()
            # The request body, streamed as it comes.
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    async with asyncio.timeout(idle):
                        data = await reader.read(CHUNK)
                    client.receive_data(data)
                    continue
                if isinstance(event, h11.Data):
                    send_up(h11.Data(data=event.data))
                    await up_writer.drain()
                    continue
                if isinstance(event, h11.EndOfMessage):
                    send_up(h11.EndOfMessage())
                    await up_writer.drain()
                    break
                raise _bad("malformed request body")
            # The response, streamed back.
            over = False
            while True:
                event = upstream.next_event()
                if event is h11.NEED_DATA:
                    if over:
                        raise _Cut("bytes")
                    async with asyncio.timeout(idle):
                        data = await up_reader.read(CHUNK)
                    room = self._room(inbound=True)
                    if len(data) > room:  # deliver up to the cap, then cut
                        data, over = data[:room], True
                    self._count(conn, True, len(data))
                    upstream.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    listed_resp = {
                        token.strip().lower()
                        for name, value in event.headers
                        if name.lower() == b"connection"
                        for token in value.split(b",")
                    }
                    resp_headers = [
                        (name, value)
                        for name, value in event.headers
                        if (low := name.lower()) not in HOP_BY_HOP
                        and low not in listed_resp
                        and not low.startswith(b"proxy-")
                    ]
                    resp_headers.append((b"connection", b"close"))
                    writer.write(
                        client.send(
                            h11.Response(status_code=event.status_code, headers=resp_headers, reason=event.reason)
                        )
                    )
                    started_response = True
                    await writer.drain()
                    continue
                if isinstance(event, h11.Data):
                    writer.write(client.send(h11.Data(data=event.data)))
                    await writer.drain()
                    continue
                if isinstance(event, h11.EndOfMessage):
                    writer.write(client.send(h11.EndOfMessage()))
                    await writer.drain()
                    return
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("upstream closed mid-response")
                raise ConnectionResetError("unexpected upstream event")
        except h11.RemoteProtocolError as exc:
            if not started_response:
                raise _Reject(
                    502,
                    {"error": "egress_upstream", "host": decision.host, "port": decision.port, "reason": str(exc)},
                    rule=conn.record.rule,
                    error=f"upstream protocol error: {exc}"[:200],
                ) from None
            raise
        except TimeoutError:
            raise _Cut("idle") from None
        finally:
            up_writer.close()
