"""executor.egress.policy: rule parsing and decide() for every mode, internal address class and rule kind."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from executor.egress.policy import RANK, Decision, Mode, Rule, SandboxPolicy, decide


class FakeResolver:
    """Answers from a table; unknown names fail like getaddrinfo does; records each lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return self.table[host]


DNS = FakeResolver(
    {
        "example.com": ["93.184.216.34"],
        "api.example.com": ["93.184.216.35", "2606:2800:220:1::35"],
        "deep.sub.example.com": ["93.184.216.36"],
        "inside.example.com": ["10.0.0.7"],  # a subdomain pointed inside
        "mixed.example.com": ["93.184.216.37", "192.168.1.5"],
        "db.internal": ["10.1.2.3"],
        "meta.example.com": ["169.254.169.254"],
        "ula.example.com": ["fd12:3456::1"],
        "mapped.example.com": ["::ffff:10.0.0.1"],
        "pypi.org": ["151.101.0.223"],
    }
)


async def check(policy: SandboxPolicy, host: str, port: int = 443) -> Decision:
    return await decide(policy, host, port, resolve=DNS)


PUBLIC = SandboxPolicy(Mode.PUBLIC)


def test_modes_and_rank() -> None:
    assert [m.value for m in Mode] == ["none", "allowlist", "public"]
    assert RANK[Mode.NONE] < RANK[Mode.ALLOWLIST] < RANK[Mode.PUBLIC]


@pytest.mark.parametrize(
    ("entry", "name", "wildcard", "network", "port"),
    [
        ("Example.COM.", "example.com", False, None, None),
        ("*.example.com", "example.com", True, None, None),
        ("api.example.com:8443", "api.example.com", False, None, 8443),
        ("*.example.com:443", "example.com", True, None, 443),
        ("10.0.0.5", None, False, "10.0.0.5/32", None),
        ("127.0.0.1:8443", None, False, "127.0.0.1/32", 8443),
        ("[::1]:8443", None, False, "::1/128", 8443),
        ("[fd00::1]", None, False, "fd00::1/128", None),
        ("::1", None, False, "::1/128", None),
        ("10.0.0.0/8", None, False, "10.0.0.0/8", None),
        ("fd00::/8", None, False, "fd00::/8", None),
        ("internal_svc", "internal_svc", False, None, None),
    ],
)
def test_rule_parse(entry: str, name: str | None, wildcard: bool, network: str | None, port: int | None) -> None:
    rule = Rule.parse(entry)
    assert rule.text == entry
    assert rule.name == name
    assert rule.wildcard is wildcard
    assert (str(rule.network) if rule.network else None) == network
    assert rule.port == port


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "  ",
        "*",
        "*.",
        "host:0",
        "host:65536",
        "host:http",
        "a b",
        "http://x",
        "10.0.0.0/33",
        "0177.0.0.1",
        "2130706433",
        "[::1",
        "[10.0.0.1]",
        "[::1]x",
        "ex*ample.com",
        "-bad.com",
        "fe80::1%eth0",
    ],
)
def test_rule_parse_refuses(entry: str) -> None:
    with pytest.raises(ValueError) as err:
        Rule.parse(entry)
    assert repr(entry.strip()) in str(err.value) or repr(entry) in str(err.value)


def test_policy_parse_and_describe() -> None:
    policy = SandboxPolicy.parse("allowlist", ["pypi.org", " ", "*.example.com:443"], narrow=["pypi.org"])
    assert policy.mode is Mode.ALLOWLIST
    assert policy.describe() == {
        "mode": "allowlist",
        "allow": ["pypi.org", "*.example.com:443"],
        "narrow": ["pypi.org"],
    }
    assert SandboxPolicy.parse("public").describe() == {"mode": "public", "allow": [], "narrow": None}
    with pytest.raises(ValueError):
        SandboxPolicy.parse("everything")
    with pytest.raises(ValueError, match="nope:x"):
        SandboxPolicy.parse("allowlist", ["ok.com", "nope:x"])


async def test_none_refuses_everything_without_resolving() -> None:
    before = len(DNS.calls)
    d = await check(SandboxPolicy(Mode.NONE, allow=(Rule.parse("example.com"),)), "example.com")
    assert (d.allowed, d.rule, d.addresses) == (False, "policy:none", ())
    assert len(DNS.calls) == before


