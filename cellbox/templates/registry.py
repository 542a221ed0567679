"""The template registry: specs, their builds, and what a cell of a template gets.

A template has numbered builds. Registering, or changing what is built (runtime,
packages, files), makes a new build in its own directory; a cell mounts the
build that was current when it was created and keeps it for its whole life.
A build's directory is removed once it is neither current nor used by a cell
that is not killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ApiError, bad_request
from ..events import EventLog
from ..runtime import Limits, bundle
from ..runtime.oci import OciRuntime
from ..store import Store
from ..store.template_models import Template
from . import spec as specs
from .builder import Builder, BuildFailed, BuildSettings, note
from .isolation import clear_leftovers
from .spec import BUILTIN, FileEntry, TemplateFields

log = logging.getLogger("cellbox.templates")

READY, BUILDING, FAILED = "ready", "building", "failed"
# What changes the layer; anything else in a spec applies to new cells without a build.
_BUILD_INPUTS = ("runtime", "packages", "files")
_LIMIT_FIELDS = ("cpu_count", "memory_mb", "disk_mb", "pids")
_GC_INTERVAL_S = 60.0
# A use recorded for a cell whose record does not exist yet is a cell being created.
_UNKNOWN_CELL_GRACE_S = 600.0


@dataclass(frozen=True)
class Launch:
    """What a new cell of a ready template needs."""

    template_id: str
    name: str
    version: int
    runtime: str
    layer: Path
    files: list[dict]
    envs: dict[str, str]
    start_command: str | None
    ready_command: str | None
    workdir: str
    user: str
    user_db: Path | None
    limits: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None

    def container_options(self) -> dict[str, Any]:
        """Extra CellSpec fields for this template's cells."""
        return {
            "layer": self.layer,
            "workdir": None if self.workdir == "/data" else self.workdir,
            "user": None if self.user == specs.DEFAULT_USER else self.user,
            "user_db": self.user_db,
        }


def settings_from(config: Config) -> BuildSettings:
    import shlex

    return BuildSettings(
        pip_args=shlex.split(config.template_pip_args),
        npm_args=shlex.split(config.template_npm_args),
        timeout_s=config.template_build_timeout_s,
        limits=Limits(memory_mb=config.template_build_memory_mb, cpu_count=config.default_limits.cpu_count,
                      pids=1024, disk_mb=config.default_limits.disk_mb),
    )


def _inputs_digest(spec: dict) -> str:
    inputs = {k: spec.get(k) for k in _BUILD_INPUTS}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _write_files(files_dir: Path, entries: list[FileEntry]) -> None:
    files_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = files_dir / entry.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(entry.data)
        target.chmod(0o644)


