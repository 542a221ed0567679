"""The webhook delivery worker: reads the outbox, POSTs signed events, retries with backoff.

Deliveries are rows written with their event (``EventLog.emit``), so they survive a
restart: the worker picks up whatever is pending when it starts. Each receiver
has its own lane of at most ``webhook_concurrency`` attempts in flight, so a slow
or dead receiver only delays itself. Delivery is at least once: an attempt cut
short by a crash is made again, with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter

import httpx

from ..config import Config
from ..errors import ApiError
from ..fetch.client import send_pinned
from ..fetch.guard import Guard, ResolutionFailed
from ..store import Store
from ..store.webhook_models import WebhookDelivery
from .signing import signed_headers

log = logging.getLogger("cellbox.webhooks")

# Idle wake-up to look for retries that came due (emits wake the worker at once).
_POLL_S = 1.0
_MAX_BACKOFF_S = 3600.0
_PURGE_EVERY_S = 600.0
_USER_AGENT = "cellbox-webhooks"


def backoff(base_s: float, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failures: exponential, half jittered."""
    delay = min(_MAX_BACKOFF_S, base_s * 2 ** (attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


class WebhookWorker:
    def __init__(self, config: Config, store: Store, wake: asyncio.Event) -> None:
        self.config = config
        self.store = store
        self.wake = wake
        self.guard = Guard(config.webhook_allow_private, setting="CELLBOX_WEBHOOK_ALLOW_PRIVATE=1")
        self._in_flight: dict[str, asyncio.Task] = {}
        self._lanes: Counter[str] = Counter()
        self._task: asyncio.Task | None = None
        self._last_purge = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    async def stop(self) -> None:
        """Stop; attempts in flight are abandoned and made again by the next server."""
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            self.wake.clear()
            try:
                await self._dispatch()
                delay = await self._until_next_due()
            except Exception:
                log.exception("webhook dispatch failed")
                delay = _POLL_S
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)

    async def _until_next_due(self) -> float:
        now = time.time()
        if now - self._last_purge > _PURGE_EVERY_S:
            self._last_purge = now
            await self.store.purge_deliveries(now - self.config.retention_s)
        due = await self.store.next_delivery_due(self._in_flight)
        return _POLL_S if due is None else max(0.0, min(_POLL_S, due - time.time()))

    async def _dispatch(self) -> None:
        now = time.time()
        for webhook_id in await self.store.due_webhooks(now):
            room = self.config.webhook_concurrency - self._lanes[webhook_id]
            if room <= 0:
                continue
            for delivery in await self.store.due_deliveries(webhook_id, now, self._in_flight, room):
                self._lanes[webhook_id] += 1
                task = asyncio.create_task(self._deliver(delivery))
                self._in_flight[delivery.id] = task

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        try:
            await self._attempt(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
        finally:
            self._in_flight.pop(delivery.id, None)
            self._lanes[delivery.webhook_id] -= 1
            if self._lanes[delivery.webhook_id] <= 0:
                del self._lanes[delivery.webhook_id]
            self.wake.set()

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        hook = await self.store.get_webhook(delivery.webhook_id)
        if hook is None:
            return  # deleted meanwhile, with its deliveries
        started = time.time()
        status, error = await self.post(hook.url, hook.secret, delivery.id, delivery.payload.encode())
        attempt = {
            "attempt": delivery.attempts + 1,
            "at": started,
            "status_code": status,
            "error": error,
            "duration_ms": round((time.time() - started) * 1000, 3),
        }
        attempts = delivery.attempts + 1
        if error is None:
            state, next_at = "delivered", None
        elif attempts >= self.config.webhook_max_attempts:
            state, next_at = "failed", None
            log.warning("webhook delivery %s to %s failed for good after %d attempts: %s",
                        delivery.id, hook.url, attempts, error)
        else:
            state, next_at = "pending", time.time() + backoff(self.config.webhook_retry_base_s, attempts)
        await self.store.record_attempt(delivery.id, attempt, state, next_at)

    async def post(self, url: str, secret: str, message_id: str, body: bytes) -> tuple[int | None, str | None]:
        """One signed POST: ``(status, error)``, error None on a 2xx."""
        timeout = self.config.webhook_timeout_s
        try:
            async with asyncio.timeout(timeout):
                destination = await self.guard.check(url)
                headers = {**signed_headers(secret, message_id, int(time.time()), body), "user-agent": _USER_AGENT}
                hop = await send_pinned(destination, "POST", headers, body, httpx.Timeout(timeout))
                try:
                    status = hop.response.status_code
                finally:
                    await hop.aclose()
        except TimeoutError:
            return None, f"no answer within {timeout:g} s"
        except ApiError as exc:  # the guard refused the destination
            return None, exc.error
        except ResolutionFailed as exc:
            return None, str(exc)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= status < 300:
            return status, None
        return status, f"the receiver answered {status}"
