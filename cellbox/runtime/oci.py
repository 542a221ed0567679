"""Cells as OCI containers run by an OCI runtime binary (runc, crun, runsc...).

We write the bundle and call the binary; namespaces, cgroups and seccomp are the
runtime's job. Every call is an async subprocess so nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import compileall
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import socket
import time
from pathlib import Path

from . import CellRuntimeError, CellSpec
from . import archive, bundle, disk
from .seccomp import default_oci_seccomp

log = logging.getLogger("cellbox.runtime")

_COMMAND_TIMEOUT_S = 30
_PING_CACHE_S = 5.0


async def run(*argv: str, timeout: float = _COMMAND_TIMEOUT_S, check: bool = True) -> tuple[int, str]:
    """Run a host command; answer (exit code, combined output)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise CellRuntimeError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} timed out after {timeout} s")
    text = out.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise CellRuntimeError(f"`{' '.join(argv[:4])} ...` failed ({proc.returncode}): {text}")
    return proc.returncode or 0, text


class OciRuntime:
    def __init__(
        self,
        data_dir: Path,
        binary: str = "runc",
        agent_python: str = "/usr/bin/python3",
        seccomp_profile: str | None = None,
        user_namespace: bool = True,
    ) -> None:
        self.name = Path(binary).name
        self.binary = binary
        self.data_dir = data_dir
        self.state_root = data_dir / "runtime" / self.name
        self.cells_dir = data_dir / "cells"
        self.root = data_dir / "rootfs"
        self.agent_python = agent_python
        self.seccomp_profile = seccomp_profile
        self.user_namespace = user_namespace
        self.support: Path | None = None
        self._pinged_at = float("-inf")
        self._ping_ok = False

    # -- set-up -------------------------------------------------------------

    async def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise CellRuntimeError(
                f"the OCI runtime {self.binary!r} is not installed (on Debian: apt-get install runc)"
            )
        await run(self.binary, "--version")
        if not Path(self.agent_python).is_file():
            raise CellRuntimeError(
                f"the cell interpreter {self.agent_python} is missing (on Debian: apt-get install python3)"
            )
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                raise CellRuntimeError(f"{tool} is not installed (on Debian: apt-get install e2fsprogs mount)")
        self._seccomp()  # raises with the package to install when the profile is missing
        if self.user_namespace:
            for directory in [self.data_dir, *self.data_dir.parents]:
                if directory.exists() and not directory.stat().st_mode & 0o001:
                    raise CellRuntimeError(
                        f"{directory} is not traversable by other users (mode o+x), so a cell's unprivileged "
                        f"ids cannot reach its files under {self.data_dir}; choose a data directory elsewhere "
                        f"or chmod o+x {directory}"
                    )

    async def ping(self) -> bool:
        """Does the runtime answer? Cached briefly: health checks may come often."""
        now = time.monotonic()
        if now - self._pinged_at > _PING_CACHE_S:
            try:
                code, _ = await run(*self._runtime("list", "--quiet"), timeout=5, check=False)
                self._ping_ok = code == 0
            except CellRuntimeError:
                self._ping_ok = False
            self._pinged_at = now
        return self._ping_ok

    def prepare(self) -> None:
        """Create the shared root skeleton and publish the agent's code. Runs once at start."""
        if self.user_namespace:
            share_kernel_limits()
        for directory in (self.state_root, self.cells_dir):
            directory.mkdir(parents=True, exist_ok=True)
        bundle.prepare_root_skeleton(self.root)
        self.support = publish_agent(self.data_dir / "support")

    def _seccomp(self) -> dict:
        kwargs = {"profile_path": self.seccomp_profile} if self.seccomp_profile else {}
        return default_oci_seccomp(tuple(bundle.DEFAULT_CAPABILITIES), **kwargs)

    # -- paths ----------------------------------------------------------------

    def cell_dir(self, cell_id: str) -> Path:
        return self.cells_dir / cell_id

    def agent_socket(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "agent.sock"

    def _runtime(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_root), *args]

    # -- life cycle -------------------------------------------------------------

    async def start(self, spec: CellSpec, restore_from: Path | None = None, restore_id_base: int | None = None) -> None:
        """Start a cell; with ``restore_from``, its disk is that (verified) snapshot archive."""
        assert self.support is not None, "prepare() must run before start()"
        cell_dir = self.cell_dir(spec.cell_id)
        if cell_dir.exists():
            await self.destroy(spec.cell_id)
        cell_dir.mkdir(parents=True)
        try:
            await self._start(spec, cell_dir, restore_from, restore_id_base)
        except BaseException:
            await self.destroy(spec.cell_id)
            raise

    async def _start(
        self, spec: CellSpec, cell_dir: Path, restore_from: Path | None, restore_id_base: int | None
    ) -> None:
        owner = spec.id_base + bundle.CELL_UID if self.user_namespace else bundle.CELL_UID
        await disk.create(cell_dir / "disk.img", cell_dir / "disk", spec.limits.disk_mb, owner)
        if restore_from is not None:
            await archive.extract(restore_from, cell_dir / "disk")
            if self.user_namespace and restore_id_base not in (None, spec.id_base):
                await asyncio.to_thread(archive.shift_owners, cell_dir / "disk", restore_id_base, spec.id_base)
        bundle.write_etc(cell_dir / "etc", spec.cell_id)
        config = bundle.build_config(
            spec,
            root=self.root,
            etc=cell_dir / "etc",
            disk_mount=cell_dir / "disk",
            support=self.support,  # type: ignore[arg-type]
            seccomp=self._seccomp(),
            agent_python=self.agent_python,
            cgroups_path=f"/cellbox/{spec.cell_id}",
            user_namespace=self.user_namespace,
        )
        bundle.write_config(cell_dir / "bundle", config)

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.agent_socket(spec.cell_id)))
            listener.listen(128)
            await self._run_detached(spec.cell_id, cell_dir, listener.fileno())
            if self.user_namespace:
                await self._limit_namespace(cell_dir)
        finally:
            # The agent holds its own copy; connections queue until it accepts.
            listener.close()

    async def _run_detached(self, cell_id: str, cell_dir: Path, listen_fd: int) -> None:
        log_path = cell_dir / "agent.log"
        argv = self._runtime(
            "run", "--detach", "--preserve-fds", "1",
            "--bundle", str(cell_dir / "bundle"), "--pid-file", str(cell_dir / "pid"), cell_id,
        )
        # The runtime hands fds 3.. to the container; put the listener there.
        shell = f'exec 3<&{listen_fd} {listen_fd}<&- && exec "$@"'
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                "/bin/bash", "-c", shell, "cellbox-start", *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(listen_fd,),
                start_new_session=True,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), _COMMAND_TIMEOUT_S)
            except asyncio.TimeoutError:
                proc.kill()
                raise CellRuntimeError(f"{self.name} did not start the cell within {_COMMAND_TIMEOUT_S} s")
        if code != 0:
            raise CellRuntimeError(f"{self.name} could not start the cell: {tail(log_path)}")

    async def _limit_namespace(self, cell_dir: Path) -> None:
        """Cap what the cell's user namespace may take of limits it shares with host root.

        Cells' namespaces belong to root, and the kernel charges inotify and namespace
        counts to the owner too: without a cap, one cell could use them all up.
        """
        pid = (cell_dir / "pid").read_text().strip()
        writes = "; ".join(f"echo {value} > /proc/sys/user/{name}" for name, value in NAMESPACE_LIMITS.items())
        await run("nsenter", "--user", "--target", pid, "--", "/bin/sh", "-c", writes)

    async def destroy(self, cell_id: str) -> None:
        cell_dir = self.cell_dir(cell_id)
        await run(*self._runtime("delete", "--force", cell_id), check=False)
        await disk.release(cell_dir / "disk")
        if cell_dir.exists():
            await asyncio.to_thread(shutil.rmtree, cell_dir, True)

    async def pause(self, cell_id: str) -> None:
        """Freeze every process of the cell (cgroup freezer)."""
        await run(*self._runtime("pause", cell_id))

    async def resume(self, cell_id: str) -> None:
        await run(*self._runtime("resume", cell_id))

    async def snapshot(self, cell_id: str, target: Path) -> tuple[int, str]:
        """Archive the cell's disk; the caller has frozen the cell so the disk is at rest."""
        mount = self.cell_dir(cell_id) / "disk"
        await run("sync", "-f", str(mount))
        return await archive.create(mount, target)

    def alive(self, cell_id: str) -> bool:
        """Is the cell's first process (the agent) still there? Cheap: no runtime call."""
        try:
            pid = int((self.cell_dir(cell_id) / "pid").read_text())
            # The pid must still be the cell's: a reused pid would be in another cgroup.
            return f"/cellbox/{cell_id}" in Path(f"/proc/{pid}/cgroup").read_text()
        except (OSError, ValueError):
            return False

    async def status(self, cell_id: str) -> str | None:
        code, out = await run(*self._runtime("state", cell_id), check=False)
        if code != 0:
            return None
        return json.loads(out).get("status")

    async def list_cells(self) -> dict[str, str]:
        _, out = await run(*self._runtime("list", "--format", "json"))
        return {c["id"]: c["status"] for c in json.loads(out or "null") or []}

    def startup_log(self, cell_id: str) -> str:
        return tail(self.cell_dir(cell_id) / "agent.log")


