"""The outbound-HTTP policy: every request the service makes to the outside goes through here.

SSRF protection works at the socket level: the HTTP client's connection pool gets a network backend that
resolves the host, refuses forbidden addresses (loopback, private, link-local, CGNAT, unique-local,
multicast, unspecified, reserved, cloud metadata) unless the admin's allow-list permits them, and then
connects to exactly the address it checked. TLS and the ``Host`` header still use the original name, so
certificates are verified as usual, and there is no second DNS lookup an attacker could rebind. Redirects
are followed here (never by httpx) so each hop is checked the same way, credentials are dropped when the
origin changes, and the number of hops is capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json as jsonlib
import logging
import random
import re
import socket
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpcore
import httpx

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses that answer for cloud instance metadata; refused even though some are not "private".
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "fd00:ec2::254",  # AWS IPv6
    )
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})
# Headers kept when a redirect leaves the origin; everything else may carry credentials.
CROSS_ORIGIN_SAFE_HEADERS = frozenset({"accept", "accept-encoding", "accept-language", "user-agent", "connection"})


class EgressDenied(Exception):
    """An outbound request was refused by policy; ``rule`` names the rule that refused it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def forbidden_reason(ip: IPAddress) -> str | None:
    """Return why ``ip`` may not be reached without an allow-list entry, or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 reaches the IPv4 host: judge that one.
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return forbidden_reason(mapped)
        if ip.teredo is not None:
            return forbidden_reason(ip.teredo[1])
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "cgnat"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "unique-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """The admin's allow-list: host names, ``host:port`` pairs and CIDR networks."""

    hosts: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EgressPolicy:
        """Parse ``EXECUTOR_EGRESS_ALLOWLIST`` entries; raise ValueError naming a bad one."""
        hosts: set[str] = set()
        host_ports: set[tuple[str, int]] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host, sep, port = entry.rpartition(":")
            if sep and port.isdigit() and host and not host.endswith(":"):
                if not 0 < int(port) < 65536:
                    raise ValueError(f"egress allow-list entry {raw!r}: port out of range")
                host_ports.add((host.strip("[]"), int(port)))
            elif entry.replace(".", "").replace("-", "").replace("_", "").isalnum():
                hosts.add(entry)
            else:
                raise ValueError(f"egress allow-list entry {raw!r} is not a host, host:port or CIDR")
        return cls(frozenset(hosts), frozenset(host_ports), tuple(networks))

    def allows(self, host: str, port: int, ip: IPAddress) -> bool:
        """True when an allow-list entry covers this name, name:port, address or address:port."""
        host = host.lower().strip("[]")
        if host in self.hosts or (host, port) in self.host_ports:
            return True
        if (str(ip), port) in self.host_ports or str(ip) in self.hosts:
            return True
        return any(ip.version == net.version and ip in net for net in self.networks)

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return the addresses that may be connected to, in resolver order.

        Refuses the whole host when any of its addresses is forbidden: a name that resolves to both a
        public and an internal address is an attack, not a fallback.
        """
        bare = host.strip("[]")
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(bare)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    bare, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except (socket.gaierror, UnicodeError) as exc:
                raise EgressDenied("dns", f"cannot resolve host {bare!r}: {exc}") from exc
            addresses = []
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise EgressDenied("dns", f"host {bare!r} has no address") from None
        for ip in addresses:
            reason = forbidden_reason(ip)
            if reason and not self.allows(bare, port, ip):
                raise EgressDenied(
                    reason,
                    f"refused to connect to {bare}:{port}: address {ip} is {reason} "
                    "(add the host, host:port or a CIDR to EXECUTOR_EGRESS_ALLOWLIST to allow it)",
                )
        return [str(ip) for ip in addresses]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that checks the policy and connects to the checked address only.

    httpcore hands the original host name to :meth:`connect_tcp` and later to the stream's ``start_tls``, so
    replacing the address here leaves SNI and certificate checks on the name.
    """

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied("unix-socket", "outbound calls may not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions as httpx names them, most specific first (what httpx's own transport does).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _as_httpx(exc: Exception, request: httpx.Request | None = None) -> Exception:
    for core, mapped in _EXCEPTIONS:
        if isinstance(exc, core):
            return mapped(str(exc), request=request)
    return exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            mapped = _as_httpx(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx transport on an httpcore pool that dials through :class:`GuardedBackend` (public API only)."""

    def __init__(self, policy: EgressPolicy, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            resp = await self._pool.handle_async_request(req)
        except Exception as exc:
            mapped = _as_httpx(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream, request),
            extensions=resp.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@dataclass
class OutboundResponse:
    """A fully read (and possibly cut) response."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    truncated: bool = False
    redirects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        ctype: str = self.headers.get("content-type", "")
        return ctype.split(";")[0].strip().lower()

    def text(self) -> str:
        """The body as text in its declared charset; UTF-8 (with replacement characters) when that is unknown."""
        return decode_text(self.content, charset(self.headers))


def charset(headers: httpx.Headers) -> str:
    """The ``charset`` of the Content-Type header, as sent (may name no codec), or ``utf-8``."""
    ctype: str = headers.get("content-type", "")
    for part in ctype.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip().strip('"').strip("'")
    return "utf-8"


def decode_text(content: bytes, encoding: str) -> str:
    """Decode with replacement; a charset Python does not know, or one that is not a text encoding (a remote
    server chooses it), falls back to UTF-8 instead of raising ``LookupError``."""
    try:
        return content.decode(encoding, errors="replace")
    except LookupError:  # also what bytes.decode raises for a bytes-to-bytes codec such as base64
        return content.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class OutboundLimits:
    """Timeouts, retries, redirects and the size cap of one kind of outbound call."""

    connect_timeout_s: float = 5
    read_timeout_s: float = 30
    total_timeout_s: float = 60
    retries: int = 2
    backoff_s: float = 0.5
    max_redirects: int = 5
    max_response_bytes: int = 10 << 20


class OutboundTimeout(Exception):
    """The total time of an outbound call ran out."""


def check_header(name: str, value: str) -> None:
    """Refuse header names and values that could split a request (CR, LF, NUL)."""
    if not name or any(c in name for c in "\r\n\0:") or name != name.strip():
        raise EgressDenied("header-injection", f"header name {name!r} is not allowed")
    if any(c in value for c in "\r\n\0"):
        raise EgressDenied("header-injection", f"header {name!r} contains CR, LF or NUL")


def check_path_value(name: str, value: str) -> None:
    """Refuse path parameter values that would climb out of the operation's path once decoded."""
    for seg in value.replace("\\", "/").split("/"):
        if seg in (".", ".."):
            raise EgressDenied("path-traversal", f"path parameter {name!r} contains a '.' or '..' segment")


_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


def numeric_host_problem(host: str) -> str | None:
    """Why ``host`` is refused as an IPv4 literal in a non-standard form, or None.

    ``0177.0.0.1`` (octal), ``0x7f.1`` (hex, short form) and ``2130706433`` (one integer) all mean 127.0.0.1 to
    the C resolver and to browsers, but not to Python's ``ipaddress`` or to people reading an allow-list: a
    host whose last label is a number must be four plain decimal numbers.
    """
    bare = host.strip("[]").rstrip(".")
    if not bare or ":" in bare:
        return None
    if not _NUMERIC_LABEL.match(bare.rsplit(".", 1)[-1]):
        return None
    try:
        ipaddress.IPv4Address(bare)  # refuses leading zeros as well
    except ValueError:
        return (
            f"host {host!r} is an IPv4 address in a non-standard form (octal, hex, a single integer or fewer "
            "than four parts); write it as four decimal numbers, e.g. 127.0.0.1"
        )
    return None


def parse_url(url: str | httpx.URL) -> httpx.URL:
    """``httpx.URL(url)``, refusing URLs httpx cannot parse and hosts :func:`numeric_host_problem` refuses."""
    if isinstance(url, httpx.URL):
        parsed = url
    else:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise EgressDenied("url", f"invalid URL {redact(url)!r}: {exc}") from None
    problem = numeric_host_problem(parsed.host)
    if problem:
        raise EgressDenied("ip-literal", problem)
    return parsed


def redact(url: str | httpx.URL) -> str:
    """``url`` fit to be logged or shown: user info dropped, each query value and the fragment replaced."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.split("?", 1)[0].split("#", 1)[0]
    netloc = parts.netloc.rpartition("@")[2]
    # A name=value pair keeps its name; a bare item ("?TOKEN") may be the secret itself.
    query = "&".join(f"{pair.split('=', 1)[0]}=***" if "=" in pair else "***" for pair in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", "***" if parts.fragment else ""))


def origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port (httpx drops default ports), for "is this the same server?" checks."""
    if not isinstance(url, httpx.URL):
        url = httpx.URL(url)
    return url.scheme, url.host, url.port


def same_origin(a: str, b: str) -> bool:
    """Both URLs set and on one server: where a connection's credentials may go."""
    try:
        return bool(a) and bool(b) and origin(a) == origin(b)
    except httpx.InvalidURL:
        return False


# What httpx.AsyncClient adds to every request; this client sends through the transport directly.
DEFAULT_HEADERS = (
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("User-Agent", f"python-httpx/{httpx.__version__}"),
)


class OutboundClient:
    """One shared connection pool with the policy applied to every request.

    Requests go straight to :class:`GuardedTransport` (no ``httpx.AsyncClient``): redirects, cookies and
    proxies are all things this client must not do on its own, and skipping the client's machinery is a
    measurable part of a tool call's overhead.
    """

    def __init__(self, policy: EgressPolicy, limits: OutboundLimits) -> None:
        self.policy = policy
        self.limits = limits
        self._transport = GuardedTransport(policy)
        self._timeouts: dict[OutboundLimits, dict[str, float | None]] = {}

    async def aclose(self) -> None:
        await self._transport.aclose()

    def _timeout(self, lim: OutboundLimits) -> dict[str, float | None]:
        found = self._timeouts.get(lim)
        if found is None:
            timeout = httpx.Timeout(lim.read_timeout_s, connect=lim.connect_timeout_s, pool=lim.connect_timeout_s)
            found = self._timeouts[lim] = timeout.as_dict()
        return found

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        limits: OutboundLimits | None = None,
    ) -> OutboundResponse:
        """Send one request: checked, retried, redirect-followed and size-capped within the total timeout.

        Raises :class:`EgressDenied` (also for a URL that cannot be parsed), :class:`OutboundTimeout` or
        ``httpx.HTTPError`` (connection errors after the last retry).
        """
        lim = limits or self.limits
        method = method.upper()
        hdrs = httpx.Headers(DEFAULT_HEADERS)
        for name, value in (headers or {}).items():
            check_header(name, value)
            hdrs[name] = value
        if json is not None:
            content = _json_bytes(json)
            hdrs.setdefault("content-type", "application/json")
        target = parse_url(url)
        try:
            async with asyncio.timeout(lim.total_timeout_s):
                return await self._follow(method, target, hdrs, content, lim)
        except TimeoutError as exc:
            raise OutboundTimeout(f"no complete response within {lim.total_timeout_s:g}s") from exc

    async def _follow(
        self, method: str, url: httpx.URL, headers: httpx.Headers, content: bytes | None, lim: OutboundLimits
    ) -> OutboundResponse:
        redirects: list[str] = []
        while True:
            if url.scheme not in ("http", "https"):
                raise EgressDenied("scheme", f"scheme {url.scheme!r} is not allowed (only http and https)")
            resp = await self._with_retries(method, url, headers, content, lim)
            location = resp.headers.get("location")
            if resp.status_code not in (301, 302, 303, 307, 308) or not location:
                resp.redirects = redirects
                return resp
            if len(redirects) >= lim.max_redirects:
                raise EgressDenied("redirects", f"more than {lim.max_redirects} redirects")
            target = parse_url(urljoin(str(url), location))
            if origin(target) != origin(url):
                headers = httpx.Headers(
                    {
                        k: v
                        for k, v in headers.items()
                        if k.lower() in CROSS_ORIGIN_SAFE_HEADERS or k.lower() == "connection"
                    }
                )
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                # What browsers do: the body does not follow, and neither does its type.
                method = "GET" if method != "HEAD" else method
                content = None
                headers = httpx.Headers(
                    {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")}
                )
            redirects.append(str(target))
            url = target

    async def _with_retries(
        self, method: str, url: httpx.URL, headers: httpx.Headers, content: bytes | None, lim: OutboundLimits
    ) -> OutboundResponse:
        attempts = 1 + (lim.retries if method in IDEMPOTENT_METHODS else 0)
        for attempt in range(attempts):
            last_try = attempt == attempts - 1
            try:
                resp = await self._send_once(method, url, headers, content, lim)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                if last_try:
                    raise
            else:
                if last_try or resp.status_code not in RETRY_STATUSES:
                    return resp
            # Full jitter: spreads retries of many callers instead of synchronising them.
            await asyncio.sleep(random.uniform(0, lim.backoff_s * (2**attempt)))
        raise AssertionError("unreachable")

    async def _send_once(
        self, method: str, url: httpx.URL, headers: httpx.Headers, content: bytes | None, lim: OutboundLimits
    ) -> OutboundResponse:
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": self._timeout(lim)}
        )
        started = time.monotonic()
        response = await self._transport.handle_async_request(request)
        try:
            body, truncated = await _read_capped(response, lim.max_response_bytes)
        finally:
            await response.aclose()
        log.debug(
            "outbound %s %s://%s%s -> %s in %.0f ms",
            method,
            url.scheme,
            url.host,
            url.path,  # never the query: it may carry a key
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return OutboundResponse(
            status_code=response.status_code,
            headers=response.headers,
            content=body,
            url=str(url),
            truncated=truncated,
        )


class _Inflater:
    """gzip or deflate, decoded so that no input chunk can make more than ``room`` bytes at once.

    A 64 KiB chunk of a compressed run of zeros is 64 MiB decoded; httpx's decoders return it whole before any
    cap can look at it, so the body is decoded here, with ``max_length``.
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._deflate_guess = encoding == "deflate"
        wbits = zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)

    def decode(self, data: bytes, room: int) -> bytes:
        try:
            out = self._z.decompress(data, room + 1)
        except zlib.error:
            if not self._deflate_guess:
                raise
            # "deflate" is sent both with and without the zlib header (httpx's decoder tries both too).
            self._deflate_guess = False
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._z.decompress(data, room + 1)
        self._deflate_guess = False
        return out

    def flush(self, room: int) -> bytes:
        return self._z.flush()[: room + 1]


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """The decoded body, at most ``cap`` bytes; True when there was more."""
    encodings = [e.strip().lower() for e in response.headers.get("content-encoding", "").split(",") if e.strip()]
    encodings = [e for e in encodings if e != "identity"]
    if len(encodings) > 1 or (encodings and encodings[0] not in ("gzip", "x-gzip", "deflate")):
        # Only gzip and deflate are asked for (DEFAULT_HEADERS); anything else is not decoded here.
        raise httpx.DecodingError(
            f"unsupported Content-Encoding {response.headers.get('content-encoding')!r}", request=response.request
        )
    inflater = _Inflater(encodings[0]) if encodings else None
    chunks: list[bytes] = []
    size = 0
    try:
        async for raw in response.aiter_raw():
            room = cap - size
            chunk = inflater.decode(raw, room) if inflater is not None else raw
            if len(chunk) > room:
                chunks.append(chunk[:room])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        if inflater is not None:
            tail = inflater.flush(cap - size)
            if len(tail) > cap - size:
                chunks.append(tail[: cap - size])
                return b"".join(chunks), True
            chunks.append(tail)
    except zlib.error as exc:
        raise httpx.DecodingError(f"cannot decode the {encodings[0]} body: {exc}", request=response.request) from exc
    return b"".join(chunks), False


def _json_bytes(value: Any) -> bytes:
    return jsonlib.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
