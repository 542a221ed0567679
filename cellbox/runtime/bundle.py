"""The OCI bundle of a cell: config.json and the read-only root it points at.

The root filesystem is the host's own system directories bind-mounted read-only
under a small generated /etc, so a cell costs no image build; what the cell can
write lives on its own disk (``disk.py``) mounted at /data, /home/user and /tmp.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

from . import FIRST_ID_BASE, ID_RANGE, CellSpec

CELL_UID = 1000
CELL_GID = 1000
# Root in the cell's user namespace is an unprivileged host uid (the spec's id_base);
# the cell user (1000) is id_base + 1000 on the host.
HOST_ID_BASE = FIRST_ID_BASE

# Docker's default capability set: the most a cell may ever hold. The cell user is
# not root, so its effective set is empty; this bounds what a setuid binary could gain
# (and noNewPrivileges stops that too).
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

# As in the OCI runtime-spec defaults (and Docker's).
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
    # Block devices name every cell's disk image (and so other cells' ids) on the host.
    "/sys/block", "/sys/class/block", "/sys/dev/block", "/sys/devices/virtual/block",
]
READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]

# Host directories shared read-only with every cell. On merged-/usr hosts /bin,
# /lib... are symlinks into /usr and are recreated as symlinks in the root skeleton.
SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
# Public, secret-free parts of the host's /etc that programs expect.
ETC_BINDS = ["/etc/alternatives", "/etc/ssl", "/etc/ca-certificates"]

CELL_DIRS = {"/data": "data", "/home/user": "home", "/tmp": "tmp"}
AGENT_SUPPORT_MOUNT = "/opt/cellbox"
# A template's read-only layer; /opt/build is where a template build binds its inputs.
TEMPLATE_MOUNT = "/opt/template"
TEMPLATE_BUILD_MOUNT = "/opt/build"
AGENT_LISTEN_FD = 3

CELL_PATH = "/home/user/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env() -> dict[str, str]:
    return {
        "PATH": CELL_PATH,
        "HOME": "/home/user",
        "USER": "user",
        "LOGNAME": "user",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm-256color",
        "PYTHONUNBUFFERED": "1",
    }


def cell_share(limit: int, most: int) -> int:
    """One cell's part of a limit that all cells' namespaces also charge to root.

    Root's own limit bounds them all together, so a cell gets at most a sixteenth of
    it (and never more than ``most``): one cell cannot use it all up.
    """
    hard = resource.getrlimit(limit)[1]
    return most if hard == resource.RLIM_INFINITY else max(1, min(most, hard // 16))


def _bind(destination: str, source: str, *, readonly: bool = True, extra: tuple[str, ...] = ()) -> dict:
    options = ["rbind", "nosuid", "nodev", *(["ro"] if readonly else ["rw"]), *extra]
    return {"destination": destination, "type": "bind", "source": source, "options": options}


def prepare_root_skeleton(root: Path) -> None:
    """The shared, read-only root: only mount points and merged-/usr symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    for directory in ["proc", "sys", "dev", "etc", "usr", "data", "home/user", "tmp", "run", "opt/cellbox", "var/tmp",
                      TEMPLATE_MOUNT.lstrip("/"), TEMPLATE_BUILD_MOUNT.lstrip("/")]:
        (root / directory).mkdir(parents=True, exist_ok=True)
    for system_dir in SYSTEM_DIRS[1:]:
        host = Path(system_dir)
        target = root / system_dir.lstrip("/")
        if host.is_symlink():
            if not target.is_symlink():
                if target.exists():
                    target.rmdir()
                target.symlink_to(os.readlink(host))
        elif host.is_dir():
            target.mkdir(exist_ok=True)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755)


def user_db(user: str = "user") -> dict[str, str]:
    """/etc/passwd and /etc/group naming the cell user (uid 1000) ``user``."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{user}:x:{CELL_UID}:{CELL_GID}:cell user:/home/user:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\ntty:x:5:\n{user}:x:{CELL_GID}:\nnogroup:x:65534:\n",
    }


def write_etc(etc: Path, hostname: str) -> None:
    """The cell's /etc: its own users and names, nothing from the host that is secret."""
    etc.mkdir(parents=True, exist_ok=True)
    files = {
        **user_db(),
        "hostname": f"{hostname}\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n",
        # No network yet: an empty resolver fails lookups fast instead of timing out.
        "resolv.conf": "",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        "os-release": Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else "",
    }
    for name in ("bash.bashrc", "profile", "inputrc", "mime.types", "ld.so.cache", "gai.conf"):
        host = Path("/etc") / name
        if host.is_file():
            files[name] = host.read_bytes()  # type: ignore[assignment]
    for name, content in files.items():
        target = etc / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        target.chmod(0o644)
    for bind in ETC_BINDS:
        (etc / Path(bind).name).mkdir(exist_ok=True)
    localtime = etc / "localtime"
    if not localtime.is_symlink():
        localtime.symlink_to("/usr/share/zoneinfo/Etc/UTC")


