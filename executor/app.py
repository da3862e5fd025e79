"""create_app(settings): the routers and the lifespan that owns the store, the backend and the sessions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from executor import errors
from executor.access.service import Access
from executor.accesslog import AccessLogMiddleware, redact_websocket_queries
from executor.api import access, docs, health, jupyter, sessions, tool_calls, tool_servers, tools
from executor.api import egress as egress_api
from executor.egress.service import EgressService
from executor.jupyter.face import JupyterFace
from executor.openapi.service import ToolServerService
from executor.sessions import SessionManager
from executor.settings import Settings
from executor.store import Store
from executor.tools.dispatch import ToolHosts
from executor.tools.layers import LayerBuilder, LayerSettings
from executor.tools.registry import ToolRegistry
from sandboxes.base import Backend, SandboxError, instance_id
from sandboxes.local import LocalBackend, LocalConfig

log = logging.getLogger(__name__)


def make_backend(settings: Settings, name: str | None = None) -> Backend:
    """The named sandbox backend (the default one if None). Raises SandboxError saying how to fix what is
    missing: bubblewrap for ``local``, the engine or the image for ``docker``."""
    name = name or settings.backend
    if name == "remote":
        from sandboxes.remote import RemoteBackend, RemoteConfig

        if not settings.remote_url:
            raise SandboxError("the remote backend needs the gateway's URL: set EXECUTOR_REMOTE_URL")
        verify: bool | str = str(settings.remote_ca_file) if settings.remote_ca_file else settings.remote_verify_tls
        return RemoteBackend(
            RemoteConfig(
                url=settings.remote_url,
                token=settings.remote_token.get_secret_value() if settings.remote_token else None,
                verify=verify,
                kernel_name=settings.remote_kernel_name,
                kernel_image=settings.remote_kernel_image,
                kernel_namespace=settings.remote_kernel_namespace,
                kernel_env=settings.remote_kernel_env,
                launch_timeout_s=settings.remote_launch_timeout_s,
                request_timeout_s=settings.remote_request_timeout_s,
                max_message_bytes=settings.remote_max_message_mb << 20,
                work_dir=settings.remote_work_dir,
            )
        )
    if name == "docker":
        from sandboxes.docker import DockerBackend, DockerConfig

        return DockerBackend(
            DockerConfig(
                data_dir=settings.data_dir,
                run_dir=settings.run_dir,
                instance=instance_id(settings.data_dir),
                image=settings.docker_image,
                runtime=settings.docker_runtime,
                work_dir_size_mb=settings.work_dir_size_mb,
                start_timeout_s=settings.kernel_start_timeout_s,
                max_message_bytes=settings.max_kernel_message_mb << 20,
            )
        )
    return LocalBackend(
        LocalConfig(
            data_dir=settings.data_dir,
            run_dir=settings.run_dir,
            cache_dir=settings.cache_dir,
            allow_unjailed=settings.allow_unjailed,
            uid_base=settings.sandbox_uid_base,
            uid_count=settings.sandbox_uid_count,
            use_cgroups=settings.use_cgroups,
            start_timeout_s=settings.kernel_start_timeout_s,
            work_dir_size_mb=settings.work_dir_size_mb,
            max_message_bytes=settings.max_kernel_message_mb << 20,
        )
    )


def layer_settings(settings: Settings) -> LayerSettings:
    """How tool requirements are installed: into the cache dir, from the index the settings name."""
    return LayerSettings(
        cache_dir=settings.cache_dir or settings.data_dir / "cache",
        timeout_s=settings.tool_layer_timeout_s,
        max_layer_mb=settings.tool_layer_max_mb,
        index_url=settings.tool_pip_index_url,
        find_links=tuple(settings.tool_pip_find_links),
        no_index=settings.tool_pip_no_index,
    )


def make_backends(settings: Settings) -> tuple[dict[str, Backend], dict[str, str]]:
    """The default backend (its failure stops the service) and every other allowed one that can be made; the
    others are listed with why. Nothing is started: the session manager starts them (it knows what to keep)."""
    backends: dict[str, Backend] = {}
    unavailable: dict[str, str] = {}
    for name in settings.backends:
        try:
            backends[name] = make_backend(settings, name)
        except SandboxError as exc:
            if name == settings.backend:
                raise
            log.warning("backend %s unavailable: %s", name, exc)
            unavailable[name] = str(exc)
    return backends, unavailable


async def _logged(what: str, stop: Callable[[], Awaitable[None]]) -> None:
    # One part failing to stop must not keep the others running: log it and go on with the rest.
    try:
        await stop()
    except Exception:
        log.exception("stopping %s failed", what)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app. Nothing starts until the lifespan runs."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each part is registered for stopping as soon as it has started, so a failure half-way through
        # start-up stops what already started (in reverse order), as a normal shutdown does.
        async with AsyncExitStack() as stack:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            settings.data_dir.chmod(0o700)
            store = Store(settings.db_url)
            stack.push_async_callback(_logged, "the store", store.close)
            await store.create_all()
            guard = Access(settings, store)
            await guard.start()
            stack.push_async_callback(_logged, "access", guard.close)
            app.state.access = guard
            app.state.audit = guard.audit
            backends, unavailable = make_backends(settings)
            egress = EgressService(settings, store, guard.audit)
            # After the sessions stop (the stack unwinds backwards): they detach their proxies first.
            stack.push_async_callback(_logged, "the egress proxies", egress.aclose)
            app.state.egress = egress
            manager = SessionManager(settings, store, backends, unavailable, egress=egress)
            # Registered before it starts: stop() stops the backends that did start if start() fails.
            stack.push_async_callback(_logged, "the sessions and backends", manager.stop)
            await manager.start()
            servers = ToolServerService(settings, store, guard.audit)
            await servers.start()
            stack.push_async_callback(_logged, "the tool servers", servers.close)
            layers = LayerBuilder(layer_settings(settings))
            stack.push_async_callback(_logged, "the requirements builder", layers.close)
            hosts = ToolHosts(
                settings,
                manager,
                layers=layers,
                restricted_imports=settings.tool_restricted_imports or None,
                egress=egress,
            )
            await hosts.start()
            # Before the sessions stop: tool sandboxes are leased from the manager.
            stack.push_async_callback(_logged, "the tool sandboxes", hosts.close)
            registry = ToolRegistry(store, guard.audit, hosts, settings)
            await registry.start()
            stack.push_async_callback(_logged, "the tool registry", registry.close)
            app.state.tools = registry
            app.state.tool_hosts = hosts
            app.state.store = store
            app.state.backends = backends
            app.state.sessions = manager
            app.state.tool_servers = servers
            yield

    app = FastAPI(
        title="executor",
        version="0.1.0",
        summary="Sandboxed code-and-tool execution for chat backends",
        lifespan=lifespan,
        docs_url=None,  # docs.install serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(AccessLogMiddleware)
    # Jupyter clients send their key as ?token= on the websocket, which uvicorn would log in full.
    redact_websocket_queries()
    docs.install(app)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(tool_servers.router)
    app.include_router(tools.router)
    app.include_router(egress_api.router)
    app.include_router(tool_calls.router)
    app.include_router(tool_calls.face)
    app.include_router(access.router)
    # Jupyter clients build every path from a base URL they are given: the root, or this prefix.
    app.state.jupyter = JupyterFace()
    app.include_router(jupyter.router, prefix=settings.jupyter_prefix)
    return app
