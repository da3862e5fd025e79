"""Sandbox egress: the policy that decides what a sandbox may reach, and the forward proxy that enforces it.

Sandboxes have no network but loopback; a relay inside forwards 127.0.0.1:PORT to a Unix socket in the
sandbox's run dir, where a :class:`SandboxProxy` (one per sandbox) decides each connection with
:func:`decide` and pipes the bytes it allows, within the sandbox's limits.
"""

from executor.egress.policy import RANK, Decision, Mode, Resolver, Rule, SandboxPolicy, decide, system_resolve
from executor.egress.proxy import EgressRecord, ProxyLimits, SandboxProxy

__all__ = [
    "RANK",
    "Decision",
    "EgressRecord",
    "Mode",
    "ProxyLimits",
    "Resolver",
    "Rule",
    "SandboxPolicy",
    "SandboxProxy",
    "decide",
    "system_resolve",
]
