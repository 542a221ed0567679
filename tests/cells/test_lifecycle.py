"""The cell life cycle over the Cell API, on a real server with real runc cells."""

from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import quote

import httpx

from tests.conftest import runc_state, sh


def test_health_is_open_and_cheap(server):
    for path in ("/v1/health", "/health"):
        body = httpx.get(server.url + path).json()
        assert body["status"] == "ok" and body["version"]


def test_requests_without_a_valid_key_are_refused(server):
    assert httpx.get(server.url + "/v1/cells").status_code == 401
    response = httpx.get(server.url + "/v1/cells", headers={"Authorization": "Bearer cell_sk_live_wrong"})
    assert response.status_code == 401
    assert set(response.json()) == {"error", "error_type"}


def test_create_answers_both_info_shapes_and_starts_a_container(server, cells):
    info = cells(metadata={"owner": "tests"}, timeout_ms=120_000)
    assert info["cell_id"] == info["sandbox_id"]
    assert info["state"] == info["status"] == "running"
    assert info["template"] == info["template_id"] == "python3"
    assert isinstance(info["created_at"], int) and info["created_at"] > 1_700_000_000_000
    assert info["timeout_ms"] == 120_000
    end_at = datetime.fromisoformat(info["end_at"])
    started_at = datetime.fromisoformat(info["started_at"])
    assert 119 <= (end_at - started_at).total_seconds() <= 121
    assert (info["cpu_count"], info["memory_mb"]) == (1.0, 512)
    assert info["metadata"] == {"owner": "tests"}
    assert runc_state(server, info["cell_id"]) == "running"


def test_get_info_reads_the_cell(api, cell):
    body = api.get(f"/v1/cells/{cell['cell_id']}").json()
    assert body["cell_id"] == cell["cell_id"] and body["state"] == "running"


def test_kill_ends_the_container_and_keeps_the_record_with_its_reason(server, api, cells):
    cell_id = cells()["cell_id"]
    assert api.delete(f"/v1/cells/{cell_id}").status_code == 200
    assert runc_state(server, cell_id) is None
    info = api.get(f"/v1/cells/{cell_id}").json()
    assert info["state"] == "killed"
    assert info["end_reason"] == "killed by request"
    assert api.get(f"/v1/cells/{cell_id}/is_running").json() == {"running": False}
    response = api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "true"})
    assert response.status_code == 404 and "ended" in response.json()["error"]


def test_unknown_cell_is_404_in_the_error_shape(api):
    response = api.get("/v1/cells/cell-doesnotexist")
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


def test_another_tenant_sees_404_for_my_cell(server, cell):
    other = server.new_key()
    with server.client(other) as client:
        for method, path in [
            ("GET", ""), ("DELETE", ""), ("GET", "/is_running"), ("POST", "/refresh"), ("GET", "/envs"),
        ]:
            assert client.request(method, f"/v1/cells/{cell['cell_id']}{path}").status_code == 404
        assert client.post(f"/v1/cells/{cell['cell_id']}/cmd", json={"command": "true"}).status_code == 404
        assert all(c["cell_id"] != cell["cell_id"] for c in client.get("/v1/cells").json())


def test_list_paginates_with_the_next_token_header(api, cells):
    mine = {cells(metadata={"suite": "paging"})["cell_id"] for _ in range(3)}
    seen, token = [], None
    while True:
        params = {"limit": 2, "metadata": "suite=paging"}
        if token:
            params["next_token"] = token
        response = api.get("/v1/cells", params=params)
        page = response.json()
        assert len(page) <= 2
        seen += [c["cell_id"] for c in page]
        token = response.headers.get("X-Next-Token")
        if not token:
            break
    assert set(seen) == mine and len(seen) == 3


def test_list_filters_by_metadata_and_state(api, cells):
    a = cells(metadata={"team": "a b", "tier": "x"})["cell_id"]
    b = cells(metadata={"team": "other"})["cell_id"]
    # Encoded as the published client does: keys and values quoted, then the whole.
    query = quote(f"{quote('team')}={quote('a b')},tier=x")
    ids = [c["cell_id"] for c in api.get(f"/v1/cells?metadata={query}").json()]
    assert ids == [a]
    api.delete(f"/v1/cells/{b}")
    assert b not in [c["cell_id"] for c in api.get("/v1/cells").json()]
    killed = [c["cell_id"] for c in api.get("/v1/cells", params={"state": "killed"}).json()]
    assert b in killed and a not in killed


def test_list_refuses_an_unknown_state_and_a_forged_token(api):
    assert api.get("/v1/cells", params={"state": "sleeping"}).status_code == 400
    assert api.get("/v1/cells", params={"next_token": "!!nope"}).status_code == 400


def test_metadata_patch_merges(api, cells):
    cell_id = cells(metadata={"a": "1"})["cell_id"]
    body = api.patch(f"/v1/cells/{cell_id}/metadata", json={"b": "2"}).json()
    assert body == {"metadata": {"a": "1", "b": "2"}}
    assert api.get(f"/v1/cells/{cell_id}").json()["metadata"] == {"a": "1", "b": "2"}