async def test_public_allows_public_names_and_pins_resolver_order() -> None:
    d = await check(PUBLIC, "API.Example.com.")
    assert d.allowed and d.rule == "public"
    assert d.host == "api.example.com" and d.port == 443
    assert d.addresses == ("93.184.216.35", "2606:2800:220:1::35")
    literal = await check(PUBLIC, "8.8.8.8", 53)
    assert literal.allowed and literal.addresses == ("8.8.8.8",)
    v6 = await check(PUBLIC, "[2606:4700:4700::1111]")
    assert v6.allowed and v6.addresses == ("2606:4700:4700::1111",)


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("[fd00:ec2::254]", "metadata"),
        ("100.100.100.200", "metadata"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("fd12:3456::1", "unique-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("meta.example.com", "metadata"),
        ("ula.example.com", "unique-local"),
        ("mapped.example.com", "private"),
        ("db.internal", "private"),
    ],
)
async def test_public_refuses_internal_addresses(host: str, rule: str) -> None:
    d = await check(PUBLIC, host, 80)
    assert not d.allowed
    assert d.rule == rule, d
    assert d.addresses  # the refused addresses are known to the audit


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "10.1"])
async def test_non_standard_numeric_hosts_are_refused(host: str) -> None:
    allow_all = SandboxPolicy(Mode.PUBLIC, allow=(Rule.parse("127.0.0.0/8"), Rule.parse("10.0.0.0/8")))
    d = await check(allow_all, host)
    assert (d.allowed, d.rule) == (False, "ip-literal")


async def test_one_internal_address_refuses_the_whole_name() -> None:
    d = await check(PUBLIC, "mixed.example.com")
    assert (d.allowed, d.rule) == (False, "private")


async def test_dns_failure_is_refused() -> None:
    d = await check(PUBLIC, "nowhere.invalid")
    assert (d.allowed, d.rule) == (False, "dns")

    async def empty(host: str, port: int) -> Sequence[str]:
        return []

    async def garbage(host: str, port: int) -> Sequence[str]:
        return ["not-an-ip"]

    assert (await decide(PUBLIC, "x.com", 443, resolve=empty)).rule == "dns"
    assert (await decide(PUBLIC, "x.com", 443, resolve=garbage)).rule == "dns"


@pytest.mark.parametrize(
    ("host", "port", "rule"),
    [
        ("", 443, "invalid-host"),
        ("a b", 443, "invalid-host"),
        ("x@y", 443, "invalid-host"),
        ("example.com", 0, "invalid-port"),
        ("example.com", 70000, "invalid-port"),
    ],
)
async def test_malformed_targets(host: str, port: int, rule: str) -> None:
    d = await check(PUBLIC, host, port)
    assert (d.allowed, d.rule) == (False, rule)


async def test_allowlist_names_wildcards_and_ports() -> None:
    policy = SandboxPolicy.parse("allowlist", ["pypi.org", "*.example.com:443"])
    ok = await check(policy, "pypi.org", 80)
    assert ok.allowed and ok.rule == "allow:pypi.org" and ok.addresses == ("151.101.0.223",)
    sub = await check(policy, "deep.sub.example.com")
    assert sub.allowed and sub.rule == "allow:*.example.com:443"
    assert (await check(policy, "example.com")).rule == "not-listed"  # the apex is not a subdomain
    assert (await check(policy, "api.example.com", 80)).rule == "not-listed"  # wrong port
    assert (await check(policy, "files.pythonhosted.org")).rule == "not-listed"
    assert (await check(policy, "evilexample.com")).rule == "not-listed"
    assert (await check(policy, "93.184.216.34")).rule == "not-listed"  # an IP is not its name


async def test_allowlist_refuses_unlisted_names_without_resolving() -> None:
    policy = SandboxPolicy.parse("allowlist", ["pypi.org"])
    before = list(DNS.calls)
    assert (await check(policy, "example.com")).rule == "not-listed"
    assert DNS.calls == before


async def test_wildcard_never_grants_an_internal_address() -> None:
    for mode in ("allowlist", "public"):
        policy = SandboxPolicy.parse(mode, ["*.example.com"])
        d = await check(policy, "inside.example.com")
        assert (d.allowed, d.rule) == (False, "private"), mode
        assert d.addresses == ("10.0.0.7",)