def build_config(
    spec: CellSpec,
    *,
    root: Path,
    etc: Path,
    disk_mount: Path,
    support: Path,
    seccomp: dict[str, Any] | None,
    agent_python: str,
    cgroups_path: str,
    user_namespace: bool = True,
) -> dict[str, Any]:
    limits = spec.limits
    env = base_env()
    if spec.user:
        env["USER"] = env["LOGNAME"] = spec.user
    if spec.layer is not None:
        env["PATH"] = f"{TEMPLATE_MOUNT}/python/bin:{TEMPLATE_MOUNT}/node_modules/.bin:{CELL_PATH}"
        env["PYTHONPATH"] = f"{TEMPLATE_MOUNT}/python"
        env["NODE_PATH"] = f"{TEMPLATE_MOUNT}/node_modules"
    # The cell's own variables are not the agent's: they could steer the agent itself
    # (LD_PRELOAD...). The server gives them with every command, execution and terminal.
    env["CELLBOX_AGENT_LISTEN_FD"] = str(AGENT_LISTEN_FD)
    if spec.workdir:
        env["CELLBOX_AGENT_WORKDIR"] = spec.workdir
    memory = limits.memory_mb * 1024 * 1024
    # At least 1 % of a CPU: a quota that rounds to 0 would mean no limit at all.
    cpu_quota = max(1000, round(limits.cpu_count * 100_000))
    # A cell cannot raise a limit above the host's own hard limit.
    nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    msgqueue, sigpending = cell_share(resource.RLIMIT_MSGQUEUE, 819200), cell_share(resource.RLIMIT_SIGPENDING, 8192)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755", "size=16m"]},
    ]
    for system_dir in SYSTEM_DIRS:
        host = Path(system_dir)
        if host.is_dir() and not host.is_symlink():
            mounts.append(_bind(system_dir, system_dir))
    mounts.append(_bind("/etc", str(etc)))
    if spec.user_db is not None:
        mounts += [_bind(f"/etc/{name}", str(spec.user_db / name)) for name in ("passwd", "group")]
    for bind in ETC_BINDS:
        if Path(bind).is_dir():
            mounts.append(_bind(bind, bind))
    mounts.append(_bind(AGENT_SUPPORT_MOUNT, str(support)))
    if spec.layer is not None:
        mounts.append(_bind(TEMPLATE_MOUNT, str(spec.layer)))
    for destination, subdir in CELL_DIRS.items():
        mounts.append(_bind(destination, str(disk_mount / subdir), readonly=False))

    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "cgroupsPath": cgroups_path,
        "resources": {
            "devices": [{"allow": False, "access": "rwm"}],
            "memory": {"limit": memory, "swap": memory},
            "cpu": {"quota": cpu_quota, "period": 100_000},
            "pids": {"limit": limits.pids},
        },
    }
    if user_namespace:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": spec.id_base, "size": ID_RANGE}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": spec.id_base, "size": ID_RANGE}]
    if seccomp is not None:
        linux["seccomp"] = seccomp

    bootstrap = (
        f"import sys; sys.path.insert(0, '{AGENT_SUPPORT_MOUNT}/lib'); "
        "import runpy; runpy.run_module('cellbox_agent', run_name='__main__', alter_sys=True)"
    )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": CELL_UID, "gid": CELL_GID},
            "args": [agent_python, "-I", "-c", bootstrap],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/data",
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": [],
                "inheritable": [],
                "permitted": [],
                "ambient": [],
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
                # Counted per user of the cell's own namespace, so these are per cell.
                {"type": "RLIMIT_MSGQUEUE", "hard": msgqueue, "soft": msgqueue},
                {"type": "RLIMIT_SIGPENDING", "hard": sigpending, "soft": sigpending},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": str(root), "readonly": True},
        "hostname": spec.cell_id,
        "mounts": mounts,
        "linux": linux,
    }


def write_config(bundle: Path, config: dict[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
