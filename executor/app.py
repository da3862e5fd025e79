"""create_app(settings): the routers and the lifespan that owns the store, the backend and the sessions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from executor import errors
from executor.access.service import Access
from executor.accesslog import AccessLogMiddleware
from executor.api import access, docs, health, sessions, tool_servers, tools
from executor.openapi.service import ToolServerService
from executor.sessions import SessionManager
from executor.settings import Settings
from executor.store import Store
from sandboxes.base import Backend, SandboxError, instance_id
from sandboxes.local import LocalBackend, LocalConfig

log = logging.getLogger(__name__)


def make_backend(settings: Settings, name: str | None = None) -> Backend:
    """The named sandbox backend (the default one if None). Raises SandboxError saying how to fix what is
    missing: bubblewrap for ``local``, the engine or the image for ``docker``."""
    name = name or settings.backend
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
        )
    )


async def start_backends(settings: Settings) -> tuple[dict[str, Backend], dict[str, str]]:
    """Start the default backend (its failure stops the service) and every other allowed one that can run."""
    backends: dict[str, Backend] = {}
    unavailable: dict[str, str] = {}
    for name in settings.backends:
        try:
            backend = make_backend(settings, name)
        except SandboxError as exc:
            if name == settings.backend:
                raise
            log.warning("backend %s unavailable: %s", name, exc)
            unavailable[name] = str(exc)
            continue
        reaped = await backend.start()
        log.info("backend %s ready (%s); removed from an earlier run: %s", name, backend.describe(), reaped)
        backends[name] = backend
    return backends, unavailable


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app. Nothing starts until the lifespan runs."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.chmod(0o700)
        store = Store(settings.db_url)
        await store.create_all()
        guard = Access(settings, store)
        await guard.start()
        app.state.access = guard
        app.state.audit = guard.audit
        backends, unavailable = await start_backends(settings)
        manager = SessionManager(settings, store, backends, unavailable)
        await manager.start()
        servers = ToolServerService(settings, store, guard.audit)
        await servers.start()
        app.state.store = store
        app.state.backends = backends
        app.state.sessions = manager
        app.state.tool_servers = servers
        try:
            yield
        finally:
            await servers.close()
            await manager.stop()
            for backend in backends.values():
                await backend.stop()
            await guard.close()
            await store.close()

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
    docs.install(app)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(tool_servers.router)
    app.include_router(tools.router)
    app.include_router(access.router)
    return app
