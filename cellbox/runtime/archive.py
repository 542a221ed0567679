"""Snapshot archives of a cell's disk: written and hashed in one pass, verified before use.

An archive is a tar of the disk's top-level directories (data, home, tmp) with
numeric owners, so it restores with the same ids in the cell's user namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from . import CellRuntimeError

_CHUNK = 1024 * 1024
DISK_DIRS = ("data", "home", "tmp")


async def create(source: Path, archive: Path) -> tuple[int, str]:
    """Archive ``source`` into ``archive``; answer (size in bytes, SHA-256)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    proc = await asyncio.create_subprocess_exec(
        "tar", "--numeric-owner", "--sparse", "--xattrs", "-C", str(source), "-cf", "-", *DISK_DIRS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    digest = hashlib.sha256()
    size = 0
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with open(partial, "wb") as out:
            while chunk := await proc.stdout.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(os.fsync, out.fileno())
        errors = (await proc.stderr.read()).decode(errors="replace").strip()
        if await proc.wait() != 0:
            raise CellRuntimeError(f"could not archive the cell's disk: {errors}")
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        partial.unlink(missing_ok=True)
        raise
    partial.rename(archive)
    return size, digest.hexdigest()


def _digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def verify(archive: Path, expected: str) -> None:
    """Raise unless the archive exists and has the digest recorded when it was made."""
    if not archive.is_file():
        raise CellRuntimeError(f"snapshot archive {archive.name} is missing")
    actual = await asyncio.to_thread(_digest_of, archive)
    if actual != expected:
        raise CellRuntimeError(
            f"snapshot archive {archive.name} is corrupt: its SHA-256 is {actual[:16]}..., "
            f"recorded {expected[:16]}..."
        )


async def extract(archive: Path, target: Path) -> None:
    """Unpack into a fresh disk (as root, keeping the archive's numeric owners)."""
    for name in DISK_DIRS:
        existing = target / name
        if existing.exists():
            proc = await asyncio.create_subprocess_exec("rm", "-rf", str(existing))
            await proc.wait()
    proc = await asyncio.create_subprocess_exec(
        "tar", "--numeric-owner", "--same-owner", "--xattrs", "-C", str(target), "-xf", str(archive),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await proc.communicate()
    if proc.returncode != 0:
        raise CellRuntimeError(f"could not restore the snapshot: {errors.decode(errors='replace').strip()}")


def shift_owners(root: Path, old_base: int, new_base: int) -> None:
    """Move files restored from another cell's id range into this cell's range."""
    from . import ID_RANGE

    def shifted(value: int) -> int:
        return value - old_base + new_base if old_base <= value < old_base + ID_RANGE else value

    for directory, dirnames, filenames in os.walk(root):
        for name in [directory, *(os.path.join(directory, n) for n in dirnames + filenames)]:
            st = os.lstat(name)
            uid, gid = shifted(st.st_uid), shifted(st.st_gid)
            if (uid, gid) != (st.st_uid, st.st_gid):
                os.lchown(name, uid, gid)
                if not os.path.islink(name) and st.st_mode & 0o6000:
                    os.chmod(name, st.st_mode & 0o7777)  # chown clears setuid/setgid bits
