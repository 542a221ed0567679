"""The FastAPI application: wiring of config, store, runtime and cell manager."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from . import __version__, errors
from .api import cells, commands, execution, files, metrics, processes, pty, snapshots, system, volumes
from .api import events as event_routes, fetch, webhooks
from .api import templates as template_routes
from .cells.manager import CellManager
from .config import Config
from .metrics import Meters, Prometheus, RequestMetrics
from .receipts import Notary, load_or_create_key, public_key_info
from .events import EventLog
from .events.delivery import WebhookWorker
from .limits import BodySizeLimit
from .runtime.oci import OciRuntime
from .api.deps import KeyCache
from .store import Store, ensure_data_dir, sqlite_url
from .templates import TemplateRegistry

log = logging.getLogger("cellbox")


async def _ensure_a_key(store: Store, config: Config) -> None:
    """Accept CELLBOX_API_KEY; on a first start without one, make a key the operator can read."""
    if config.bootstrap_api_key:
        if await store.find_key(config.bootstrap_api_key) is None:
            await store.create_key("bootstrap (CELLBOX_API_KEY)", key=config.bootstrap_api_key)
        return
    if await store.list_keys():
        return
    record, key = await store.create_key("first key")
    path = config.data_dir / "initial_api_key"
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    log.warning("created the first API key %s; it is in %s (readable by root only)", record.id, path)


# Endpoints anyone may call without a key.
_OPEN_PATHS = {"/v1/health", "/v1/receipts/public-key"}


def _openapi(app: FastAPI) -> dict:
    """The generated document, told the truth: Bearer keys, and 400 (not 422) for bad input."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "An API key: cell_sk_live_...",
    }
    schema["security"] = [{"bearer": []}]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "Bad input: the error names the field", **error})
            if path in _OPEN_PATHS:
                operation["security"] = []
            else:
                responses.setdefault("401", {"description": "Missing or invalid API key", **error})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    app.openapi_schema = schema
    return schema


def create_app(config: Config) -> FastAPI:
    prometheus = Prometheus()
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_data_dir(config.data_dir)
        store = Store(config.database_url or sqlite_url(config.data_dir))
        await store.open()
        await _ensure_a_key(store, config)
        runtime = OciRuntime(
            config.data_dir,
            binary=config.runtime,
            agent_python=config.agent_python,
            seccomp_profile=config.seccomp_profile,
        )
        events = EventLog(store)
        meters = Meters(store, prometheus)
        templates = TemplateRegistry(config, store, runtime, events)
        manager = CellManager(config, store, runtime, events, templates=templates, meters=meters)
        notary = Notary(load_or_create_key(config.data_dir / "receipt_key.pem"), store)
        notary.start()
        await manager.start()
        await templates.start()  # after the manager: it needs the runtime prepared
        webhook_worker = WebhookWorker(config, store, events.deliveries_queued)
        webhook_worker.start()
        app.state.config = config
        app.state.store = store
        app.state.runtime = runtime
        app.state.cells = manager
        app.state.usage = meters.usage
        app.state.latency = meters.latency
        app.state.prometheus = meters.prometheus
        app.state.templates = templates
        app.state.events = events
        app.state.webhooks = webhook_worker
        app.state.notary = notary
        app.state.receipt_public_key = public_key_info(notary.key)
        app.state.keys = KeyCache(store, config.key_cache_s)
        app.state.started = time.monotonic()
        log.info("cellbox %s ready on %s:%s (data in %s)", __version__, config.host, config.port, config.data_dir)
        try:
            yield
        finally:
            events.bus.close()
            await webhook_worker.stop()
            await templates.shutdown()
            await manager.shutdown()
            await notary.close()
            await store.close()

    app = FastAPI(
        title="cellbox: the Cell API",
        version=__version__,
        description="Self-hosted sandboxes (cells) for AI agents.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    for module in (system, cells, commands, execution, files, processes, pty, event_routes, fetch, webhooks, snapshots,
                   template_routes, metrics, volumes):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    # Outermost, so it times everything the server answers.
    app.add_middleware(RequestMetrics, prometheus=prometheus)
    return app
