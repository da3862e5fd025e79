"""Who a sandbox may reach: the egress modes, allow-list rules and the one decision function.

The decision is made on the name the sandbox asked for (the CONNECT host, or the host of an absolute-form
request), then on every address that name resolves to. Internal addresses (loopback, private, metadata...,
as :func:`executor.net.forbidden_reason` classes them) are only reachable when an admin rule names them: a
CIDR/IP rule containing the address, or an exact host rule for that very name. Wildcards never grant an
internal address, so ``*.example.com`` cannot be turned into a path inside by pointing a subdomain at
10.0.0.1. The addresses of an allowed decision are the ones to connect to (pinned: no second lookup).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from executor.net import IPAddress, IPNetwork, forbidden_reason, numeric_host_problem

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# One DNS label as the allow-list accepts it (underscore: some internal names carry one).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


class Mode(StrEnum):
    """How much of the network a sandbox reaches through its proxy."""

    NONE = "none"
    ALLOWLIST = "allowlist"
    PUBLIC = "public"


# Ordering of the modes: a client may ask for a mode up to the ceiling an admin sets.
RANK: dict[Mode, int] = {Mode.NONE: 0, Mode.ALLOWLIST: 1, Mode.PUBLIC: 2}


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"egress rule {entry!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _check_name(name: str, entry: str) -> None:
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"egress rule {entry!r} is not a host, *.domain, host:port, IP address or CIDR")
    problem = numeric_host_problem(name)
    if problem:
        raise ValueError(f"egress rule {entry!r}: {problem}")


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmapped(ip: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` reaches 10.0.0.1: rules are matched against the IPv4 address it carries."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Rule:
    """One allow-list entry. ``text`` is the entry as written: what a decision's ``rule`` names.

    Exactly one of ``name`` (a host name; with ``wildcard`` a domain whose subdomains match, not the domain
    itself) and ``network`` (an IP address as a /32 or /128, or a CIDR) is set; ``port`` None means any port.
    """

    text: str
    name: str | None = None
    wildcard: bool = False
    network: IPNetwork | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> Rule:
        """Parse ``host``, ``*.domain``, either with ``:port``, an IP literal (``[v6]:port``) or a CIDR."""
        text = entry.strip()
        raw = text.lower()
        if not raw:
            raise ValueError(f"egress rule {entry!r} is empty")
        if "/" in raw:  # CIDR; no port (a port would make the network ambiguous to read)
            try:
                return cls(text=text, network=ipaddress.ip_network(raw, strict=False))
            except ValueError:
                raise ValueError(f"egress rule {entry!r} is not a valid CIDR network") from None
        port: int | None = None
        host = raw
        if raw.startswith("["):
            inner, sep, rest = raw[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"egress rule {entry!r}: a bracketed IPv6 address is written [addr] or [addr]:port")
            if rest:
                port = _parse_port(rest[1:], entry)
            ip = _ip(inner)
            if not isinstance(ip, ipaddress.IPv6Address) or ip.scope_id:
                raise ValueError(f"egress rule {entry!r}: {inner!r} is not an IPv6 address")
            return cls(text=text, network=ipaddress.ip_network(ip), port=port)
        if raw.count(":") > 1:  # a bare IPv6 address: no port can follow it unbracketed
            ip = _ip(raw)
            if ip is None or (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id):
                raise ValueError(f"egress rule {entry!r} is not an IPv6 address (write [addr]:port with a port)")
            return cls(text=text, network=ipaddress.ip_network(ip))
        if ":" in raw:
            host, _, port_text = raw.partition(":")
            port = _parse_port(port_text, entry)
        host = host.rstrip(".")
        ip = _ip(host)
        if ip is not None:
            return cls(text=text, network=ipaddress.ip_network(ip), port=port)
        wildcard = host.startswith("*.")
        name = host[2:] if wildcard else host
        if not name:
            raise ValueError(f"egress rule {entry!r} names no host")
        _check_name(name, entry)
        return cls(text=text, name=name, wildcard=wildcard, port=port)

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    def matches_name(self, host: str, port: int) -> bool:
        """True when this is a name rule covering ``host`` (normalised: lower case, no trailing dot)."""
        if self.name is None or not self._port_ok(port):
            return False
        if self.wildcard:
            return host.endswith("." + self.name)
        return host == self.name

    def matches_ip(self, ip: IPAddress, port: int) -> bool:
        """True when this is an IP/CIDR rule containing ``ip``."""
        if self.network is None or not self._port_ok(port):
            return False
        for candidate in {ip, _unmapped(ip)}:
            if candidate.version == self.network.version and candidate in self.network:
                return True
        return False

    def grants_internal(self, host: str, ip: IPAddress, port: int) -> bool:
        """True when this (admin) rule names ``ip`` itself: its CIDR/IP, or the exact host (never a wildcard)."""
        if self.network is not None:
            return self.matches_ip(ip, port)
        return not self.wildcard and self.matches_name(host, port)


def parse_rules(entries: Iterable[str]) -> tuple[Rule, ...]:
    """Parse each non-blank entry; ValueError names the first bad one."""
    return tuple(Rule.parse(e) for e in entries if e.strip())


@dataclass(frozen=True)
class SandboxPolicy:
    """A sandbox's egress: the mode, the admin's ``allow`` entries and the client's optional ``narrow`` list.

    ``narrow`` can only take away: a target must match ``allow`` (in allowlist mode) AND ``narrow``.
    """

    mode: Mode
    allow: tuple[Rule, ...] = ()
    narrow: tuple[Rule, ...] | None = None

    @classmethod
    def parse(cls, mode: Mode | str, entries: Iterable[str] = (), narrow: Iterable[str] | None = None) -> SandboxPolicy:
        """Build a policy from text; ValueError for an unknown mode or a bad entry."""
        return cls(
            mode=Mode(mode),
            allow=parse_rules(entries),
            narrow=None if narrow is None else parse_rules(narrow),
        )

    def describe(self) -> dict[str, Any]:
        """The policy as JSON-ready data (what session info and /readyz show)."""
        return {
            "mode": self.mode.value,
            "allow": [r.text for r in self.allow],
            "narrow": None if self.narrow is None else [r.text for r in self.narrow],
        }


@dataclass(frozen=True)
class Decision:
    """The outcome for one (host, port): ``addresses`` are the checked ones to connect to, in order."""

    allowed: bool
    rule: str
    reason: str
    host: str
    port: int
    addresses: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the check endpoint and the audit use it)."""
        return {
            "allowed": self.allowed,
            "rule": self.rule,
            "reason": self.reason,
            "host": self.host,
            "port": self.port,
            "addresses": list(self.addresses),
        }


