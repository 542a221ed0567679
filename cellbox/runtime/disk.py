"""Each cell's writable disk: an ext4 image on a loop device, so its size is a real bound.

Sparse until written, created with the cell's directories already owned by the
cell user, and mounted nosuid,nodev.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from . import CellRuntimeError


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


def _layout(owner: int) -> Path:
    """A directory holding the disk's initial tree, for mkfs -d."""
    top = Path(tempfile.mkdtemp(prefix="cellbox-disk-"))
    for name, mode in (("data", 0o755), ("home", 0o755), ("tmp", 0o1777)):
        path = top / name
        path.mkdir()
        path.chmod(mode)
        shutil.chown(path, owner, owner)
    return top


async def create(image: Path, mount_point: Path, size_mb: int, owner: int) -> None:
    image.touch()
    with open(image, "r+b") as f:
        f.truncate(size_mb * 1024 * 1024)
    layout = await asyncio.to_thread(_layout, owner)
    try:
        code, out = await _run(
            "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
            "-E", f"nodiscard,lazy_itable_init=1,root_owner={owner}:{owner}",
            "-d", str(layout), str(image),
        )
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    if code != 0:
        raise CellRuntimeError(f"could not create the cell's disk: {out}")
    mount_point.mkdir(exist_ok=True)
    code, out = await _run("mount", "-o", "loop,nosuid,nodev", str(image), str(mount_point))
    if code != 0:
        raise CellRuntimeError(f"could not mount the cell's disk: {out}")


async def release(mount_point: Path) -> None:
    """Unmount (the loop device goes with it). Safe to call when not mounted."""
    if not mount_point.is_dir():
        return
    code, _ = await _run("mountpoint", "-q", str(mount_point))
    if code != 0:
        return
    code, out = await _run("umount", str(mount_point))
    if code != 0:
        # Busy (a process still had a file open): detach now, freed when it closes.
        await _run("umount", "-l", str(mount_point))
