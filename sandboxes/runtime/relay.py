"""The egress relay: 127.0.0.1:PORT inside the sandbox, piped to the service's proxy socket in the run dir.

A sandbox has no network but loopback; the service binds one forward proxy per sandbox at a Unix socket in the
sandbox's run dir. HTTP clients only speak TCP proxies (``HTTP_PROXY=http://127.0.0.1:3128``), so this relay
accepts TCP on loopback and pipes each connection, byte for byte, to that Unix socket. It decides nothing: the
proxy on the other end enforces the policy and every limit, and code in the sandbox may as well connect to the
socket itself. The relay is only bounded so that it cannot take the kernel down (threads, fds, buffers).

Standard library only: this module runs inside every kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading

# Read size of one pipe step; asyncio's transport buffers above it are bounded by drain().
_CHUNK = 64 * 1024
# What the relay reads (and drops) of a request it cannot forward, so the 502 is not lost to a reset.
_DISCARD_LIMIT = 64 * 1024
_DISCARD_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 64
THREAD_NAME = "egress-relay"

# What the kernel can tell about its relay (for diagnostics): "not started", "listening on ...", "failed: ...".
STATUS = "not started"


def _unavailable(reason: str) -> bytes:
    body = json.dumps({"error": "egress_unavailable", "reason": reason}).encode()
    head = (
        "HTTP/1.1 502 Bad Gateway\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Relay:
    """Accepts on a bound, listening TCP socket and pipes every connection to the Unix socket ``socket_path``."""

    def __init__(self, listener: socket.socket, socket_path: str, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.listener = listener
        self.socket_path = socket_path
        self.max_connections = max_connections
        self.active = 0

    async def serve(self) -> None:
        """Serve until the loop stops (the kernel process ends)."""
        server = await asyncio.start_server(self._handle, sock=self.listener, limit=_CHUNK)
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            # Over the cap: close at once, nothing is read or buffered for it.
            writer.transport.abort()
            return
        self.active += 1
        try:
            _nodelay(writer)
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path, limit=_CHUNK)
            except OSError as exc:
                await self._refuse(reader, writer, f"the egress proxy is not reachable ({type(exc).__name__})")
                return
            await self._pipe_both(reader, writer, up_reader, up_writer)
        finally:
            self.active -= 1
            writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(_unavailable(reason))
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            # Read what the client sent (bounded) before closing: closing with unread data would reset the
            # connection and the client might never see the answer.
            seen = 0
            async with asyncio.timeout(_DISCARD_TIMEOUT_S):
                while seen < _DISCARD_LIMIT and (data := await reader.read(_CHUNK)):
                    seen += len(data)

    async def _pipe_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        tasks = {
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                # One side broke: drop both, the other pipe then ends on its own.
                writer.transport.abort()
                up_writer.transport.abort()
            await asyncio.wait(tasks)
        finally:
            for t in tasks:
                t.cancel()
            up_writer.close()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (half close), so request/response protocols finish cleanly."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.transport.is_closing():
        writer.write_eof()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _run(relay: Relay) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(relay.serve())
    except BaseException:  # the thread must never raise into the kernel's excepthook
        pass
    finally:
        with contextlib.suppress(Exception):
            loop.close()


def start(socket_path: str, port: int, *, host: str = "127.0.0.1", max_connections: int = MAX_CONNECTIONS) -> None:
    """Listen on ``host:port`` now and relay every connection to ``socket_path`` from one daemon thread.

    The port is bound before this returns, so a kernel that answers is a kernel whose relay listens; a bind
    failure raises OSError (the caller reports it; the kernel runs on without egress).
    """
    global STATUS
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        STATUS = f"failed: {exc}"
        raise
    relay = Relay(listener, socket_path, max_connections=max_connections)
    threading.Thread(target=_run, args=(relay,), name=THREAD_NAME, daemon=True).start()
    STATUS = f"listening on {host}:{port}"
