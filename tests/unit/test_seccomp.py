"""Resolution of Docker-format seccomp profiles into OCI ``linux.seccomp``."""

from __future__ import annotations

import json
import os

import pytest

from cellbox.runtime import seccomp
from cellbox.runtime.seccomp import (
    DEFAULT_PROFILE_PATH,
    SeccompProfileMissing,
    default_oci_seccomp,
    load_profile,
    to_oci,
)

DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

ARCH_MAP = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
]


def profile(*rules: dict, **top) -> dict:
    base = {"defaultAction": "SCMP_ACT_ERRNO", "archMap": ARCH_MAP, "syscalls": list(rules)}
    base.update(top)
    return base


def rule(names, action="SCMP_ACT_ALLOW", **extra) -> dict:
    return {"names": list(names), "action": action, "comment": "", **extra}


def names_of(oci: dict) -> list[list[str]]:
    return [r["names"] for r in oci["syscalls"]]


def convert(p: dict, caps=(), machine="x86_64", kernel=(6, 1)) -> dict:
    return to_oci(p, machine=machine, capabilities=caps, kernel=kernel)


# -- capabilities ---------------------------------------------------------------


def test_includes_caps_requires_all_listed_caps():
    p = profile(rule(["bpf"], includes={"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}))
    assert names_of(convert(p, caps=["CAP_SYS_ADMIN", "CAP_BPF", "CAP_KILL"])) == [["bpf"]]
    assert names_of(convert(p, caps=["CAP_SYS_ADMIN"])) == []
    assert names_of(convert(p, caps=["CAP_BPF"])) == []
    assert names_of(convert(p, caps=[])) == []


def test_excludes_caps_drops_rule_when_any_listed_cap_granted():
    p = profile(
        rule(["acct"], "SCMP_ACT_ERRNO", errnoRet=1, excludes={"caps": ["CAP_SYS_PACCT", "CAP_SYS_ADMIN"]})
    )
    assert names_of(convert(p, caps=["CAP_KILL"])) == [["acct"]]
    assert names_of(convert(p, caps=["CAP_SYS_PACCT"])) == []
    assert names_of(convert(p, caps=["CAP_SYS_ADMIN"])) == []


def test_include_exclude_pair_flips_with_capability():
    p = profile(
        rule(["chroot"], includes={"caps": ["CAP_SYS_CHROOT"]}),
        rule(["chroot"], "SCMP_ACT_ERRNO", errnoRet=1, excludes={"caps": ["CAP_SYS_CHROOT"]}),
    )
    with_cap = convert(p, caps=["CAP_SYS_CHROOT"])["syscalls"]
    without = convert(p, caps=[])["syscalls"]
    assert [r["action"] for r in with_cap] == ["SCMP_ACT_ALLOW"]
    assert without == [{"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]


def test_capabilities_must_be_cap_names():
    with pytest.raises(ValueError):
        convert(profile(), caps=["SYS_ADMIN"])
    with pytest.raises(TypeError):
        convert(profile(), caps="CAP_SYS_ADMIN")


# -- architectures ----------------------------------------------------------------


def test_architectures_are_native_plus_sub_arches():
    assert convert(profile(), machine="x86_64")["architectures"] == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
    ]
    assert convert(profile(), machine="aarch64")["architectures"] == [
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
    ]
    # A host missing from archMap gets no list, so libseccomp uses the native arch (as moby).
    assert convert(profile(), machine="ppc64le")["architectures"] == []


def test_explicit_architectures_are_kept_and_exclusive_with_arch_map():
    p = profile(architectures=["SCMP_ARCH_X86_64"], archMap=[])
    assert convert(p)["architectures"] == ["SCMP_ARCH_X86_64"]
    with pytest.raises(ValueError):
        convert(profile(architectures=["SCMP_ARCH_X86_64"]))


def test_includes_arches_compares_native_arch_only():
    p = profile(
        rule(["arch_prctl"], includes={"arches": ["amd64", "x32"]}),
        rule(["modify_ldt"], includes={"arches": ["amd64", "x32", "x86"]}),
        rule(["set_tls", "cacheflush"], includes={"arches": ["arm", "arm64"]}),
        # Lists a sub-arch of amd64 but not amd64: moby compares the native arch only.
        rule(["vm86"], includes={"arches": ["x86"]}),
    )
    assert names_of(convert(p, machine="x86_64")) == [["arch_prctl"], ["modify_ldt"]]
    assert names_of(convert(p, machine="aarch64")) == [["set_tls", "cacheflush"]]
    assert names_of(convert(p, machine="i686")) == [["modify_ldt"], ["vm86"]]


def test_excludes_arches_drops_rule_on_that_arch():
    p = profile(rule(["open"], excludes={"arches": ["arm64"]}))
    assert names_of(convert(p, machine="x86_64")) == [["open"]]
    assert names_of(convert(p, machine="aarch64")) == []


def test_machine_defaults_to_this_host(monkeypatch):
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "aarch64")
    out = to_oci(profile(), capabilities=[], kernel=(6, 1))
    assert out["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


# -- kernel versions ----------------------------------------------------------------


def test_includes_min_kernel():
    p = profile(rule(["clone3"], includes={"minKernel": "5.3"}))
    assert names_of(convert(p, kernel=(5, 3))) == [["clone3"]]
    assert names_of(convert(p, kernel=(6, 0))) == [["clone3"]]
    assert names_of(convert(p, kernel=(5, 2))) == []
    assert names_of(convert(p, kernel=(4, 19))) == []


def test_excludes_min_kernel():
    p = profile(rule(["clone3"], "SCMP_ACT_ERRNO", errnoRet=38, excludes={"minKernel": "5.3"}))
    assert names_of(convert(p, kernel=(5, 2))) == [["clone3"]]
    assert names_of(convert(p, kernel=(5, 3))) == []


def test_kernel_defaults_to_running_release(monkeypatch):
    p = profile(rule(["clone3"], includes={"minKernel": "5.3"}))
    monkeypatch.setattr(seccomp.platform, "release", lambda: "5.10.0-26-amd64")
    assert names_of(to_oci(p, machine="x86_64", capabilities=[])) == [["clone3"]]
    monkeypatch.setattr(seccomp.platform, "release", lambda: "4.19.0-9-amd64")
    assert names_of(to_oci(p, machine="x86_64", capabilities=[])) == []


# -- fields kept and dropped ------------------------------------------------------------


def test_errno_ret_args_and_default_errno_ret_preserved():
    p = profile(
        rule(
            ["socket"],
            "SCMP_ACT_ERRNO",
            errnoRet=22,
            errno="EINVAL",
            args=[
                {"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                {"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
            ],
            includes={},
            excludes={},
        ),
        rule(["personality"], args=[{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]),
        rule(["read"], args=None),
        rule(["write"], args=[]),
        defaultErrnoRet=38,
        defaultErrno="ENOSYS",
    )
    out = convert(p)
    assert out == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 22,
                "args": [
                    {"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                ],
            },
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}],
            },
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
        ],
    }
    json.dumps(out)


def test_no_default_errno_ret_when_profile_has_none():
    out = convert(profile(rule(["read"])))
    assert "defaultErrnoRet" not in out


def test_go_style_arg_keys_are_normalised():
    p = profile(rule(["personality"], args=[{"Index": 0, "Value": 8, "ValueTwo": 0, "Op": "SCMP_CMP_EQ"}]))
    (r,) = convert(p)["syscalls"]
    assert r["args"] == [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]


def test_legacy_single_name():
    p = profile({"name": "read", "action": "SCMP_ACT_ALLOW"})
    assert names_of(convert(p)) == [["read"]]
    with pytest.raises(ValueError):
        convert(profile({"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}))


def test_result_does_not_alias_the_profile():
    p = profile(rule(["personality"], args=[{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]))
    out = convert(p)
    out["syscalls"][0]["names"].append("x")
    out["syscalls"][0]["args"][0]["value"] = 99
    out["architectures"].append("x")
    assert p["syscalls"][0]["names"] == ["personality"]
    assert p["syscalls"][0]["args"][0]["value"] == 8
    assert p["archMap"][0]["subArchitectures"] == ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]


# -- loading and caching ---------------------------------------------------------------


def test_missing_profile_names_the_debian_package(tmp_path):
    with pytest.raises(SeccompProfileMissing) as exc:
        load_profile(str(tmp_path / "nope.json"))
    assert isinstance(exc.value, RuntimeError)
    assert "golang-github-containers-common" in str(exc.value)


def test_default_oci_seccomp_caches_per_caps_and_path(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile(rule(["chroot"], includes={"caps": ["CAP_SYS_CHROOT"]}))))
    loads = []
    real_load = seccomp.load_profile
    monkeypatch.setattr(seccomp, "load_profile", lambda p: loads.append(p) or real_load(p))
    seccomp._cached.cache_clear()
    try:
        a = default_oci_seccomp(["CAP_SYS_CHROOT", "CAP_KILL"], str(path))
        b = default_oci_seccomp(("CAP_KILL", "CAP_SYS_CHROOT"), str(path))
        c = default_oci_seccomp([], str(path))
        assert loads == [str(path), str(path)]
        assert a == b and a is not b
        # The profile's own rules come first; the namespace denials follow them.
        assert names_of(a)[0] == ["chroot"] and ["chroot"] not in names_of(c)
        a["syscalls"].clear()
        assert names_of(default_oci_seccomp(["CAP_KILL", "CAP_SYS_CHROOT"], str(path)))[0] == ["chroot"]
    finally:
        seccomp._cached.cache_clear()


# -- the real profile on this host --------------------------------------------------------


def _actions(oci: dict, name: str) -> list[tuple[str, int | None, bool]]:
    return [
        (r["action"], r.get("errnoRet"), "args" in r) for r in oci["syscalls"] if name in r["names"]
    ]


@pytest.mark.skipif(not os.path.exists(DEFAULT_PROFILE_PATH), reason="containers-common not installed")
def test_real_profile_with_docker_default_caps():
    oci = to_oci(load_profile(), machine="x86_64", capabilities=DOCKER_DEFAULT_CAPS, kernel=(6, 1))
    json.dumps(oci)
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO"
    assert oci["defaultErrnoRet"] == 38  # ENOSYS for anything not listed
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for r in oci["syscalls"]:
        assert set(r) <= {"names", "action", "errnoRet", "args"}

    allow = ("SCMP_ACT_ALLOW", None, False)
    eperm = ("SCMP_ACT_ERRNO", 1, False)
    # Podman's profile leaves mount/namespace syscalls to the capability checks:
    # seccomp allows them unconditionally; the kernel refuses them without CAP_SYS_ADMIN.
    for name in ("read", "clone", "clone3", "mount", "umount2", "unshare", "pivot_root", "ptrace", "keyctl"):
        assert _actions(oci, name) == [allow], name
    # Listed in the unconditional allow list AND in the CAP_SYS_ADMIN-excluded EPERM rule.
    assert _actions(oci, "setns") == [allow, eperm]
    # CAP_SYS_ADMIN-gated: only the EPERM rule survives without the cap.
    for name in ("sethostname", "bpf", "perf_event_open", "quotactl"):
        assert _actions(oci, name) == [eperm], name
    # Other cap-gated families, none of whose caps Docker grants by default.
    for name in ("open_by_handle_at", "init_module", "acct", "kcmp", "iopl", "settimeofday", "vhangup"):
        assert _actions(oci, name) == [eperm], name
    # CAP_SYS_CHROOT is in the default set.
    assert _actions(oci, "chroot") == [allow]
    # CAP_AUDIT_WRITE is granted, so only the unconditional socket allow remains.
    assert _actions(oci, "socket") == [allow]
    # Always refused.
    for name in ("userfaultfd", "kexec_load", "swapon", "vmsplice"):
        assert _actions(oci, name) == [eperm], name
    # x86-only syscalls kept on x86_64, ARM/s390 ones dropped.
    assert _actions(oci, "arch_prctl") == [allow]
    assert _actions(oci, "modify_ldt") == [allow]
    assert _actions(oci, "set_tls") == [] and _actions(oci, "s390_runtime_instr") == []
    # personality only for the listed personas.
    assert [a for a in _actions(oci, "personality")] == [("SCMP_ACT_ALLOW", None, True)] * 5
    # Not in the profile at all: falls to defaultAction (ENOSYS).
    assert _actions(oci, "io_uring_setup") == []


@pytest.mark.skipif(not os.path.exists(DEFAULT_PROFILE_PATH), reason="containers-common not installed")
def test_real_profile_socket_audit_rules_without_audit_write():
    caps = [c for c in DOCKER_DEFAULT_CAPS if c != "CAP_AUDIT_WRITE"]
    oci = to_oci(load_profile(), machine="x86_64", capabilities=caps, kernel=(6, 1))
    socket_rules = [r for r in oci["syscalls"] if "socket" in r["names"]]
    # AF_NETLINK(16) + NETLINK_AUDIT(9) -> EINVAL; every other socket is allowed by arg rules.
    assert socket_rules[0] == {
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 22,
        "args": [
            {"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
            {"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
        ],
    }
    assert all(r["action"] == "SCMP_ACT_ALLOW" and r["args"] for r in socket_rules[1:])
    assert len(socket_rules) == 4


def test_namespace_creation_is_denied_without_sys_admin():
    from cellbox.runtime.seccomp import deny_namespace_escapes

    oci = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "unshare", "clone", "clone3", "mount"], "action": "SCMP_ACT_ALLOW"}],
    }
    rules = deny_namespace_escapes(oci)["syscalls"]
    allowed_unconditionally = {n for r in rules if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}
    assert allowed_unconditionally == {"read"}
    denied = {n for r in rules if r["action"] == "SCMP_ACT_ERRNO" for n in r["names"]}
    assert {"unshare", "mount", "setns", "clone3"} <= denied
    (clone,) = [r for r in rules if r["names"] == ["clone"]]
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