def test_envs_are_set_in_the_cell_and_patches_apply_to_later_commands(api, cells):
    cell_id = cells(envs={"GREETING": "hello"})["cell_id"]
    assert sh(api, cell_id, "echo $GREETING")["stdout"] == "hello\n"
    assert api.patch(f"/v1/cells/{cell_id}/envs", json={"NAME": "cellbox"}).json() == {
        "GREETING": "hello", "NAME": "cellbox",
    }
    assert api.get(f"/v1/cells/{cell_id}/envs").json()["NAME"] == "cellbox"
    assert sh(api, cell_id, "echo $GREETING $NAME")["stdout"] == "hello cellbox\n"


def test_command_answers_output_exit_code_and_latency(api, cell):
    body = sh(api, cell["cell_id"], "echo out; echo err >&2; exit 7")
    assert (body["stdout"], body["stderr"], body["exit_code"]) == ("out\n", "err\n", 7)
    assert body["latency_ms"] > 0


def test_command_runs_in_data_with_home_set_and_takes_cwd_envs_timeout(api, cell):
    cell_id = cell["cell_id"]
    assert sh(api, cell_id, "pwd; echo $HOME")["stdout"] == "/data\n/home/user\n"
    sh(api, cell_id, "mkdir -p sub")
    assert sh(api, cell_id, "pwd", cwd="sub")["stdout"] == "/data/sub\n"
    assert sh(api, cell_id, "echo $X", envs={"X": "y"})["stdout"] == "y\n"
    body = sh(api, cell_id, "sleep 20", timeout=0.5)
    assert body["timed_out"] is True and body["exit_code"] == 124


def test_command_in_a_missing_directory_is_a_clear_400(api, cell):
    response = api.post(f"/v1/cells/{cell['cell_id']}/cmd", json={"command": "pwd", "cwd": "/nope"})
    assert response.status_code == 400 and "/nope" in response.json()["error"]


def test_timeout_kills_an_inactive_cell_with_a_recorded_reason(server, api, cells):
    cell_id = cells()["cell_id"]
    assert api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 1}).status_code == 200
    deadline = time.monotonic() + 10
    # Watch from the host: reading the cell through the API would be activity.
    while runc_state(server, cell_id) is not None:
        assert time.monotonic() < deadline, "the cell outlived its timeout"
        time.sleep(0.2)
    time.sleep(0.2)
    info = api.get(f"/v1/cells/{cell_id}").json()
    assert info["state"] == "killed" and "inactive" in info["end_reason"]


def test_reading_a_cell_counts_as_activity(api, cells):
    cell_id = cells()["cell_id"]
    api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 2})
    for _ in range(8):
        time.sleep(0.5)
        assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "running"


def test_activity_and_refresh_keep_a_cell_alive(api, cells):
    cell_id = cells()["cell_id"]
    api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 2})
    for _ in range(4):
        time.sleep(0.8)
        assert api.post(f"/v1/cells/{cell_id}/refresh").status_code == 200
    sh(api, cell_id, "true")
    assert api.get(f"/v1/cells/{cell_id}/is_running").json() == {"running": True}


def test_a_long_command_is_activity_the_timer_does_not_cut(api, cells):
    cell_id = cells()["cell_id"]
    api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 1})
    body = sh(api, cell_id, "sleep 3; echo finished")
    assert body["stdout"] == "finished\n"
    assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "running"


def test_bad_create_bodies_are_400_naming_the_field(api):
    cases = {
        "template": {"template": "cobol"},
        "timeout_ms": {"timeout_ms": 10},
        "metadata": {"metadata": {"a": 1}},
        "envs": {"envs": ["x"]},
        "memory_mb": {"memory_mb": 10_000_000},
        "allow_internet_access": {"allow_internet_access": True},
        "volume": {"volume_id": "v1"},
        "bogus_option": {"bogus_option": 1},
    }
    for field, body in cases.items():
        response = api.post("/v1/cells", json=body)
        assert response.status_code == 400, (field, response.text)
        assert field.split("_")[0] in response.json()["error"], (field, response.json())


def test_malformed_json_is_a_400_in_the_error_shape(api):
    response = api.post("/v1/cells", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert set(response.json()) == {"error", "error_type"}


def test_timeout_outside_its_range_is_refused(api, cell):
    for value in (0, 86_401, "soon"):
        response = api.put(f"/v1/cells/{cell['cell_id']}/timeout", json={"timeout": value})
        assert response.status_code == 400 and "timeout" in response.json()["error"]


def test_oversized_body_is_413_without_reading_it(api, server):
    big = b"x" * (65 * 1024 * 1024)
    response = api.post("/v1/cells", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunks():
        for _ in range(65):
            yield b"x" * (1024 * 1024)

    response = api.post("/v1/cells", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_openapi_document_and_docs_are_served(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/cells" in spec["paths"] and "/v1/cells/{cell_id}/cmd" in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200


def test_health_reports_the_runtime_and_store(server):
    body = httpx.get(server.url + "/v1/health").json()
    assert body["runtime"]["ok"] is True and body["store"]["ok"] is True


def test_an_api_key_has_a_limit_of_live_cells(make_server):
    server = make_server(extra_env={"CELLBOX_MAX_CELLS_PER_KEY": "2", "CELLBOX_POOL_SIZE": "0"})
    with server.client() as api:
        ids = [api.post("/v1/cells", json={}).json()["cell_id"] for _ in range(2)]
        refused = api.post("/v1/cells", json={})
        assert refused.status_code == 429 and "limit" in refused.json()["error"]
        api.delete(f"/v1/cells/{ids[0]}")
        assert api.post("/v1/cells", json={}).status_code == 201
