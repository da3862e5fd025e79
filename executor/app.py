"""create_app(settings): the routers and the lifespan that owns the store, the backend and the sessions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from executor import errors
from executor.api import health, sessions, tool_servers, tools
from executor.openapi.service import ToolServerService
from executor.sessions import SessionManager
from executor.settings import Settings
from executor.store import Store
from sandboxes.local import LocalBackend, LocalConfig

log = logging.getLogger(__name__)


def make_backend(settings: Settings) -> LocalBackend:
    """The sandbox backend the settings ask for. Raises SandboxError saying how to fix what is missing."""
    return LocalBackend(
        LocalConfig(
            data_dir=settings.data_dir,
            cache_dir=settings.cache_dir,
            allow_unjailed=settings.allow_unjailed,
            uid_base=settings.sandbox_uid_base,
            uid_count=settings.sandbox_uid_count,
            use_cgroups=settings.use_cgroups,
            start_timeout_s=settings.kernel_start_timeout_s,
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app. Nothing starts until the lifespan runs."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.chmod(0o700)
        store = Store(settings.db_url)
        await store.create_all()
        backend = make_backend(settings)
        reaped = await asyncio.to_thread(backend.prepare)
        manager = SessionManager(settings, store, backend)
        await manager.start()
        servers = ToolServerService(settings, store)
        await servers.start()
        app.state.store = store
        app.state.backend = backend
        app.state.sessions = manager
        app.state.tool_servers = servers
        log.info("ready: backend %s, jail %s, reaped %s", backend.name, backend.jail, reaped)
        try:
            yield
        finally:
            await servers.close()
            await manager.stop()
            await asyncio.to_thread(backend.shutdown)
            await store.close()

    app = FastAPI(
        title="executor",
        version="0.1.0",
        summary="Sandboxed code-and-tool execution for chat backends",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(tool_servers.router)
    app.include_router(tools.router)
    return app
