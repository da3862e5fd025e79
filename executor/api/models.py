"""Request and response bodies of the sessions API (``/api/v1/sessions``, ``/api/v1/execute``).

The session layer (``executor.sessions``) takes and returns plain domain values; these models are where a request
is validated and an answer is shaped.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from executor.egress.policy import SandboxPolicy
from executor.results import ExecutionStatus
from executor.sessions import LimitsRequest, NewSession, SessionStatus, SessionView

MAX_CODE = 1 << 20
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables that change what runs before the sandbox's seccomp filter is in force (the dynamic loader, the
# interpreter, IPython/Jupyter start-up) or that the service sets itself: a caller may not choose them.
_ENV_DENIED_PREFIXES = ("LD_", "PYTHON", "IPYTHON", "JUPYTER", "EXECUTOR_", "MPL", "GLIBC_", "MALLOC_")
_ENV_DENIED = frozenset(
    {"GCONV_PATH", "HOSTALIASES", "LOCPATH", "NLSPATH", "RESOLV_HOST_CONF", "TMPDIR", "HOME", "PATH"}
)


class LimitsIn(BaseModel):
    """Requested limits; anything left out takes the service default."""

    timeout_s: float | None = Field(None, gt=0, description="Default wall time of a cell, seconds.")
    memory_mb: int | None = Field(None, ge=64, description="Memory of the sandbox, MiB.")
    cpus: float | None = Field(None, gt=0, description="CPU cores.")
    pids: int | None = Field(None, ge=16, description="Processes and threads.")

    def to_domain(self) -> LimitsRequest:
        return LimitsRequest(timeout_s=self.timeout_s, memory_mb=self.memory_mb, cpus=self.cpus, pids=self.pids)


def _check_env(env: dict[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return env
    if len(env) > 64:
        raise ValueError("at most 64 environment variables")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if name in _ENV_DENIED or name.upper().startswith(_ENV_DENIED_PREFIXES):
            raise ValueError(
                f"{name} may not be set: it would change how the kernel starts before the sandbox is hardened "
                "(LD_*, PYTHON*, IPYTHON*, JUPYTER*, MPL*, EXECUTOR_*, GLIBC_*, MALLOC_*, HOME, PATH, TMPDIR, ... "
                "are the service's)"
            )
        if len(value) > 8192 or "\x00" in value:
            raise ValueError(f"the value of {name} is longer than 8192 characters or contains NUL")
    return env


class SessionCreate(BaseModel):
    limits: LimitsIn | None = None
    ttl_s: int | None = Field(None, ge=10, description="Idle time after which the session is culled, seconds.")
    env: dict[str, str] | None = Field(None, description="Environment variables for the kernel.")
    backend: Literal["local", "docker"] | None = Field(
        None, description="Sandbox backend, among those the admin allows; the service default if omitted."
    )
    egress: Literal["none", "allowlist", "public"] | None = Field(
        None,
        description="Network policy of the sandbox (through the service's egress proxy): none, allowlist (the "
        "admin's host list) or public (public addresses). Up to EXECUTOR_EGRESS_CLIENT_MAX; the service "
        "default if omitted.",
    )
    egress_allow: list[str] | None = Field(
        None,
        max_length=256,
        description="Your own host list (hosts, *.wildcards, host:port, IPs, CIDRs): it only narrows the policy, "
        "never widens it.",
    )

    _env = field_validator("env")(_check_env)

    def to_domain(self, egress: SandboxPolicy | None = None) -> NewSession:
        return NewSession(
            limits=self.limits.to_domain() if self.limits else LimitsRequest(),
            ttl_s=self.ttl_s,
            env=self.env,
            backend=self.backend,
            egress=egress,
        )


class SessionLimits(BaseModel):
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int


class SessionInfo(BaseModel):
    id: str
    owner: str = Field(description="The principal that owns it: a key id, or key id/end-user id.")
    backend: str
    status: SessionStatus
    reason: str | None = Field(None, description="Why the session is dead or expired.")
    created_at: datetime
    expires_at: datetime
    limits: SessionLimits
    jail: str | None = None
    sandbox_id: str | None = Field(None, description="The sandbox (container label executor.sandbox) it runs in.")
    ref: str | None = Field(None, description="The backend's own name for the sandbox: the container id (docker).")
    egress: dict[str, Any] | None = Field(
        None, description="The network policy in force: {mode, allow, narrow, proxy} (proxy false: no network at all)."
    )

    @classmethod
    def of(cls, view: SessionView) -> SessionInfo:
        return cls(
            id=view.id,
            owner=view.owner,
            backend=view.backend,
            status=view.status,
            reason=view.reason,
            created_at=view.created_at,
            expires_at=view.expires_at,
            limits=SessionLimits.model_validate(view.limits, from_attributes=True),
            jail=view.jail,
            sandbox_id=view.sandbox_id,
            ref=view.ref,
            egress=view.egress,
        )


class ExecutionAccepted(BaseModel):
    id: str
    session_id: str
    status: ExecutionStatus


class ExecutionRequest(BaseModel):
    code: str = Field(..., max_length=MAX_CODE, description="Python source of the cell.")
    timeout_s: float | None = Field(None, gt=0, description="Wall time of this cell; the session's default if omitted.")
    wait: bool = Field(
        True,
        description="Answer with the finished result (true) or 202 at once (false). Ignored when the request "
        "accepts text/event-stream: then the answer is the execution's event stream.",
    )


class FileUpload(BaseModel):
    path: str = Field(..., description="Relative path in the work dir.")
    data: str = Field(..., description="File content, base64.")


class OneShotRequest(BaseModel):
    code: str = Field(..., max_length=MAX_CODE)
    timeout_s: float | None = Field(None, gt=0)
    files: list[FileUpload] = Field(default_factory=list, max_length=100, description="Files placed before running.")
    limits: LimitsIn | None = None
    env: dict[str, str] | None = None

    _env = field_validator("env")(_check_env)


class FileEntry(BaseModel):
    path: str
    size: int
    mime_type: str
    modified_at: datetime