def _tcp_addresses(infos: Sequence[tuple[Any, ...]]) -> list[str]:
    """getaddrinfo's answers as addresses, deduplicated, in its order (scope ids dropped)."""
    out: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if address not in out:
            out.append(address)
    return out


async def system_resolve(host: str, port: int) -> Sequence[str]:
    """The system resolver's TCP addresses for ``host``, deduplicated, in its order (scope ids dropped)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return _tcp_addresses(infos)


class BoundedResolver:
    """The system resolver on threads of its own, with a deadline per lookup.

    A sandbox chooses the names, so it chooses how slow each lookup is: on the event loop's default executor a
    few names that never answer would hold the threads the rest of the service (the Docker SDK, file work)
    needs. Here they hold at most ``workers`` threads of their own, and a lookup past ``timeout_s`` is refused
    (rule ``dns``) while its thread finishes in the background.
    """

    def __init__(self, workers: int = 4, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egress-dns")

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        loop = asyncio.get_running_loop()
        lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await loop.run_in_executor(self._pool, lookup)
        except TimeoutError:
            raise OSError(f"no answer within {self.timeout_s:g} s") from None
        return _tcp_addresses(infos)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Refused(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


def normalise_host(host: str) -> str:
    """Lower case, brackets and one trailing dot dropped: the form rules are matched against."""
    bare = host.strip().lower()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    return bare[:-1] if bare.endswith(".") else bare


async def _addresses(host: str, port: int, literal: IPAddress | None, resolve: Resolver) -> list[IPAddress]:
    if literal is not None:
        return [literal]
    try:
        raw = await resolve(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise _Refused("dns", f"cannot resolve host {host!r}: {exc}") from None
    out: list[IPAddress] = []
    for text in raw:
        ip = _ip(str(text).split("%")[0])
        if ip is None:
            raise _Refused("dns", f"the resolver answered {text!r} for {host!r}, which is not an address")
        if ip not in out:
            out.append(ip)
    if not out:
        raise _Refused("dns", f"host {host!r} has no address")
    return out


class _Lazy:
    """Resolve at most once, and only when a rule or the final check needs the addresses."""

    def __init__(self, host: str, port: int, literal: IPAddress | None, resolve: Resolver) -> None:
        self._args = (host, port, literal, resolve)
        self._value: list[IPAddress] | None = None

    @property
    def known(self) -> tuple[str, ...]:
        """The addresses if they were resolved already (a refusal's audit names them), else ()."""
        return tuple(str(ip) for ip in self._value or ())

    async def get(self) -> list[IPAddress]:
        if self._value is None:
            self._value = await _addresses(*self._args)
        return self._value


async def _first_match(rules: Sequence[Rule], host: str, port: int, addrs: _Lazy) -> Rule | None:
    """The first rule covering the target: a name rule on the name, or IP rules covering EVERY address."""
    for rule in rules:
        if rule.matches_name(host, port):
            return rule
    ip_rules = [r for r in rules if r.network is not None]
    if not ip_rules:
        return None
    ips = await addrs.get()
    # Every address must be covered: the proxy may connect to any of them.
    covering = [next((r for r in ip_rules if r.matches_ip(ip, port)), None) for ip in ips]
    if all(r is not None for r in covering):
        return covering[0]
    return None


async def decide(policy: SandboxPolicy, host: str, port: int, *, resolve: Resolver = system_resolve) -> Decision:
    """Whether a sandbox under ``policy`` may open a connection to ``host``:``port``; never connects.

    Resolves the name (once) when a rule or the address check needs it; the allowed decision carries the
    checked addresses, in resolver order, to connect to. A name with one refused address is refused whole.
    """
    bare = normalise_host(host)

    def refused(rule: str, reason: str, addresses: Iterable[IPAddress] = ()) -> Decision:
        return Decision(False, rule, reason, bare, port, tuple(str(a) for a in addresses))

    if policy.mode is Mode.NONE:
        return refused("policy:none", "this sandbox has no network access (egress policy 'none')")
    if not 0 < port < 65536:
        return refused("invalid-port", f"port {port} is not from 1 to 65535")
    if not bare or "%" in bare or any(c.isspace() or c in "/\\@?#" for c in bare):
        return refused("invalid-host", f"host {host!r} is not a host name or IP address")
    problem = numeric_host_problem(bare)
    if problem:
        return refused("ip-literal", problem)
    literal = _ip(bare)
    addrs = _Lazy(bare, port, literal, resolve)
    try:
        granted: Rule | None = None
        if policy.mode is Mode.ALLOWLIST:
            granted = await _first_match(policy.allow, bare, port, addrs)
            if granted is None:
                raise _Refused("not-listed", f"{bare}:{port} is not on this sandbox's egress allow-list")
        if policy.narrow is not None and await _first_match(policy.narrow, bare, port, addrs) is None:
            raise _Refused("narrowed", f"{bare}:{port} is not on the egress list this session asked for")
        ips = await addrs.get()
        for ip in ips:
            why = forbidden_reason(ip)
            if why is None:
                continue
            grant = next((r for r in policy.allow if r.grants_internal(bare, ip, port)), None)
            if grant is None:
                raise _Refused(
                    why,
                    f"{bare}:{port} resolves to {ip}, a {why} address; only an admin rule naming that address, "
                    "its network or this exact host can allow it",
                )
            if granted is None:
                granted = grant
    except _Refused as exc:
        return Decision(False, exc.rule, exc.reason, bare, port, addrs.known)
    rule = "public" if granted is None else f"allow:{granted.text}"
    reason = "allowed by the public egress policy" if granted is None else f"allowed by rule {granted.text!r}"
    return Decision(True, rule, reason, bare, port, tuple(str(ip) for ip in ips))
