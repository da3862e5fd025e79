"""Service configuration: environment variables with the prefix ``EXECUTOR_`` or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. The README's configuration table mirrors this class."""

    model_config = SettingsConfigDict(env_prefix="EXECUTOR_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys of role user. Some key is required to listen beyond loopback.",
    )
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys of role admin (tool-server config, keys, groups, audit, all sessions).",
    )
    forward_identity_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated user keys that may name the end user behind them (a chat backend's key).",
    )
    openwebui_secret_key: SecretStr | None = Field(
        None,
        description="Open WebUI's WEBUI_SECRET_KEY: verifies its users' session tokens (connection auth_type "
        "session). Once set (or the next one), unsigned X-OpenWebUI-User-Id headers are refused.",
    )
    openwebui_forward_jwt_secret: SecretStr | None = Field(
        None,
        description="Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET: verifies the X-OpenWebUI-User-Jwt header.",
    )
    key_cache_ttl_s: float = Field(
        5, ge=0, description="Replicas on other hosts see key and group changes within this time."
    )
    audit_retention_days: int = Field(90, ge=1, description="Audit entries older than this are deleted.")
    data_dir: Path = Field(Path("data"), description="Where the database and session work dirs live.")
    run_dir: Path = Field(
        Path("/tmp"),
        description="Short dir for kernel sockets (Unix socket paths are limited to ~100 bytes).",
    )
    cache_dir: Path | None = Field(None, description="Caches shared by all sandboxes; default <data dir>/cache.")
    database_url: str | None = Field(None, description="SQLAlchemy async URL; default SQLite in the data dir.")
    backend: Literal["local", "docker", "remote"] = Field("local", description="Sandbox backend for new sessions.")
    allowed_backends: Annotated[list[Literal["local", "docker", "remote"]], NoDecode] = Field(
        default_factory=list,
        description="Backends a client may pick per session (comma-separated); the default backend always.",
    )
    pool_size: int = Field(2, ge=0, le=64, description="Sandboxes kept started per backend, ready to hand out.")
    docker_image: str = Field("executor-sandbox:latest", description="Sandbox image of the Docker backend.")
    docker_runtime: str | None = Field(None, description="OCI runtime for sandboxes, e.g. runsc (gVisor).")
    remote_url: str | None = Field(
        None, description="Base URL of the Jupyter Server / Kernel Gateway / Enterprise Gateway (backend remote)."
    )
    remote_token: SecretStr | None = Field(None, description="The gateway's token (Authorization: token T).")
    remote_verify_tls: bool = Field(True, description="Verify the gateway's TLS certificate.")
    remote_ca_file: Path | None = Field(None, description="CA bundle that signs the gateway's certificate.")
    remote_kernel_name: str = Field("python3", description="Kernelspec of remote kernels.")
    remote_kernel_image: str | None = Field(None, description="KERNEL_IMAGE of remote kernels (Enterprise Gateway).")
    remote_kernel_namespace: str | None = Field(
        None, description="KERNEL_NAMESPACE of remote kernels (Enterprise Gateway on Kubernetes)."
    )
    remote_kernel_env: dict[str, str] = Field(
        default_factory=dict, description="Extra KERNEL_* variables of remote kernels (JSON object)."
    )
    remote_work_dir: str | None = Field(
        None,
        description="Give each remote kernel its own dir <this>/<kernel id> (a Kernel Gateway's kernels share "
        "its cwd); unset: the kernel's own cwd (a pod's).",
    )
    remote_launch_timeout_s: float = Field(60, gt=0, description="How long a remote kernel may take to start.")
    remote_request_timeout_s: float = Field(30, gt=0, description="Timeout of one call to the gateway.")
    remote_max_message_mb: int = Field(
        32, ge=1, description="Largest websocket message from the gateway; a larger one ends the cell and the kernel."
    )
    work_dir_size_mb: int = Field(256, ge=1, description="Sandbox work dir size (a tmpfs when run as root).")
    reap_interval_s: float = Field(60, gt=0, description="How often containers no session owns are removed.")
    allow_unjailed: bool = Field(
        False,
        description="Allow the local backend to run kernels without bubblewrap (development only: "
        "no filesystem, network or process isolation).",
    )
    sandbox_uid_base: int = Field(
        61000, ge=1000, description="First uid of the range the local backend gives to sessions (root only)."
    )
    sandbox_uid_count: int = Field(1000, ge=1, description="Size of that uid range.")
    use_cgroups: bool = Field(True, description="Enforce memory, pids and CPU with a cgroup when possible.")

    max_sessions: int = Field(20, ge=1, description="Live sessions on this host, all principals.")
    max_sessions_per_principal: int = Field(
        5, ge=1, description="Live sessions per principal: a key, or one end user behind a chat backend's key."
    )
    max_sessions_per_key: int = Field(50, ge=1, description="Live sessions per API key, all its end users together.")

    default_timeout_s: float = Field(60, gt=0, description="Cell timeout when none is given.")
    max_timeout_s: float = Field(600, gt=0, description="Largest cell timeout a client may ask for.")
    default_memory_mb: int = Field(512, ge=64, description="Memory limit of a session.")
    max_memory_mb: int = Field(4096, ge=64, description="Largest memory limit a client may ask for.")
    default_cpus: float = Field(1.0, gt=0, description="CPU limit of a session (cores).")
    max_cpus: float = Field(2.0, gt=0, description="Largest CPU limit a client may ask for.")
    default_pids: int = Field(128, ge=16, description="Process/thread limit of a session.")
    max_pids: int = Field(1024, ge=16, description="Largest pids limit a client may ask for.")
    default_ttl_s: int = Field(3600, ge=10, description="Idle time after which a session is culled.")
    max_ttl_s: int = Field(86400, ge=10, description="Largest idle ttl a client may ask for.")
    max_file_size_mb: int = Field(256, ge=1, description="Largest file a cell may write (RLIMIT_FSIZE).")
    max_open_files: int = Field(1024, ge=64, description="Open-file limit inside a sandbox.")

    max_stream_bytes: int = Field(1 << 20, ge=1024, description="Cap on stdout and on stderr per execution.")
    max_outputs_bytes: int = Field(16 << 20, ge=1024, description="Cap on rich outputs per execution.")
    inline_file_max_bytes: int = Field(
        256 << 10, ge=0, description="Changed files up to this size are returned inline (base64)."
    )
    max_inline_files_bytes: int = Field(4 << 20, ge=0, description="Cap on all inline files of one result.")
    max_result_files: int = Field(
        1000, ge=0, description="Changed files listed in one result (newest first); the rest are counted as omitted."
    )
    max_result_files_bytes: int = Field(
        256 << 10, ge=0, description="Cap on the summed path lengths of the changed files listed in one result."
    )
    max_scan_entries: int = Field(
        100_000,
        ge=64,
        description="Names a work-dir scan looks at before it stops (and says the listing is incomplete).",
    )
    max_execution_log_bytes: int | None = Field(
        None,
        ge=1024,
        description="Cap on the events one execution keeps for streaming (SSE); past it one 'truncated' event. "
        "Default 2 x max_stream_bytes + max_outputs_bytes.",
    )
    one_shot_max_files_bytes: int = Field(
        8 << 20, ge=0, description="Cap on the files a one-shot POST /api/v1/execute returns inline; past it 413."
    )
    cancel_grace_s: float = Field(
        5, gt=0, description="How long cancel interrupts a cell before it kills the kernel (the session is dead)."
    )
    max_kernel_message_mb: int = Field(
        32,
        ge=1,
        description="Largest part of one message a kernel may send (ZMQ frame); a larger one ends the cell and "
        "stops the kernel (the sandbox's own output is sent in 1 MiB slices).",
    )
    max_upload_mb: int = Field(100, ge=1, description="Largest upload.")
    cull_interval_s: float = Field(15, gt=0, description="How often idle sessions are looked for.")
    kernel_start_timeout_s: float = Field(30, gt=0, description="How long a kernel may take to start.")

    # Outbound HTTP (executor/net.py) and OpenAPI tool servers (executor/openapi/).
    egress_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated hosts, host:port pairs and CIDRs that outbound calls may reach even "
        "though they resolve to loopback, private, link-local or metadata addresses.",
    )
    tool_server_connections: list[dict[str, Any]] = Field(
        default_factory=list,
        validation_alias=AliasChoices(
            "tool_server_connections", "EXECUTOR_TOOL_SERVER_CONNECTIONS", "TOOL_SERVER_CONNECTIONS"
        ),
        description="Open WebUI-style JSON list of tool-server connections used until one is saved "
        "through the API (also read from the plain TOOL_SERVER_CONNECTIONS variable).",
    )
    tool_server_connect_timeout_s: float = Field(5, gt=0, description="Connect timeout of outbound calls.")
    tool_server_read_timeout_s: float = Field(30, gt=0, description="Read timeout of outbound calls.")
    tool_server_timeout_s: float = Field(60, gt=0, description="Total time of one outbound call, retries included.")
    tool_server_retries: int = Field(
        2, ge=0, le=10, description="Retries of idempotent calls on connection errors and 502/503/504."
    )
    tool_server_retry_backoff_s: float = Field(
        0.5, ge=0, description="First retry delay; doubles each retry, with full jitter."
    )
    tool_server_max_response_bytes: int = Field(
        10 << 20, ge=1024, description="Outbound response bodies are cut at this size."
    )
    tool_server_max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed per outbound call.")
    tool_server_spec_ttl_s: float = Field(
        300, ge=0, description="How long a fetched OpenAPI spec is used before it is revalidated."
    )
    tool_server_rate_limit_per_principal: int = Field(
        120, ge=0, description="Tool-server calls per minute per principal (a key, or one end user) (0: unlimited)."
    )
    tool_server_rate_limit_per_key: int = Field(
        1200, ge=0, description="Tool-server calls per minute per API key, all its end users together (0: unlimited)."
    )
    tool_server_max_spec_nodes: int = Field(
        200_000, ge=100, description="Largest OpenAPI spec, in JSON nodes, parsed or after $ref expansion."
    )
    rate_limit_store: Literal["memory", "database"] = Field(
        "memory",
        description="Where rate limits count: in each process, or in the database so replicas share one budget.",
    )
    tool_server_rate_limit_per_connection: int = Field(
        300, ge=0, description="Tool-server calls per minute per connection (0: unlimited)."
    )
    tool_server_forward_user_info: bool = Field(
        False, description="Send X-OpenWebUI-User-* headers with the caller's identity to tool servers."
    )

    # Tool modules (executor/tools/): Open WebUI tool files run in sandboxes of their own.
    tool_backend: str | None = Field(
        None, description="Backend of tool sandboxes (one of the allowed backends); default EXECUTOR_BACKEND."
    )
    tool_call_timeout_s: float = Field(60, gt=0, description="Wall time of one tool call, event-call waits included.")
    tool_import_timeout_s: float = Field(
        20, gt=0, description="How long importing a tool file may take (registration, and a sandbox's first call)."
    )
    tool_event_call_timeout_s: float = Field(
        120, gt=0, description="How long a tool's __event_call__ waits for POST .../calls/{call_id}/reply."
    )
    tool_sandbox_idle_s: float = Field(
        600, gt=0, description="A warm tool sandbox (one tool, one user) is closed after this long unused."
    )
    tool_sandboxes_per_principal: int = Field(
        4, ge=1, description="Warm tool sandboxes kept per principal; the least recently used one goes first."
    )
    tool_max_result_bytes: int = Field(
        4 << 20, ge=1024, description="Cap on a tool call's result, outputs and events together (encoded)."
    )
    tool_max_events: int = Field(1000, ge=0, description="__event_emitter__ events kept per tool call.")
    tool_layer_timeout_s: float = Field(
        600, gt=0, description="How long installing one requirement set (a tool's frontmatter requirements) may take."
    )
    tool_layer_max_mb: int = Field(1024, ge=1, description="Largest installed requirement set.")
    tool_pip_index_url: str | None = Field(None, description="Package index for requirements (default: PyPI).")
    tool_pip_find_links: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated extra wheel directories or pages for requirements."
    )
    tool_pip_no_index: bool = Field(False, description="Install requirements only from EXECUTOR_TOOL_PIP_FIND_LINKS.")
    tool_max_bytes: int = Field(
        1 << 20, ge=1024, description="Largest tool file (UTF-8 bytes), also when loaded with /tools/load/url."
    )
    tool_restrict_non_admin: bool = Field(
        False,
        description="Every tool registered or changed by a non-admin runs in restricted mode (RestrictedPython, "
        "inside its sandbox); admins may mark any tool restricted.",
    )
    tool_restricted_imports: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules restricted tools may import (default: the runtime's list, "
        "sandboxes/runtime/restricted.py DEFAULT_ALLOWED_IMPORTS).",
    )

    # Network access from sandboxes (executor/egress/): only through the service's forward proxy.
    egress_default: Literal["none", "allowlist", "public"] = Field(
        "none", description="Egress policy of a session that asks for none: none, allowlist or public."
    )
    egress_client_max: Literal["none", "allowlist", "public"] = Field(
        "none",
        description="The widest policy a non-admin client may ask for per session (none < allowlist < public); "
        "a request above it is 403.",
    )
    egress_tool_default: Literal["none", "allowlist", "public"] = Field(
        "none", description="Egress policy of a tool module an admin has set none for."
    )
    egress_sandbox_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated hosts, *.wildcards, host:port pairs, IPs and CIDRs sessions may reach under "
        "the allowlist policy; under public, the internal addresses (exact names, IPs, CIDRs) they may reach too.",
    )
    egress_max_connections: int = Field(16, ge=1, description="Concurrent proxied connections per sandbox.")
    egress_max_mb_in: int = Field(512, ge=1, description="Bytes a sandbox may download through the proxy, MiB.")
    egress_max_mb_out: int = Field(64, ge=1, description="Bytes a sandbox may upload through the proxy, MiB.")
    egress_connection_timeout_s: float = Field(300, gt=0, description="Longest life of one proxied connection.")
    egress_idle_timeout_s: float = Field(60, gt=0, description="A proxied connection silent this long is cut.")

    # The Jupyter face (executor/api/jupyter.py): what Open WebUI's CODE_EXECUTION_ENGINE=jupyter talks to.
    jupyter_prefix: str = Field(
        "",
        description="Path the Jupyter-Server routes are served under (e.g. /jupyter, then Open WebUI's "
        "CODE_EXECUTION_JUPYTER_URL is http://host:8000/jupyter); empty: at the root (/api/kernels...).",
    )
    jupyter_max_message_bytes: int = Field(
        (1 << 20) - (4 << 10),
        ge=16 << 10,
        description="Largest websocket message the Jupyter face sends; bigger outputs are made to fit (a PNG "
        "re-encoded smaller, text cut with a marker, streams split). Open WebUI's client refuses over 1 MiB.",
    )

    @field_validator(
        "api_keys",
        "admin_api_keys",
        "forward_identity_api_keys",
        "allowed_backends",
        "egress_allowlist",
        "egress_sandbox_allowlist",
        "tool_pip_find_links",
        "tool_restricted_imports",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("jupyter_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # "/jupyter/" and "jupyter" mean "/jupyter": a router prefix starts with "/" and does not end with one.
        value = value.strip().strip("/")
        if any(c in value for c in "?#") or "//" in value:
            raise ValueError("EXECUTOR_JUPYTER_PREFIX must be a plain path such as /jupyter")
        return f"/{value}" if value else ""

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.cache_dir = (self.cache_dir or self.data_dir / "cache").expanduser().resolve()
        roles = [set(self.api_keys), set(self.admin_api_keys), set(self.forward_identity_api_keys)]
        if (roles[0] | roles[2]) & roles[1]:
            raise ValueError(
                "a key is in EXECUTOR_ADMIN_API_KEYS and in EXECUTOR_API_KEYS or EXECUTOR_FORWARD_IDENTITY_API_KEYS: "
                "give each key one role"
            )
        if any(len(k) < 8 for r in roles for k in r):
            raise ValueError(
                "API keys must be at least 8 characters long (make one with: python3 -c "
                "'import secrets; print(secrets.token_urlsafe(32))', or 'executor keys create')"
            )
        for name in ("timeout_s", "memory_mb", "cpus", "pids", "ttl_s"):
            if getattr(self, f"default_{name}") > getattr(self, f"max_{name}"):
                raise ValueError(f"EXECUTOR_DEFAULT_{name.upper()} is larger than EXECUTOR_MAX_{name.upper()}")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'executor.db'}"

    @property
    def backends(self) -> list[str]:
        """The default backend first, then the others a client may choose."""
        return [self.backend, *(b for b in dict.fromkeys(self.allowed_backends) if b != self.backend)]

    @property
    def env_keys_set(self) -> bool:
        return bool(self.api_keys or self.admin_api_keys or self.forward_identity_api_keys)
