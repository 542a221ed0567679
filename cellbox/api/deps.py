"""Authentication: each API key is a tenant."""

from __future__ import annotations

import time

from fastapi import Request

from ..errors import ApiError
from ..store import Store


class KeyCache:
    """Remembers valid keys briefly, so a request costs no database lookup.

    Revocation from ``cellbox keys revoke`` (another process) takes effect within
    ``ttl`` seconds; unknown keys are never cached.
    """

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._valid: dict[str, tuple[str, float]] = {}

    async def tenant_of(self, key: str) -> str | None:
        cached = self._valid.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        record = await self.store.find_key(key)
        if record is None or record.revoked_at is not None:
            self._valid.pop(key, None)
            return None
        if len(self._valid) > 10_000:
            self._valid.clear()
        self._valid[key] = (record.id, now + self.ttl)
        return record.id


async def tenant(request: Request) -> str:
    """The caller's tenant id, from ``Authorization: Bearer <key>``."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send 'Authorization: Bearer cell_sk_live_...'", "unauthorized")
    tenant_id = await request.app.state.keys.tenant_of(key.strip())
    if tenant_id is None:
        raise ApiError(401, "invalid or revoked API key", "unauthorized")
    return tenant_id
