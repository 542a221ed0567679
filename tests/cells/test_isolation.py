"""Isolation facts, checked from inside real cells with /cmd."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import sh


def test_cell_user_is_not_host_root(api, cell):
    body = sh(api, cell["cell_id"], "id -u; cat /proc/self/uid_map")
    uid, mapping = body["stdout"].split("\n", 1)
    assert uid == "1000"
    container_id, host_id, _ = mapping.split()
    assert container_id == "0" and int(host_id) > 0, "root in the cell must map to an unprivileged host uid"


def test_no_capabilities_no_new_privileges_and_a_seccomp_filter(api, cell):
    status = sh(api, cell["cell_id"], "cat /proc/self/status")["stdout"]
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_namespace_creation_and_mounting_are_denied(api, cell):
    body = sh(api, cell["cell_id"], "unshare -U true; echo $?; mount -t tmpfs x /tmp 2>&1; echo $?")
    lines = body["stdout"].split()
    assert lines[0] != "0" and lines[-1] != "0"


def test_host_files_are_not_visible(api, cell):
    host_marker = Path("/root/.cellbox-isolation-marker")
    host_marker.write_text("host secret")
    try:
        body = sh(api, cell["cell_id"], f"cat {host_marker}; cat /etc/shadow; ls /root; cat /etc/hostname")
        assert "host secret" not in body["stdout"]
        assert body["stdout"].strip() == cell["cell_id"]
        assert os.uname().nodename not in body["stdout"]
    finally:
        host_marker.unlink()


def test_etc_passwd_is_the_cells_own(api, cell):
    passwd = sh(api, cell["cell_id"], "cat /etc/passwd")["stdout"]
    assert "user:x:1000:1000" in passwd
    assert passwd != Path("/etc/passwd").read_text()


def test_system_directories_are_read_only(api, cell):
    body = sh(api, cell["cell_id"], "touch /usr/bin/evil; echo $?; touch /etc/evil; echo $?; touch /data/ok; echo $?")
    assert body["stdout"].split() == ["1", "1", "0"]


def test_only_loopback_and_no_route_to_the_host(server, api, cell):
    body = sh(api, cell["cell_id"], "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert [line.strip() for line in body["stdout"].splitlines()] == ["lo"]
    probe = (
        "python3 -c \"import socket,sys\n"
        f"s=socket.socket(); s.settimeout(2)\n"
        f"try:\n s.connect(('127.0.0.1', {server.port})); print('reached')\n"
        "except OSError as e: print('refused', e)\""
    )
    assert "refused" in sh(api, cell["cell_id"], probe)["stdout"]
    out = sh(api, cell["cell_id"], "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), 2)\" 2>&1")
    assert out["exit_code"] != 0 and "unreachable" in out["stdout"].lower()


def test_proc_paths_are_masked(api, cell):
    body = sh(api, cell["cell_id"], "cat /proc/kcore | head -c 10 | wc -c; echo x > /proc/sysrq-trigger; echo $?")
    assert body["stdout"].split()[0] == "0"
    assert body["stdout"].split()[-1] != "0"


def test_memory_limit_kills_an_allocation_above_it(api, cells):
    cell_id = cells(memory_mb=64)["cell_id"]
    body = sh(api, cell_id, "python3 -c \"b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('survived')\"")
    assert "survived" not in body["stdout"]
    assert body["exit_code"] != 0
    assert sh(api, cell_id, "echo still here")["stdout"] == "still here\n"


def test_fork_bomb_stays_inside_the_pid_limit_while_the_server_answers(server, api, cells):
    cell_id = cells(pids=64)["cell_id"]
    health_failures = []
    stop = threading.Event()

    def watch_health():
        while not stop.is_set():
            try:
                httpx.get(server.url + "/v1/health", timeout=5).raise_for_status()
            except httpx.HTTPError as exc:
                health_failures.append(exc)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    limit_files = [
        Path(f"/sys/fs/cgroup/pids/cellbox/{cell_id}"),  # cgroup v1 (hybrid hosts)
        Path(f"/sys/fs/cgroup/cellbox/{cell_id}"),  # cgroup v2
    ]
    (cgroup,) = [f for f in limit_files if f.exists()]
    try:
        sh(api, cell_id, "bomb() { bomb | bomb & }; bomb; sleep 3", timeout=10)
        peak = max(int((cgroup / "pids.current").read_text()) for _ in range(20) if not time.sleep(0.05))
    finally:
        stop.set()
        watcher.join()
    assert not health_failures
    assert (cgroup / "pids.max").read_text().strip() == "64"
    assert 0 < peak <= 64
    # Killing the cell ends the bomb with it.
    assert api.delete(f"/v1/cells/{cell_id}").status_code == 200
    assert not cgroup.exists()


def test_writable_disk_is_bounded(api, cells):
    cell_id = cells(disk_mb=64)["cell_id"]
    body = sh(api, cell_id, "dd if=/dev/zero of=/data/big bs=1M count=200 2>&1; echo rc=$?", timeout=60)
    assert "No space left" in body["stdout"]
    assert sh(api, cell_id, "rm /data/big; echo ok > /data/small; cat /data/small")["stdout"] == "ok\n"


def test_each_cell_has_its_own_range_of_host_ids(api, cells):
    first, second = cells()["cell_id"], cells(memory_mb=256)["cell_id"]
    ranges = {sh(api, c, "cat /proc/self/uid_map")["stdout"].split()[1] for c in (first, second)}
    assert len(ranges) == 2, "two cells must not share host uids"


def test_one_cell_cannot_use_up_inotify_for_the_others(api, cells):
    greedy, other = cells()["cell_id"], cells()["cell_id"]
    hog = (
        "python3 -c \"import ctypes, time; l = ctypes.CDLL(None)\n"
        "n = sum(1 for _ in range(100000) if l.inotify_init1(0) >= 0); print(n, flush=True); time.sleep(30)\" &"
        " sleep 2"
    )
    api.post(f"/v1/cells/{greedy}/cmd", json={"command": hog, "timeout": 10})
    count = "python3 -c \"import ctypes; l = ctypes.CDLL(None); print(sum(1 for _ in range(50) if l.inotify_init1(0) >= 0))\""
    assert sh(api, other, count)["stdout"] == "50\n"


def test_block_devices_of_other_cells_are_not_visible(api, cell):
    body = sh(api, cell["cell_id"], "cat /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l")
    assert body["stdout"].strip() == "0"


def test_a_tiny_cpu_share_is_still_a_limit(api, cells):
    cell_id = cells(cpu_count=0.01)["cell_id"]
    quota_files = [Path(f"/sys/fs/cgroup/cpu/cellbox/{cell_id}/cpu.cfs_quota_us"), Path(f"/sys/fs/cgroup/cellbox/{cell_id}/cpu.max")]
    (quota,) = [f.read_text().split()[0] for f in quota_files if f.exists()]
    assert quota == "1000"
    assert api.post("/v1/cells", json={"cpu_count": 0.000001}).status_code == 400


def test_a_cells_variables_never_reach_its_agent(server, api, cells):
    cell_id = cells(envs={"LD_PRELOAD": "/data/evil.so", "VISIBLE": "yes"}, memory_mb=300)["cell_id"]
    agent_pid = (server.data_dir / "cells" / cell_id / "pid").read_text().strip()
    agent_env = Path(f"/proc/{agent_pid}/environ").read_bytes().split(b"\0")
    assert not any(v.startswith((b"LD_PRELOAD=", b"VISIBLE=")) for v in agent_env)
    assert sh(api, cell_id, "echo $VISIBLE")["stdout"] == "yes\n"


def test_variables_with_nul_or_bad_names_are_refused(api, cell):
    assert api.post("/v1/cells", json={"envs": {"A=B": "x"}}).status_code == 400
    assert api.post("/v1/cells", json={"envs": {"A": "x\u0000y"}}).status_code == 400
    assert api.patch(f"/v1/cells/{cell['cell_id']}/envs", json={"": "x"}).status_code == 400
    response = api.post(f"/v1/cells/{cell['cell_id']}/cmd", json={"command": "true", "envs": {"A": "\u0000"}})
    assert response.status_code == 400 and "NUL" in response.json()["error"]
