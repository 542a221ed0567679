"""Usage metrics, per-cell metrics, dashboard stats and Prometheus, as work is done."""

from __future__ import annotations

import httpx

from tests.conftest import sh


def test_usage_moves_as_work_is_done(server):
    key = server.new_key("metrics")
    with server.client(key) as api:
        before = api.get("/v1/metrics").json()
        assert before["cells_created"] == 0 and before["executions"] == 0
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
        api.post(f"/v1/cells/{cell_id}/exec", json={"code": "sum(range(10**6))"})
        sh(api, cell_id, "true")
        during = api.get("/v1/metrics").json()
        assert during["cells_created"] == 1 and during["cells_running"] == 1
        assert during["executions"] == 1 and during["commands"] == 1
        assert during["cpu_seconds"] > 0 and during["memory_peak_bytes"] > 0 and during["cell_seconds"] > 0
        api.post(f"/v1/cells/{cell_id}/snapshots")
        assert api.get("/v1/metrics").json()["snapshot_bytes"] > 0
        api.delete(f"/v1/cells/{cell_id}")
        after = api.get("/v1/metrics").json()
        assert after["cells_running"] == 0
        assert after["cpu_seconds"] >= during["cpu_seconds"], "a killed cell's CPU time stays counted"


def test_cell_metrics_read_its_cgroup_and_disk(api, cell):
    cell_id = cell["cell_id"]
    sh(api, cell_id, "head -c 5000000 /dev/urandom > blob")
    body = api.get(f"/v1/cells/{cell_id}/metrics").json()
    assert body["cpu_seconds"] > 0 and body["memory_bytes"] > 0 and body["pids"] >= 1
    assert body["disk_bytes"] >= 5_000_000


def test_stats_show_counts_latency_and_host(api, cell):
    for _ in range(3):
        api.post(f"/v1/cells/{cell['cell_id']}/exec", json={"code": "1+1"})
    body = api.get("/v1/stats").json()
    assert body["running"] >= 1 and body["created_last_day"] >= 1
    assert body["exec_latency_ms"]["count"] >= 3 and body["exec_latency_ms"]["p50"] > 0
    assert body["host"]["memory_available_bytes"] > 0 and len(body["host"]["load"]) == 3


def test_prometheus_metrics_label_routes_not_ids(server, api, cell):
    api.get(f"/v1/cells/{cell['cell_id']}")
    text = httpx.get(server.url + "/metrics").text
    assert 'route="/v1/cells/{cell_id}"' in text
    assert cell["cell_id"] not in text
    assert 'cellbox_cells{state="running"}' in text


def test_metrics_need_a_key(server):
    assert httpx.get(server.url + "/v1/metrics").status_code == 401
