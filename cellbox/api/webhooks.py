"""Webhooks: register, list, delete, and see their deliveries."""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from datetime import datetime, timezone
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, StrictStr, field_validator

from ..errors import ApiError, bad_request
from ..events import invalid_type_patterns
from ..events.signing import SECRET_PREFIX, new_secret
from ..fetch.guard import ResolutionFailed
from ..store.webhook_models import Webhook, WebhookDelivery
from .deps import tenant
from .schemas import ErrorBody

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses={404: {"model": ErrorBody}})

MAX_WEBHOOKS = 100
MAX_DELIVERIES = 100


class CreateWebhookRequest(BaseModel):
    url: StrictStr = Field(min_length=1, max_length=2048, description="http or https; it passes the SSRF guard.")
    events: list[StrictStr] = Field(
        ["*"], min_length=1, description="Event types (cell.killed), prefixes (cell.*) or ['*'] for all."
    )
    description: StrictStr | None = Field(None, max_length=500)
    secret: StrictStr | None = Field(
        None, description="Your own signing secret (whsec_ + base64 of 24 to 64 bytes); by default one is made."
    )

    @field_validator("url")
    @classmethod
    def _a_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            raise ValueError("must be an http or https URL with a host and no spaces")
        return value

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                key = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not value.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
                raise ValueError("must be whsec_ followed by the base64 of 24 to 64 random bytes")
        return value


class WebhookInfo(BaseModel):
    webhook_id: str
    url: str
    events: list[str]
    description: str | None = None
    created_at: str = Field(description="ISO 8601.")


class CreatedWebhook(WebhookInfo):
    secret: str = Field(description="The signing secret (whsec_...). Shown this once; store it now.")


class Attempt(BaseModel):
    attempt: int
    at: str
    status_code: int | None = Field(description="The receiver's status; null when none came.")
    error: str | None
    duration_ms: float


class Delivery(BaseModel):
    delivery_id: str = Field(description="Sent as the webhook-id header on every attempt.")
    webhook_id: str
    event_id: str
    event_type: str
    state: Literal["pending", "delivered", "failed"]
    attempt_count: int
    attempts: list[Attempt]
    created_at: str
    next_attempt_at: str | None = None
    finished_at: str | None = None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") if ts is not None else None


def webhook_info(hook: Webhook) -> WebhookInfo:
    return WebhookInfo(
        webhook_id=hook.id, url=hook.url, events=hook.events, description=hook.description,
        created_at=_iso(hook.created_at),
    )


def delivery_info(delivery: WebhookDelivery) -> Delivery:
    return Delivery(
        delivery_id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        state=delivery.state,  # type: ignore[arg-type]
        attempt_count=delivery.attempts,
        attempts=[Attempt(**{**a, "at": _iso(a["at"])}) for a in delivery.attempt_log],
        created_at=_iso(delivery.created_at),
        next_attempt_at=_iso(delivery.next_attempt_at),
        finished_at=_iso(delivery.finished_at),
    )


async def _owned(request: Request, tenant_id: str, webhook_id: str) -> Webhook:
    hook = await request.app.state.store.get_webhook(webhook_id, tenant_id)
    if hook is None:
        raise ApiError(404, f"webhook {webhook_id!r} not found for this API key", "not_found")
    return hook


@router.post("", response_model=CreatedWebhook, status_code=201)
async def create_webhook(
    request: Request, body: CreateWebhookRequest, tenant_id: str = Depends(tenant)
) -> CreatedWebhook:
    """Matching events are POSTed to `url`, signed per Standard Webhooks with the returned secret."""
    invalid = invalid_type_patterns(body.events)
    if invalid:
        raise bad_request(
            f"unknown event type {invalid[0]!r} in events; use types such as cell.killed, prefixes such as cell.*, or *"
        )
    state = request.app.state
    try:
        await state.webhooks.guard.check(body.url)
    except ResolutionFailed:
        pass  # may resolve later; every delivery is checked again anyway
    if len(await state.store.list_webhooks(tenant_id)) >= MAX_WEBHOOKS:
        raise bad_request(f"this API key already has {MAX_WEBHOOKS} webhooks; delete one first")
    hook = Webhook(
        id="wh_" + secrets.token_hex(8),
        tenant_id=tenant_id,
        url=body.url,
        events=list(dict.fromkeys(body.events)),
        description=body.description,
        secret=body.secret or new_secret(),
        created_at=time.time(),
    )
    await state.store.add_webhook(hook)
    return CreatedWebhook(**webhook_info(hook).model_dump(), secret=hook.secret)


@router.get("", response_model=list[WebhookInfo])
async def list_webhooks(request: Request, tenant_id: str = Depends(tenant)) -> list[WebhookInfo]:
    return [webhook_info(h) for h in await request.app.state.store.list_webhooks(tenant_id)]


@router.get("/{webhook_id}", response_model=WebhookInfo)
async def get_webhook(request: Request, webhook_id: str, tenant_id: str = Depends(tenant)) -> WebhookInfo:
    return webhook_info(await _owned(request, tenant_id, webhook_id))


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(request: Request, webhook_id: str, tenant_id: str = Depends(tenant)) -> Response:
    """Nothing more is sent to it, pending retries included."""
    if not await request.app.state.store.delete_webhook(tenant_id, webhook_id):
        raise ApiError(404, f"webhook {webhook_id!r} not found for this API key", "not_found")
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=list[Delivery])
async def list_deliveries(
    request: Request,
    webhook_id: str,
    limit: int = Query(MAX_DELIVERIES, ge=1, le=MAX_DELIVERIES),
    state: Literal["pending", "delivered", "failed"] | None = Query(None),
    tenant_id: str = Depends(tenant),
) -> list[Delivery]:
    """Newest first, each with its attempts: status codes, errors, durations."""
    await _owned(request, tenant_id, webhook_id)
    deliveries = await request.app.state.store.list_deliveries(webhook_id, limit, state)
    return [delivery_info(d) for d in deliveries]