async def test_exact_host_rule_grants_its_internal_addresses() -> None:
    for mode in ("allowlist", "public"):
        d = await check(SandboxPolicy.parse(mode, ["db.internal"]), "db.internal", 5432)
        assert d.allowed and d.rule == "allow:db.internal" and d.addresses == ("10.1.2.3",), mode
    # with a port: only that port
    port_rule = SandboxPolicy.parse("public", ["db.internal:5432"])
    assert (await check(port_rule, "db.internal", 5432)).allowed
    assert (await check(port_rule, "db.internal", 22)).rule == "private"


async def test_cidr_and_ip_rules() -> None:
    policy = SandboxPolicy.parse("allowlist", ["10.0.0.0/8", "127.0.0.1:8443", "[::1]:9000"])
    d = await check(policy, "10.9.8.7", 80)
    assert d.allowed and d.rule == "allow:10.0.0.0/8" and d.addresses == ("10.9.8.7",)
    assert (await check(policy, "127.0.0.1", 8443)).allowed
    assert (await check(policy, "127.0.0.1", 8080)).rule == "not-listed"
    assert (await check(policy, "[::1]", 9000)).allowed
    # a name whose every address falls in a listed network is covered by the network rule
    named = await check(policy, "db.internal", 5432)
    assert named.allowed and named.rule == "allow:10.0.0.0/8"
    # an IPv4-mapped IPv6 address is matched as the IPv4 address it reaches
    mapped = await check(policy, "::ffff:10.0.0.1", 80)
    assert mapped.allowed and mapped.rule == "allow:10.0.0.0/8"
    # a network rule does not cover a name with an address outside it
    assert (await check(policy, "example.com")).rule == "not-listed"
    # public mode: a CIDR grants internal addresses inside it only
    pub = SandboxPolicy.parse("public", ["10.0.0.0/8"])
    assert (await check(pub, "10.1.1.1")).rule == "allow:10.0.0.0/8"
    assert (await check(pub, "192.168.1.1")).rule == "private"
    assert (await check(pub, "example.com")).rule == "public"


async def test_metadata_needs_an_explicit_rule() -> None:
    assert (await check(SandboxPolicy.parse("public", ["10.0.0.0/8"]), "169.254.169.254", 80)).rule == "metadata"
    explicit = SandboxPolicy.parse("allowlist", ["169.254.169.254"])
    assert (await check(explicit, "169.254.169.254", 80)).allowed


async def test_narrow_only_takes_away() -> None:
    admin = ["pypi.org", "*.example.com", "db.internal"]
    narrowed = SandboxPolicy.parse("allowlist", admin, narrow=["pypi.org", "*.example.com", "inside.example.com"])
    assert (await check(narrowed, "pypi.org")).allowed
    assert (await check(narrowed, "db.internal")).rule == "narrowed"
    # narrow cannot add: not listed by the admin stays refused as such
    assert (await check(narrowed, "github.com")).rule == "not-listed"
    # narrow naming an internal host exactly does not grant it: only admin rules do
    assert (await check(narrowed, "inside.example.com")).rule == "private"
    # public mode narrowed to a list behaves like that list
    pub = SandboxPolicy.parse("public", narrow=["example.com"])
    assert (await check(pub, "example.com")).allowed
    assert (await check(pub, "pypi.org")).rule == "narrowed"
    # an empty narrow list refuses everything
    empty = SandboxPolicy.parse("public", narrow=[])
    assert (await check(empty, "example.com")).rule == "narrowed"


async def test_decision_as_dict() -> None:
    d = await check(PUBLIC, "example.com")
    assert d.as_dict() == {
        "allowed": True,
        "rule": "public",
        "reason": d.reason,
        "host": "example.com",
        "port": 443,
        "addresses": ["93.184.216.34"],
    }


async def test_a_lookup_that_never_answers_is_refused_and_holds_only_the_resolvers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading

    from executor.egress.policy import BoundedResolver

    release = threading.Event()

    def hangs(*args: object, **kwargs: object) -> list[object]:
        release.wait(30)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", hangs)
    resolver = BoundedResolver(workers=1, timeout_s=0.2)
    try:
        policy = SandboxPolicy.parse("public")
        first = await decide(policy, "slow.example", 443, resolve=resolver)
        second = await decide(policy, "slower.example", 443, resolve=resolver)  # waits behind the first: refused too
        assert (first.allowed, first.rule) == (False, "dns") and "no answer" in first.reason, first
        assert (second.allowed, second.rule) == (False, "dns"), second
        # The loop's default executor (the rest of the service) was never involved.
        assert await asyncio.get_running_loop().run_in_executor(None, lambda: 42) == 42
    finally:
        release.set()
        resolver.close()
