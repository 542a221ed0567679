"""Podman's default seccomp profile, resolved into the OCI ``linux.seccomp`` shape.

Writing and maintaining a syscall allow-list ourselves would be a security
liability, so cells reuse the profile Debian ships with containers-common
(``/usr/share/containers/seccomp.json``). That file is in Docker's profile format,
which is conditional: rules carry ``includes``/``excludes`` on capabilities,
architectures and kernel versions. runc only understands the flat OCI
runtime-spec shape, so ``to_oci`` evaluates those conditions once for this host
and this cell's capability set, the way moby's ``setupSeccomp`` (and
containers/common's copy of it) does:

* ``excludes.arches``: drop the rule if the native arch is listed.
* ``excludes.caps``: drop the rule if ANY listed capability is granted.
* ``excludes.minKernel``: drop the rule if the kernel is at least that version.
* ``includes.arches``: keep the rule only if the native arch is listed (only the
  native arch is compared, not its sub-architectures, exactly like moby).
* ``includes.caps``: keep the rule only if ALL listed capabilities are granted.
* ``includes.minKernel``: keep the rule only if the kernel is at least that version.

Arch names inside ``includes``/``excludes`` are libseccomp's short names
(``amd64``, ``arm64``, ``x86`` ...), while ``archMap`` and the output use
``SCMP_ARCH_*`` names.
"""

from __future__ import annotations

import copy
import functools
import json
import platform
import re
from typing import Any, Iterable

DEFAULT_PROFILE_PATH = "/usr/share/containers/seccomp.json"
PROFILE_PACKAGE = "golang-github-containers-common"

# platform.machine() spellings -> libseccomp's native arch name, the vocabulary
# of includes/excludes.arches. Native names map to themselves so callers may
# pass either spelling.
_MACHINE_TO_NATIVE: dict[str, str] = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "x86": "x86",
    "x32": "x32",
    "aarch64": "arm64",
    "arm64": "arm64",
    "aarch64_be": "arm64",
    "arm": "arm",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv8l": "arm",
    "mips": "mips",
    "mipsel": "mipsel",
    "mips64": "mips64",
    "mips64n32": "mips64n32",
    "mipsel64": "mipsel64",
    "mipsel64n32": "mipsel64n32",
    "ppc": "ppc",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "s390": "s390",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

# libseccomp native name -> SCMP_ARCH_* constant used in archMap and by runc.
_NATIVE_TO_SCMP: dict[str, str] = {
    "amd64": "SCMP_ARCH_X86_64",
    "x86": "SCMP_ARCH_X86",
    "x32": "SCMP_ARCH_X32",
    "arm64": "SCMP_ARCH_AARCH64",
    "arm": "SCMP_ARCH_ARM",
    "mips": "SCMP_ARCH_MIPS",
    "mipsel": "SCMP_ARCH_MIPSEL",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}

# OCI LinuxSeccompArg keys. Go's encoding/json matches keys case-insensitively,
# so moby accepts e.g. "Index" or "valuetwo"; we accept the same and emit the
# spec's spelling.
_ARG_KEYS = {"index": "index", "value": "value", "valuetwo": "valueTwo", "op": "op"}

_KERNEL_RE = re.compile(r"^\s*(\d+)\.(\d+)")


class SeccompProfileMissing(RuntimeError):
    """The Docker-format seccomp profile file does not exist on this host."""