# Per cell, inside its user namespace. New namespaces are denied by seccomp already;
# these zeros hold even if a filter were bypassed.
NAMESPACE_LIMITS = {
    "max_inotify_instances": 128,
    "max_inotify_watches": 16384,
    "max_user_namespaces": 0,
    "max_mnt_namespaces": 0,
    "max_net_namespaces": 0,
    "max_pid_namespaces": 0,
    "max_ipc_namespaces": 0,
    "max_uts_namespaces": 0,
    "max_cgroup_namespaces": 0,
}
# Host-wide floors for root, whose allowance every cell's namespace also draws from.
HOST_INOTIFY_FLOORS = {"max_user_instances": 65536, "max_user_watches": 4194304}


def share_kernel_limits() -> None:
    """Give root (the owner of every cell's namespace) room for many cells' shares.

    Raises host settings only when they are lower, and says so in the log: inotify
    counts, and the message-queue and pending-signal rlimits runc's children inherit.
    """
    for name, floor in HOST_INOTIFY_FLOORS.items():
        path = Path("/proc/sys/fs/inotify") / name
        try:
            if int(path.read_text()) < floor:
                path.write_text(str(floor))
                log.warning("raised fs.inotify.%s to %d so that cells cannot exhaust root's share", name, floor)
        except (OSError, ValueError) as exc:
            log.warning("could not raise fs.inotify.%s: %s", name, exc)
    for limit, floor in ((resource.RLIMIT_MSGQUEUE, 1 << 30), (resource.RLIMIT_SIGPENDING, 1 << 20)):
        soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY and hard < floor:
            try:
                resource.setrlimit(limit, (floor, floor))
            except (OSError, ValueError) as exc:
                log.warning("could not raise rlimit %s: %s", limit, exc)


def tail(path: Path, size: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def publish_agent(support_root: Path) -> Path:
    """Copy the agent, h11 and dill into a content-addressed, read-only support directory.

    ``lib/`` is the agent's import path; ``vendor/`` holds what user-side code of
    ours borrows (dill, to save a namespace), so user code never sees the agent's
    modules. Running cells keep the copy they started with; a new version gets a
    new directory instead of changing files under live agents.
    """
    import dill
    import h11

    from .. import agent

    sources = {
        "lib/cellbox_agent": Path(agent.__file__).parent,
        "lib/h11": Path(h11.__file__).parent,
        "vendor/dill": Path(dill.__file__).parent,
    }
    digest = hashlib.sha256(platform.python_version().encode())
    for name, src in sorted(sources.items()):
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(name.encode() + str(path.relative_to(src)).encode() + path.read_bytes())
    target = support_root / digest.hexdigest()[:16]
    if not target.exists():
        staging = support_root / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for name, src in sources.items():
            shutil.copytree(src, staging / name, ignore=shutil.ignore_patterns("__pycache__"))
        # Compiled here because the cells mount this read-only.
        compileall.compile_dir(str(staging), quiet=2)
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.rename(target)
    return target
