"""A short-lived container with a cell's isolation, for one build step.

The bundle is a cell's (``bundle.build_config``): same namespaces, user mapping,
seccomp profile, limits and read-only system; only the process and a few extra
binds differ. It has no network, so whatever it needs is bound in beforehand.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path
from typing import Any

from ..runtime import CellSpec, Limits, bundle
from ..runtime.oci import OciRuntime, run
from ..runtime.seccomp import default_oci_seccomp

# Builds get their own runtime state directory: the cell manager never sees
# (nor adopts) them, and what a crash left behind is deleted at start.
BUILD_STATE = "builds"


def build_state_root(runtime: OciRuntime) -> Path:
    return runtime.data_dir / "runtime" / f"{runtime.name}-{BUILD_STATE}"


async def clear_leftovers(runtime: OciRuntime) -> None:
    """Delete build containers a previous server left (it died mid-build)."""
    root = build_state_root(runtime)
    if not root.exists():
        return
    code, out = await run(runtime.binary, "--root", str(root), "list", "-q", check=False)
    for container in out.split() if code == 0 else []:
        await run(runtime.binary, "--root", str(root), "delete", "--force", container, check=False)


def cell_owner(runtime: OciRuntime) -> int:
    """The host uid of the cell user: what a writable bind must be owned by."""
    return bundle.HOST_ID_BASE + bundle.CELL_UID if runtime.user_namespace else bundle.CELL_UID


async def run_isolated(
    runtime: OciRuntime,
    work: Path,
    argv: list[str],
    *,
    binds: list[tuple[str, Path, bool]],
    env: dict[str, str],
    limits: Limits,
    log_path: Path,
    timeout: float,
) -> int:
    """Run ``argv`` as the cell user in a cell-like container; output appended to ``log_path``.

    ``binds`` are (destination, host source, writable). ``work`` is a scratch
    directory for the bundle and the job's /data, /home/user and /tmp.
    Answers the exit code; raises TimeoutError past ``timeout``.
    """
    assert runtime.support is not None, "the runtime must be prepared first"
    job_id = f"build-{secrets.token_hex(6)}"
    owner = cell_owner(runtime)
    scratch = work / "scratch"
    for subdir in bundle.CELL_DIRS.values():
        (scratch / subdir).mkdir(parents=True, exist_ok=True)
        shutil.chown(scratch / subdir, owner, owner)
    (scratch / "tmp").chmod(0o1777)
    bundle.write_etc(work / "etc", job_id)
    kwargs = {"profile_path": runtime.seccomp_profile} if runtime.seccomp_profile else {}
    config: dict[str, Any] = bundle.build_config(
        CellSpec(job_id, limits, env),
        root=runtime.root,
        etc=work / "etc",
        disk_mount=scratch,
        support=runtime.support,
        seccomp=default_oci_seccomp(tuple(bundle.DEFAULT_CAPABILITIES), **kwargs),
        agent_python=runtime.agent_python,
        cgroups_path=f"/cellbox/{job_id}",
        user_namespace=runtime.user_namespace,
    )
    config["process"]["args"] = argv
    config["process"]["env"] += [f"{k}={v}" for k, v in env.items()]  # ours, not a user's
    config["process"]["cwd"] = "/tmp"
    for destination, source, writable in binds:
        config["mounts"].append(
            {"destination": destination, "type": "bind", "source": str(source),
             "options": ["rbind", "nosuid", "nodev", "rw" if writable else "ro"]}
        )
    bundle.write_config(work / "bundle", config)

    state = ["--root", str(build_state_root(runtime))]
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            runtime.binary, *state, "run", "--bundle", str(work / "bundle"), job_id,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the build step did not finish within {timeout:g} s") from None
        finally:
            if proc.returncode is None:
                await run(runtime.binary, *state, "kill", job_id, "KILL", check=False)
            await run(runtime.binary, *state, "delete", "--force", job_id, check=False)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
