"""Templates: register, read, change, delete, and read a build's log."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from ..store.template_models import Template
from ..templates.registry import READY, TemplateRegistry
from ..templates.spec import BUILTIN, TemplateFields, TemplateRequest
from .cells import iso
from .deps import tenant
from .schemas import ErrorBody

router = APIRouter(prefix="/v1/templates", tags=["templates"], responses={404: {"model": ErrorBody}})


class TemplateFileInfo(BaseModel):
    path: str
    size: int
    mode: int | None = None
    sha256: str


class TemplateInfo(BaseModel):
    template_id: str = Field(description="The template's name: what cells give as `template`.")
    name: str
    id: str | None = Field(None, description="Internal id (tpl_...); none for built-ins.")
    builtin: bool
    runtime: str
    status: str = Field(description="building | ready | failed")
    error: str | None = Field(None, description="Why the last build failed.")
    build_version: int = Field(description="Number of the current build; a change of packages or files makes a new one.")
    packages: list[str] = []
    files: list[TemplateFileInfo] = []
    envs: dict[str, str] = {}
    start_command: str | None = None
    ready_command: str | None = None
    working_directory: str = "/data"
    user: str = "user"
    cpu_count: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    pids: int | None = None
    timeout_ms: int | None = None
    metadata: dict[str, str] = {}
    version: str | None = Field(None, description="The label the spec gave (e.g. cell.yaml's version).")
    description: str | None = None
    author: str | None = None
    created_at: int | None = Field(None, description="Milliseconds since the epoch.")
    updated_at: str | None = None
    built_at: str | None = None
    logs_url: str | None = None


class DeletedTemplate(BaseModel):
    deleted: bool
    name: str


def registry(request: Request) -> TemplateRegistry:
    return request.app.state.templates


def template_info(template: Template) -> TemplateInfo:
    fields = {k: v for k, v in template.spec.items() if k in TemplateInfo.model_fields and v is not None}
    fields.update(
        template_id=template.name,
        name=template.name,
        id=template.id,
        builtin=False,
        runtime=template.runtime,
        status=template.status,
        error=template.error,
        build_version=template.version,
        created_at=int(template.created_at * 1000),
        updated_at=iso(template.updated_at),
        built_at=iso(template.built_at),
        logs_url=f"/v1/templates/{template.name}/logs",
    )
    return TemplateInfo(**fields)


def builtin_info(name: str) -> TemplateInfo:
    return TemplateInfo(
        template_id=name, name=name, builtin=True, runtime=BUILTIN[name], status=READY, build_version=1,
        description="built in: the host's own interpreter, no extra packages",
    )


@router.post("", response_model=TemplateInfo, status_code=200)
async def register_template(
    request: Request, body: TemplateRequest, tenant_id: str = Depends(tenant)
) -> TemplateInfo:
    """Register a template (or replace the spec of yours with that name) and start its build.

    Answers 200 at once with status ``building``; follow ``status`` and the log.
    """
    return template_info(await registry(request).register(tenant_id, body))


@router.get("", response_model=list[TemplateInfo])
async def list_templates(request: Request, tenant_id: str = Depends(tenant)) -> list[TemplateInfo]:
    mine = await registry(request).list(tenant_id)
    return [*(builtin_info(name) for name in BUILTIN), *(template_info(t) for t in mine)]


@router.get("/{name}", response_model=TemplateInfo)
async def get_template(request: Request, name: str, tenant_id: str = Depends(tenant)) -> TemplateInfo:
    if name in BUILTIN:
        return builtin_info(name)
    return template_info(await registry(request).get(tenant_id, name))


@router.get("/{name}/logs", response_class=PlainTextResponse, response_model=None)
async def get_build_log(
    request: Request, name: str, format: str = Query("text", pattern="^(text|json)$"), tenant_id: str = Depends(tenant)
) -> PlainTextResponse | JSONResponse:
    """The current build's log, as text (or ``?format=json``: ``{name, status, build_version, log}``)."""
    if name in BUILTIN:
        text, status, version = "built in: nothing to build\n", READY, 1
    else:
        template, text = await registry(request).build_log(tenant_id, name)
        status, version = template.status, template.version
    if format == "json":
        return JSONResponse({"name": name, "status": status, "build_version": version, "log": text})
    return PlainTextResponse(text, headers={"X-Template-Status": status})


@router.patch("/{name}", response_model=TemplateInfo)
async def patch_template(
    request: Request, name: str, body: TemplateFields, tenant_id: str = Depends(tenant)
) -> TemplateInfo:
    """Change the given fields. A change of runtime, packages or files builds a new
    version; running cells keep the build they started with."""
    return template_info(await registry(request).patch(tenant_id, name, body))


@router.delete("/{name}", response_model=DeletedTemplate)
async def delete_template(
    request: Request, name: str, force: bool = Query(False, description="Delete even while cells use it."),
    tenant_id: str = Depends(tenant),
) -> DeletedTemplate:
    """Refused (409) while cells that are not killed use it, unless ``force``; those
    cells keep their build until they end."""
    template = await registry(request).delete(tenant_id, name, force)
    return DeletedTemplate(deleted=True, name=template.name)