def load_profile(path: str = DEFAULT_PROFILE_PATH) -> dict:
    """Read a Docker-format seccomp profile, failing with an actionable message.

    A missing profile must stop cell creation rather than silently run cells
    unconfined, so the error says how to get the file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            profile = json.load(fh)
    except FileNotFoundError:
        raise SeccompProfileMissing(
            f"seccomp profile {path} not found: install the Debian package "
            f"{PROFILE_PACKAGE} (apt-get install {PROFILE_PACKAGE}), "
            "or pass another profile path"
        ) from None
    if not isinstance(profile, dict):
        raise ValueError(f"seccomp profile {path} is not a JSON object")
    return profile


def _parse_kernel(release: str) -> tuple[int, int]:
    """``"6.1.0-13-amd64"`` or ``"4.8"`` -> ``(6, 1)`` / ``(4, 8)``."""
    m = _KERNEL_RE.match(str(release))
    if not m:
        raise ValueError(f"cannot parse kernel version {release!r}")
    return int(m.group(1)), int(m.group(2))


def _native_arch(machine: str | None) -> str:
    machine = platform.machine() if machine is None else machine
    key = machine.strip().lower()
    # Unknown machines behave like moby on an unknown GOARCH: no archMap entry
    # matches, and arch-conditional rules compare against the raw name.
    return _MACHINE_TO_NATIVE.get(key, key)


def _convert_args(args: Any) -> list[dict]:
    out = []
    for arg in args or ():
        conv: dict[str, Any] = {}
        for key, value in arg.items():
            oci_key = _ARG_KEYS.get(key.lower())
            if oci_key is None:
                raise ValueError(f"unknown seccomp arg field {key!r} in {arg!r}")
            conv[oci_key] = value
        if "index" not in conv or "op" not in conv:
            raise ValueError(f"seccomp arg needs index and op: {arg!r}")
        conv.setdefault("value", 0)
        out.append(conv)
    return out


def to_oci(
    profile: dict,
    *,
    machine: str | None = None,
    capabilities: Iterable[str],
    kernel: tuple[int, int] | None = None,
) -> dict:
    """Resolve a Docker-format profile into OCI ``linux.seccomp`` for one host.

    ``capabilities`` is the cell's bounding set (``CAP_*`` names). Rules whose
    conditions fail are dropped; ``comment``/``includes``/``excludes`` and
    containers-common extras (``errno``, ``defaultErrno``) are not emitted since
    runc does not read them. The result is a fresh, JSON-serialisable dict.
    """
    if isinstance(capabilities, str):
        raise TypeError("capabilities must be an iterable of CAP_* names, not a string")
    caps = frozenset(capabilities)
    bad = sorted(c for c in caps if not (isinstance(c, str) and c.startswith("CAP_")))
    if bad:
        raise ValueError(f"capability names must look like CAP_SYS_ADMIN, got {bad!r}")

    default_action = profile.get("defaultAction")
    if not default_action:
        raise ValueError("seccomp profile has no defaultAction")

    arch = _native_arch(machine)
    scmp_arch = _NATIVE_TO_SCMP.get(arch)

    explicit_arches = profile.get("architectures") or []
    arch_map = profile.get("archMap") or []
    if explicit_arches and arch_map:
        raise ValueError("seccomp profile sets both 'architectures' and 'archMap'; use one")
    architectures: list[str] = list(explicit_arches)
    if scmp_arch is not None:
        for entry in arch_map:
            if entry.get("architecture") == scmp_arch:
                architectures.append(scmp_arch)
                architectures.extend(entry.get("subArchitectures") or [])
                break

    kernel_cache: list[tuple[int, int]] = [] if kernel is None else [tuple(kernel)]

    def kernel_at_least(min_kernel: str) -> bool:
        if not kernel_cache:
            kernel_cache.append(_parse_kernel(platform.release()))
        return kernel_cache[0] >= _parse_kernel(min_kernel)

    syscalls: list[dict] = []
    for rule in profile.get("syscalls") or []:
        excludes = rule.get("excludes") or {}
        includes = rule.get("includes") or {}

        if arch in (excludes.get("arches") or ()):
            continue
        if any(c in caps for c in excludes.get("caps") or ()):
            continue
        if excludes.get("minKernel") and kernel_at_least(excludes["minKernel"]):
            continue
        inc_arches = includes.get("arches") or ()
        if inc_arches and arch not in inc_arches:
            continue
        if not all(c in caps for c in includes.get("caps") or ()):
            continue
        if includes.get("minKernel") and not kernel_at_least(includes["minKernel"]):
            continue

        name, names = rule.get("name"), rule.get("names") or []
        if name and names:
            raise ValueError(f"seccomp rule sets both 'name' and 'names': {rule!r}")
        if not rule.get("action"):
            raise ValueError(f"seccomp rule has no action: {rule!r}")
        out: dict[str, Any] = {
            "names": [name] if name else list(names),
            "action": rule["action"],
        }
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = int(rule["errnoRet"])
        args = _convert_args(rule.get("args"))
        if args:
            out["args"] = args
        syscalls.append(out)

    result: dict[str, Any] = {"defaultAction": default_action}
    if profile.get("defaultErrnoRet") is not None:
        result["defaultErrnoRet"] = int(profile["defaultErrnoRet"])
    result["architectures"] = architectures
    result["syscalls"] = syscalls
    # Deep copy so callers can edit the result without touching the profile.
    return copy.deepcopy(result)


# Podman's profile (the one Debian ships) leaves namespace creation and mounting to
# the capability checks; Docker's default denies them in the filter too. A cell may
# never hold CAP_SYS_ADMIN, so these are denied outright to match Docker: without
# them, user code cannot make a user namespace and reach kernel code paths that are
# otherwise only open to root.
_DENIED_WITHOUT_SYS_ADMIN = (
    "add_key", "bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "keyctl",
    "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree",
    "perf_event_open", "pivot_root", "quotactl", "request_key", "setdomainname", "sethostname",
    "setns", "syslog", "umount", "umount2", "unshare",
)
_EPERM = 1
_ENOSYS = 38
# CLONE_NEWNS|CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET
_CLONE_NAMESPACE_FLAGS = 0x7E020000


def deny_namespace_escapes(oci: dict) -> dict:
    """Tighten a resolved filter for a cell without CAP_SYS_ADMIN, as Docker's profile does.

    ``clone`` stays allowed only without namespace flags; ``clone3`` answers ENOSYS,
    which makes libc fall back to ``clone``, whose flags the filter can see.
    """
    denied = set(_DENIED_WITHOUT_SYS_ADMIN) | {"clone", "clone3"}
    syscalls = []
    for rule in oci["syscalls"]:
        if rule.get("action") == "SCMP_ACT_ALLOW":
            names = [n for n in rule["names"] if n not in denied]
            if not names:
                continue
            rule = {**rule, "names": names}
        syscalls.append(rule)
    syscalls += [
        {"names": list(_DENIED_WITHOUT_SYS_ADMIN), "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS},
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        },
    ]
    return {**oci, "syscalls": syscalls}


@functools.lru_cache(maxsize=32)
def _cached(capabilities: frozenset[str], profile_path: str) -> dict:
    oci = to_oci(load_profile(profile_path), capabilities=capabilities)
    if "CAP_SYS_ADMIN" not in capabilities:
        oci = deny_namespace_escapes(oci)
    return oci


def default_oci_seccomp(
    capabilities: Iterable[str], profile_path: str = DEFAULT_PROFILE_PATH
) -> dict:
    """Load and resolve the host profile for a capability set, cached.

    Every cell with the same capabilities gets the same filter, so the file is
    parsed once per (capabilities, path); each call returns its own copy.
    """
    if isinstance(capabilities, str):
        raise TypeError("capabilities must be an iterable of CAP_* names, not a string")
    return copy.deepcopy(_cached(frozenset(capabilities), profile_path))
