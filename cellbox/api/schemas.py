"""Request and response bodies of the Cell API, so /openapi.json is the real contract."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

StringMap = dict[StrictStr, StrictStr]


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong and what to do about it.")
    error_type: str = Field(description="A stable slug, e.g. invalid_request, not_found.")


class NetworkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_out: list[StrictStr] | None = None
    deny_out: list[StrictStr] | None = None
    allow_public_traffic: StrictBool | None = None
    mask_request_host: StrictStr | StrictBool | None = None


class LifecycleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_timeout: Literal["kill", "pause"] = "kill"
    auto_resume: StrictBool = False


class VolumeMount(BaseModel):
    path: StrictStr
    name: StrictStr


class CreateCellRequest(BaseModel):
    """Every field is optional. Options this server cannot honour are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")
    template: StrictStr = "python3"
    persistent: StrictBool = True
    timeout_ms: int | None = Field(None, ge=1000, le=86_400_000, description="Inactivity timeout.")
    metadata: StringMap | None = None
    envs: StringMap | None = None
    allow_internet_access: StrictBool | None = None
    network: NetworkOptions | None = None
    volume_id: StrictStr | None = None
    volume_mounts: list[VolumeMount] | None = None
    lifecycle: LifecycleOptions | None = None
    secure: StrictBool | None = None
    name: StrictStr | None = Field(None, max_length=200)
    cpu_count: float | None = Field(None, gt=0, description="CPUs (fractions allowed).")
    memory_mb: int | None = Field(None, ge=32)
    disk_mb: int | None = Field(None, ge=64)
    pids: int | None = Field(None, ge=16, description="Most processes and threads at once.")


class CellInfo(BaseModel):
    """Both shapes the published client reads, in one object."""

    # legacy shape
    cell_id: str
    template: str
    created_at: int = Field(description="Milliseconds since the epoch.")
    timeout_ms: int
    status: str
    persistent: bool
    volume_id: str | None = None
    executions: int
    metadata: dict[str, str]
    # sandbox shape
    sandbox_id: str
    template_id: str
    started_at: str
    end_at: str = Field(description="When the inactivity timeout fires (or fired), ISO 8601.")
    state: Literal["creating", "running", "paused", "killed"]
    cpu_count: float
    memory_mb: int
    disk_mb: int
    envd_version: str
    name: str | None = None
    allow_internet_access: bool
    network: dict
    lifecycle: dict
    volume_mounts: list[dict] = []
    # ours
    timeout: float = Field(description="Inactivity timeout in seconds.")
    last_activity_at: str
    ended_at: str | None = None
    end_reason: str | None = Field(None, description="Why the cell ended, once it has.")


class TimeoutRequest(BaseModel):
    timeout: int = Field(ge=1, le=86_400, description="Seconds after the last activity.")


class RunningResponse(BaseModel):
    running: bool


class MetadataResponse(BaseModel):
    metadata: dict[str, str]


class CommandRequest(BaseModel):
    command: StrictStr = Field(min_length=1)
    background: StrictBool = False
    cwd: StrictStr | None = None
    envs: StringMap | None = None
    timeout: float | None = Field(None, gt=0, description="Seconds; the command is killed after it.")


class CommandResult(BaseModel):
    stdout: str
    stderr: str
    exit_code: int
    latency_ms: float
    timed_out: bool = False
    pid: int | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    uptime_s: float
    runtime: dict
    store: dict