class TemplateRegistry:
    def __init__(self, config: Config, store: Store, runtime: OciRuntime, events: EventLog) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.events = events
        self.root = config.data_dir / "templates"
        self.builder = Builder(runtime, settings_from(config))
        self._builds: dict[str, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(max(1, config.template_builds_at_once))
        self._locks: dict[str, asyncio.Lock] = {}
        # Staging a build and collecting unused ones exclude each other: a collection
        # that read the table before a new build was recorded must not see its directory.
        self._layout = asyncio.Lock()
        self._gc_task: asyncio.Task | None = None

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        """Runs after the runtime is prepared: builds a crash interrupted start again."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        await self.builder.check()
        await clear_leftovers(self.runtime)
        for template in await self.store.list_templates(status=BUILDING):
            log.info("template %s (%s) was building when the server stopped; building it again", template.name, template.id)
            note(self._log_path(template.id, template.version), "the server stopped during this build; starting it again")
            self._spawn_build(template)
        await self.collect_garbage()
        self._gc_task = asyncio.create_task(self._collect_periodically())

    async def shutdown(self) -> None:
        """Builds in progress stop; they stay ``building`` and the next start runs them again."""
        tasks = [*self._builds.values(), *([self._gc_task] if self._gc_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- paths ---------------------------------------------------------------------------

    def _version_dir(self, template_id: str, version: int) -> Path:
        return self.root / template_id / str(version)

    def _log_path(self, template_id: str, version: int) -> Path:
        return self._version_dir(template_id, version) / "build.log"

    def _user_db(self, user: str) -> Path | None:
        """passwd and group naming the cell user, shared by every template with that user."""
        if user == specs.DEFAULT_USER:
            return None
        directory = self.root / "users" / user
        if not (directory / "group").exists():
            directory.mkdir(parents=True, exist_ok=True)
            for part in (directory.parent, directory):
                part.chmod(0o755)
            for name, text in bundle.user_db(user).items():
                (directory / name).write_text(text)
                (directory / name).chmod(0o644)
        return directory

    def _lock(self, tenant_id: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault(f"{tenant_id}/{name}", asyncio.Lock())

    # -- reading -------------------------------------------------------------------------

    async def get(self, tenant_id: str, name: str) -> Template:
        template = await self.store.get_template(tenant_id, name)
        if template is None:
            raise ApiError(404, f"template {name!r} not found; GET /v1/templates lists yours", "not_found")
        return template

    async def list(self, tenant_id: str) -> list[Template]:
        return await self.store.list_templates(tenant_id)

    async def build_log(self, tenant_id: str, name: str) -> tuple[Template, str]:
        template = await self.get(tenant_id, name)
        path = self._log_path(template.id, template.version)
        text = await asyncio.to_thread(path.read_text, errors="replace") if path.exists() else ""
        return template, text

    async def cells_using(self, template_id: str) -> list[str]:
        in_use = await self.store.template_builds_in_use(_UNKNOWN_CELL_GRACE_S)
        return sorted(c for (tid, _), cells in in_use.items() if tid == template_id for c in cells)

    # -- registering and changing ------------------------------------------------------------

    async def register(self, tenant_id: str, request: specs.TemplateRequest) -> Template:
        """Create, or replace the spec of, the tenant's template of that name."""
        if request.name in BUILTIN:
            raise ApiError(409, f"{request.name!r} is a built-in template; choose another name", "template_builtin")
        fields = request.model_dump(exclude={"name", "lockfile_install"})
        async with self._lock(tenant_id, request.name):
            existing = await self.store.get_template(tenant_id, request.name)
            return await self._apply(tenant_id, request.name, existing, request, fields)

    async def patch(self, tenant_id: str, name: str, request: TemplateFields) -> Template:
        """Change the given fields; a change of runtime, packages or files builds a new version."""
        if name in BUILTIN:
            raise ApiError(409, f"{name!r} is a built-in template and cannot be changed", "template_builtin")
        async with self._lock(tenant_id, name):
            existing = await self.get(tenant_id, name)
            fields = {**existing.spec, **request.model_dump(include=request.model_fields_set - {"lockfile_install"})}
            return await self._apply(tenant_id, name, existing, request, fields)

    async def _apply(
        self, tenant_id: str, name: str, existing: Template | None, request: TemplateFields, fields: dict
    ) -> Template:
        spec, new_files = self._normalize(request, fields, existing)
        digest = _inputs_digest(spec)
        now = time.time()
        rebuild = existing is None or existing.status == FAILED or existing.spec.get("inputs_digest") != digest
        spec["inputs_digest"] = digest
        if existing is not None and not rebuild:
            await self.store.update_template(existing.id, spec=spec, updated_at=now)
            return await self.get(tenant_id, name)
        template_id = existing.id if existing is not None else f"tpl_{secrets.token_hex(8)}"
        version = existing.version + 1 if existing is not None else 1
        async with self._layout:
            await asyncio.to_thread(self._stage, template_id, version, existing, new_files)
            if existing is None:
                await self.store.add_template(Template(
                    id=template_id, tenant_id=tenant_id, name=name, runtime=spec["runtime"], spec=spec,
                    version=version, status=BUILDING, error=None, created_at=now, updated_at=now, built_at=None,
                ))
            else:
                await self.store.update_template(
                    template_id, runtime=spec["runtime"], spec=spec, version=version, status=BUILDING, error=None,
                    updated_at=now, built_at=None,
                )
        template = await self.get(tenant_id, name)
        self._spawn_build(template)
        return template

    def _normalize(
        self, request: TemplateFields, fields: dict, existing: Template | None
    ) -> tuple[dict, list[FileEntry] | None]:
        """The spec as stored, and the files' bytes when the request sent files."""
        specs.refuse_lockfile(request)
        runtime = specs.runtime_of(fields.get("runtime") or "python3")
        packages = specs.check_packages(runtime, fields.get("packages") or [])
        new_files = None
        if "files" in request.model_fields_set or existing is None:
            new_files = specs.check_files(request.files or [], self.config.template_files_max_bytes)
            files = [
                {"path": f.path, "mode": f.mode, "size": len(f.data), "sha256": hashlib.sha256(f.data).hexdigest()}
                for f in new_files
            ]
        else:
            files = existing.spec.get("files", [])
        maximum = self.config.max_limits
        for name in _LIMIT_FIELDS:
            value = fields.get(name)
            if value is not None and value > getattr(maximum, name):
                raise bad_request(f"{name} {value} is above this server's maximum of {getattr(maximum, name)}")
        return {
            **{k: v for k, v in fields.items() if k not in ("files", "inputs_digest")},
            "runtime": runtime,
            "packages": packages,
            "files": files,
            "envs": fields.get("envs") or {},
            "metadata": fields.get("metadata") or {},
            "user": specs.check_user(fields.get("user")),
            "working_directory": specs.check_working_directory(fields.get("working_directory")),
        }, new_files

    def _stage(self, template_id: str, version: int, existing: Template | None, new_files: list[FileEntry] | None) -> None:
        """The new version's directory with its files in place, before the build starts."""
        version_dir = self._version_dir(template_id, version)
        shutil.rmtree(version_dir, ignore_errors=True)
        files_dir = version_dir / "layer" / "files"
        if new_files is not None:
            _write_files(files_dir, new_files)
        elif existing is not None and (self._version_dir(existing.id, existing.version) / "layer" / "files").is_dir():
            shutil.copytree(self._version_dir(existing.id, existing.version) / "layer" / "files", files_dir)
        else:
            files_dir.mkdir(parents=True)
        for part in (self.root / template_id, version_dir, version_dir / "layer"):
            part.chmod(0o755)

    # -- building ------------------------------------------------------------------------------

    def _spawn_build(self, template: Template) -> None:
        previous = self._builds.pop(template.id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self._build(template.id, template.version, template.runtime, template.spec))
        self._builds[template.id] = task
        task.add_done_callback(lambda t, tid=template.id: self._builds.pop(tid, None) if self._builds.get(tid) is t else None)

    async def _build(self, template_id: str, version: int, runtime: str, spec: dict) -> None:
        log_path = self._log_path(template_id, version)
        started = time.monotonic()
        note(log_path, f"build {version} queued: runtime {runtime}, packages {spec.get('packages') or []}")
        error: str | None = None
        async with self._slots:
            note(log_path, "build started")
            try:
                await self.builder.build(runtime, spec.get("packages") or [], self._version_dir(template_id, version), log_path)
            except BuildFailed as exc:
                error = str(exc)
            except Exception as exc:
                log.exception("template build %s/%s failed", template_id, version)
                error = f"internal error while building: {type(exc).__name__}: {exc}"
        duration = round(time.monotonic() - started, 3)
        note(log_path, f"build failed: {error}" if error else f"build succeeded in {duration:g} s")
        template = await self.store.get_template_by_id(template_id)
        if template is None or template.version != version:
            return  # deleted or superseded meanwhile; its directory goes with the next collection
        status = FAILED if error else READY
        await self.store.update_template(template_id, status=status, error=error, built_at=time.time())
        data = {"template": template.name, "template_id": template_id, "version": version, "duration_s": duration}
        if error:
            data["error"] = error
        await self.events.emit(
            template.tenant_id, None, "template.build_failed" if error else "template.build_succeeded", data
        )
        await self.collect_garbage()

    # -- deleting ----------------------------------------------------------------------------------

    async def delete(self, tenant_id: str, name: str, force: bool) -> Template:
        if name in BUILTIN:
            raise ApiError(409, f"{name!r} is a built-in template and cannot be deleted", "template_builtin")
        async with self._lock(tenant_id, name):
            template = await self.get(tenant_id, name)
            cells = await self.cells_using(template.id)
            if cells and not force:
                raise ApiError(
                    409,
                    f"template {name!r} is used by {len(cells)} cell(s) that are not killed ({', '.join(cells[:5])}); "
                    "kill them first, or delete with ?force=true (they keep running on their build)",
                    "template_in_use",
                )
            task = self._builds.pop(template.id, None)
            if task is not None:
                task.cancel()
            await self.store.delete_template(template.id)
        await self.collect_garbage()
        return template

    async def collect_garbage(self) -> None:
        """Remove builds that are neither current nor mounted by a cell that is not killed."""
        async with self._layout:
            await self._collect_garbage()

    async def _collect_garbage(self) -> None:
        in_use = await self.store.template_builds_in_use(_UNKNOWN_CELL_GRACE_S)
        current = {t.id: t.version for t in await self.store.list_templates()}
        for template_dir in self.root.glob("tpl_*"):
            for version_dir in template_dir.iterdir():
                if not version_dir.name.isdigit():
                    continue
                version = int(version_dir.name)
                if current.get(template_dir.name) != version and (template_dir.name, version) not in in_use:
                    await asyncio.to_thread(shutil.rmtree, version_dir, True)
            if template_dir.name not in current and not any(template_dir.iterdir()):
                template_dir.rmdir()

    async def _collect_periodically(self) -> None:
        while True:
            await asyncio.sleep(_GC_INTERVAL_S)
            try:
                await self.collect_garbage()
            except Exception:
                log.exception("collecting unused template builds failed")

    # -- cells -----------------------------------------------------------------------------------

    async def launch(self, tenant_id: str, name: str) -> Launch:
        """What a new cell of this template needs; 400 if unknown, 409 if not ready."""
        template = await self.store.get_template(tenant_id, name)
        if template is None:
            mine = [t.name for t in await self.store.list_templates(tenant_id)]
            raise bad_request(
                f"unknown template {name!r}; available: {', '.join([*sorted(BUILTIN), *mine])}"
            )
        if template.status != READY:
            detail = (
                "wait until it is ready (GET /v1/templates/{0})" if template.status == BUILDING
                else "see GET /v1/templates/{0}/logs, fix the spec and PATCH it"
            ).format(name)
            raise ApiError(409, f"template {name!r} is {template.status}, not ready: {detail}", "template_not_ready")
        spec = template.spec
        return Launch(
            template_id=template.id, name=name, version=template.version, runtime=template.runtime,
            layer=self._version_dir(template.id, template.version) / "layer",
            files=spec.get("files", []), envs=dict(spec.get("envs") or {}),
            start_command=spec.get("start_command"), ready_command=spec.get("ready_command"),
            workdir=spec.get("working_directory") or "/data", user=spec.get("user") or specs.DEFAULT_USER,
            user_db=self._user_db(spec.get("user") or specs.DEFAULT_USER),
            limits={k: spec[k] for k in _LIMIT_FIELDS if spec.get(k) is not None},
            timeout_s=spec["timeout_ms"] / 1000 if spec.get("timeout_ms") else None,
        )

    async def record_use(self, launch: Launch, cell_id: str) -> None:
        """Before the cell starts: its build is kept while the cell is not killed."""
        options = {k: str(v) if isinstance(v, Path) else v for k, v in launch.container_options().items()}
        async with self._layout:
            await self.store.add_template_cell(cell_id, launch.template_id, launch.version, options)

    async def container_options(self, cell_id: str) -> dict[str, Any]:
        """The CellSpec fields a cell's container needs when it is started again (a restore)."""
        use = await self.store.template_cell(cell_id)
        if use is None:
            return {}
        return {k: Path(v) if k in ("layer", "user_db") and v else v for k, v in use.options.items()}

    async def prepare_cell(self, launch: Launch, agent: Any, envs: dict[str, str]) -> None:
        """Files, working directory, start command and readiness, before the cell is handed over."""
        if launch.workdir != "/data":
            await agent.request("POST", "/files/mkdir", json={"path": launch.workdir})
        files_dir = launch.layer / "files"
        for entry in launch.files:
            data = await asyncio.to_thread((files_dir / entry["path"].lstrip("/")).read_bytes)
            params = {"path": entry["path"]}
            if entry.get("mode") is not None:
                params["mode"] = format(entry["mode"], "o")
            await agent.request("PUT", "/files/raw", params=params, content=data)
        if launch.start_command:
            await agent.request(
                "POST", "/processes", json={"command": launch.start_command, "cwd": launch.workdir, "envs": envs}
            )
        if launch.ready_command:
            await self._wait_ready(launch, agent, envs)

    async def _wait_ready(self, launch: Launch, agent: Any, envs: dict[str, str]) -> None:
        deadline = time.monotonic() + self.config.template_ready_timeout_s
        result: dict = {}
        while time.monotonic() < deadline:
            result = await agent.request(
                "POST", "/commands/run", timeout=30,
                json={"command": launch.ready_command, "cwd": launch.workdir, "envs": envs, "timeout": 10},
            )
            if result.get("exit_code") == 0:
                return
            await asyncio.sleep(0.25)
        output = (result.get("stderr") or result.get("stdout") or "").strip()[-300:]
        raise ApiError(
            500,
            f"the template's ready_command did not succeed within {self.config.template_ready_timeout_s:g} s "
            f"(last exit code {result.get('exit_code')}: {output})",
            "template_not_ready",
        )

