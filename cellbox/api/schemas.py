"""Request and response bodies of the Cell API, so /openapi.json is the real contract."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr

StringMap = dict[StrictStr, StrictStr]


def _check_envs(envs: dict[str, str]) -> dict[str, str]:
    for name, value in envs.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} is not a valid variable name (non-empty, no '=' or NUL)")
        if "\0" in value:
            raise ValueError(f"the value of {name} contains a NUL byte")
    return envs


EnvMap = Annotated[dict[StrictStr, StrictStr], AfterValidator(_check_envs)]


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
    envs: EnvMap | None = None
    allow_internet_access: StrictBool | None = None
    network: NetworkOptions | None = None
    volume_id: StrictStr | None = None
    volume_mounts: list[VolumeMount] | None = None
    lifecycle: LifecycleOptions | None = None
    secure: StrictBool | None = None
    name: StrictStr | None = Field(None, max_length=200)
    cpu_count: float | None = Field(None, ge=0.01, description="CPUs (fractions allowed, at least 0.01).")
    memory_mb: int | None = Field(None, ge=32)
    disk_mb: int | None = Field(None, ge=64)
    pids: int | None = Field(None, ge=16, description="Most processes and threads at once.")
    snapshot_id: StrictStr | None = Field(None, description="Start from this snapshot's files (a fork); same API key only.")


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
    cpu_count: int = Field(description="CPUs, rounded up to a whole number.")
    cpus: float = Field(description="The CPU share exactly, e.g. 0.5.")
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
    envs: EnvMap | None = None
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


class ExecRequest(BaseModel):
    code: StrictStr
    language: StrictStr | None = Field(None, description="python (python3, py), javascript (js, node), bash (sh); default: the template's.")
    timeout: float | None = Field(None, gt=0, description="Seconds; past it the code is interrupted.")
    envs: EnvMap | None = None


class Receipt(BaseModel):
    execution_id: str
    cell_id: str
    sequence: int
    code_hash: str = Field(description="SHA-256 of the code.")
    result_hash: str = Field(description="SHA-256 of the canonical JSON of stdout, stderr, exit_code, results, error.")
    template: str
    language: str
    timestamp: int = Field(description="Milliseconds since the epoch.")
    prev_hash: str = Field(description="receipt_hash of the cell's previous receipt (64 zeros for the first).")
    receipt_hash: str = Field(description="SHA-256 of the canonical JSON of the fields above.")
    signature: str = Field(description="Ed25519 signature of those same bytes, base64.")


class ExecError(BaseModel):
    name: str
    value: str
    traceback: str


class ExecResult(BaseModel):
    stdout: str
    stderr: str
    exit_code: int
    latency_ms: float
    receipt: Receipt
    results: list[dict] = Field(description="Rich outputs as MIME bundles, in order.")
    error: ExecError | None = None
    execution_count: int | None = None
    language: str
    timed_out: bool = False
    state_lost: bool = Field(False, description="The kernel was restarted: variables from earlier runs are gone.")
    kernel_restarted: bool = False
    truncated: dict = Field(default_factory=dict, description="Bytes dropped beyond the output caps, per stream.")


class PublicKey(BaseModel):
    algorithm: str
    public_key: str = Field(description="Raw 32-byte Ed25519 public key, base64.")
    pem: str


class EntryInfo(BaseModel):
    name: str
    type: Literal["file", "dir"] | None
    path: str = Field(description="Absolute path inside the cell.")
    size: int
    mode: int = Field(description="Permission bits.")
    permissions: str = Field(description="Like rw-r--r--.")
    owner: str
    group: str
    modified_time: str | None = Field(description="ISO 8601.")
    symlink_target: str | None = None


class WriteFileRequest(BaseModel):
    path: StrictStr = Field(min_length=1)
    content: StrictStr
    encoding: Literal["utf-8", "base64"] | None = None
    mode: int | None = Field(None, ge=0, le=0o7777)


class FileContent(BaseModel):
    content: str
    encoding: str = "utf-8"


class FileList(BaseModel):
    files: list[EntryInfo]


class ExistsResponse(BaseModel):
    exists: bool


class MkdirRequest(BaseModel):
    path: StrictStr = Field(min_length=1)


class RenameRequest(BaseModel):
    old_path: StrictStr = Field(min_length=1)
    new_path: StrictStr = Field(min_length=1)


class ProcessInfo(BaseModel):
    command_id: str
    pid: int | None
    command: str
    status: Literal["running", "completed", "failed"]
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    started_at: str | None = None
    ended_at: str | None = None

    model_config = ConfigDict(extra="allow")


class KillRequest(BaseModel):
    signal: StrictStr | int | None = Field(None, description="SIGKILL (default), SIGTERM, SIGINT... or a number.")


class StdinRequest(BaseModel):
    data: StrictStr = ""
    eof: StrictBool = Field(False, description="Close stdin after writing data.")


class SnapshotManifest(BaseModel):
    snapshot_id: str
    cell_id: str
    created_at: str = Field(description="ISO 8601.")
    created_at_ms: int
    size_bytes: int
    digest: str = Field(description="SHA-256 of the archive, checked before every restore.")
    reason: Literal["pause", "manual", "eviction"]


class PauseResponse(BaseModel):
    snapshot_id: str
    snapshot: SnapshotManifest


class ResumeResponse(BaseModel):
    restored: dict = Field(description="from: memory or a snapshot id; files, processes, variables restored.")
    cell: CellInfo


class UsageResponse(BaseModel):
    cells_created: int
    cells_running: int
    cells_paused: int
    cell_seconds: float = Field(description="Seconds cells have existed, live ones counted until now.")
    executions: int
    commands: int
    cpu_seconds: float = Field(description="CPU time of all cells, from their cgroups.")
    memory_peak_bytes: int = Field(description="The largest peak memory of any cell.")
    snapshot_bytes: int
    fetches: int
    fetch_bytes: int


class CellMetrics(BaseModel):
    cell_id: str
    state: str
    cpu_seconds: float | None
    memory_bytes: int | None
    memory_peak_bytes: int | None
    disk_bytes: int | None
    pids: int | None
    executions: int


class StatsResponse(BaseModel):
    running: int
    paused: int
    killed_today: int
    created_last_hour: int
    created_last_day: int
    exec_latency_ms: dict = Field(description="p50, p95, p99 over the last 15 minutes, and the count.")
    server_errors: int = Field(description="Answers with status >= 500 since the server started.")
    pool: dict = Field(description="Warm cells ready, and how many the pool keeps.")
    host: dict
