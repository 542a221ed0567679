"""Templates on a real server: built layers, cells of templates, changes, deletion.

One server and one built template serve the module; the package comes from a
wheel written by the test, found through CELLBOX_TEMPLATE_PIP_ARGS, so no build
touches the network.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import Server, serving, sh
from tests.templates.wheels import write_wheel

DEMO = {
    "name": "demo",
    "runtime": "python3",
    "packages": ["cellboxdemo==1.0"],
    "files": [
        {"path": "app/config.txt", "content": "from the template"},
        {"path": "/home/user/bin/hello", "content": "#!/bin/sh\necho hello\n", "mode": "0755"},
        {"path": "/data/app/blob.bin", "content": "AAEC/w==", "encoding": "base64"},
    ],
    "envs": {"GREETING": "hi", "OVERRIDE_ME": "template"},
    "start_command": "sh -c 'echo started > /data/app/started.txt; exec sleep 3600'",
    "working_directory": "/data/app",
    "user": "sandbox",
    "memory_mb": 384,
    "timeout_ms": 900_000,
    "metadata": {"team": "tests"},
}


def _wheels(top: Path) -> dict[str, str]:
    wheels = top / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "cellboxdemo", "1.0", 'VALUE = "one"\n')
    write_wheel(wheels, "cellboxdemo", "2.0", 'VALUE = "two"\n')
    return {"CELLBOX_TEMPLATE_PIP_ARGS": f"--no-index --find-links {wheels}"}


@pytest.fixture(scope="module")
def template_server() -> Iterator[Server]:
    # Paused cells are let go quickly, to test restores of template cells.
    with serving("cellbox-templates-", {"CELLBOX_EVICT_AFTER_S": "1"}, prepare=_wheels) as server:
        yield server


@pytest.fixture(scope="module")
def tapi(template_server: Server) -> Iterator[httpx.Client]:
    with template_server.client() as client:
        yield client


def wait_built(api: httpx.Client, name: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = api.get(f"/v1/templates/{name}").json()
        if info["status"] != "building":
            return info
        time.sleep(0.2)
    raise AssertionError(f"template {name} still building after {timeout} s")


def register(api: httpx.Client, spec: dict) -> dict:
    response = api.post("/v1/templates", json=spec)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def demo(tapi: httpx.Client) -> dict:
    register(tapi, DEMO)
    info = wait_built(tapi, "demo")
    assert info["status"] == "ready", tapi.get("/v1/templates/demo/logs").text
    return info


@pytest.fixture(scope="module")
def demo_cell(tapi: httpx.Client, demo: dict) -> Iterator[dict]:
    response = tapi.post("/v1/cells", json={"template": "demo", "envs": {"OVERRIDE_ME": "request"}})
    assert response.status_code == 201, response.text
    yield response.json()
    tapi.delete(f"/v1/cells/{response.json()['cell_id']}")


def test_registration_answers_200_with_the_spec_and_building(tapi: httpx.Client, demo: dict) -> None:
    assert demo["template_id"] == "demo" and demo["builtin"] is False
    assert demo["packages"] == ["cellboxdemo==1.0"]
    assert [f["path"] for f in demo["files"]] == ["/data/app/config.txt", "/home/user/bin/hello", "/data/app/blob.bin"]
    log = tapi.get("/v1/templates/demo/logs").text
    assert "--only-binary=:all:" in log and "Successfully installed cellboxdemo-1.0" in log


def test_cell_of_template_imports_its_package(tapi: httpx.Client, demo_cell: dict) -> None:
    cell_id = demo_cell["cell_id"]
    assert sh(tapi, cell_id, "python3 -c 'import cellboxdemo; print(cellboxdemo.VALUE)'")["stdout"] == "one\n"
    result = tapi.post(f"/v1/cells/{cell_id}/exec", json={"code": "import cellboxdemo\nprint(cellboxdemo.VALUE)"})
    assert result.json()["stdout"] == "one\n"


def test_cell_of_template_has_files_envs_workdir_and_user(tapi: httpx.Client, demo_cell: dict) -> None:
    cell_id = demo_cell["cell_id"]
    out = sh(tapi, cell_id, "pwd; whoami; id -u; echo $GREETING $OVERRIDE_ME; cat config.txt; echo; "
                            "/home/user/bin/hello; od -An -tx1 blob.bin")["stdout"].split("\n")
    assert out[:7] == ["/data/app", "sandbox", "1000", "hi request", "from the template", "hello", " 00 01 02 ff"]
    assert tapi.get(f"/v1/cells/{cell_id}/envs").json() == {"GREETING": "hi", "OVERRIDE_ME": "request"}


def test_cell_of_template_runs_its_start_command(tapi: httpx.Client, demo_cell: dict) -> None:
    cell_id = demo_cell["cell_id"]
    processes = tapi.get(f"/v1/cells/{cell_id}/processes").json()
    assert [p["status"] for p in processes if p["command"] == DEMO["start_command"]] == ["running"]
    deadline = time.monotonic() + 5
    while sh(tapi, cell_id, "cat /data/app/started.txt")["stdout"] != "started\n":
        assert time.monotonic() < deadline, "the start command did not run"
        time.sleep(0.1)


def test_cell_of_template_takes_its_limits_and_timeout(tapi: httpx.Client, demo_cell: dict) -> None:
    assert demo_cell["template"] == demo_cell["template_id"] == "demo"
    assert demo_cell["memory_mb"] == 384 and demo_cell["timeout_ms"] == 900_000


def test_layer_is_read_only_to_the_cell(tapi: httpx.Client, demo_cell: dict) -> None:
    result = sh(tapi, demo_cell["cell_id"], "touch /opt/template/python/x")
    assert result["exit_code"] != 0 and "Read-only" in result["stderr"]


def test_failed_build_shows_the_pip_error_and_refuses_cells(tapi: httpx.Client) -> None:
    register(tapi, {"name": "broken", "packages": ["cellbox-no-such-package==9.9"]})
    info = wait_built(tapi, "broken")
    assert info["status"] == "failed" and "see the build log" in info["error"]
    log = tapi.get("/v1/templates/broken/logs").text
    assert "No matching distribution found for cellbox-no-such-package==9.9" in log
    assert "wheels only" in log
    response = tapi.post("/v1/cells", json={"template": "broken"})
    assert response.status_code == 409 and "is failed" in response.json()["error"]
    events = tapi.get("/v1/events").json()
    events = events.get("events", events) if isinstance(events, dict) else events
    assert any(e["type"] == "template.build_failed" and e["data"]["template"] == "broken" for e in events)


def test_building_template_refuses_cells_with_409(tapi: httpx.Client) -> None:
    register(tapi, {"name": "slow", "packages": ["cellboxdemo==2.0"]})
    response = tapi.post("/v1/cells", json={"template": "slow"})
    assert response.status_code == 409 and "is building" in response.json()["error"]
    assert wait_built(tapi, "slow")["status"] == "ready"


def test_patch_of_packages_builds_a_new_version_and_running_cells_keep_theirs(tapi: httpx.Client) -> None:
    register(tapi, {"name": "moving", "packages": ["cellboxdemo==1.0"]})
    assert wait_built(tapi, "moving")["status"] == "ready"
    old = tapi.post("/v1/cells", json={"template": "moving"}).json()["cell_id"]
    try:
        patched = tapi.patch("/v1/templates/moving", json={"packages": ["cellboxdemo==2.0"]})
        assert patched.status_code == 200 and patched.json()["build_version"] == 2
        assert wait_built(tapi, "moving")["status"] == "ready"
        new = tapi.post("/v1/cells", json={"template": "moving"}).json()["cell_id"]
        read = "python3 -c 'import cellboxdemo; print(cellboxdemo.VALUE)'"
        assert sh(tapi, new, read)["stdout"] == "two\n"
        assert sh(tapi, old, read)["stdout"] == "one\n"
        tapi.delete(f"/v1/cells/{new}")
        # A change of envs alone builds nothing.
        assert tapi.patch("/v1/templates/moving", json={"envs": {"A": "b"}}).json()["build_version"] == 2
    finally:
        tapi.delete(f"/v1/cells/{old}")


def test_delete_is_refused_while_a_cell_uses_the_template_unless_forced(tapi: httpx.Client) -> None:
    register(tapi, {"name": "doomed", "packages": ["cellboxdemo==1.0"]})
    assert wait_built(tapi, "doomed")["status"] == "ready"
    cell_id = tapi.post("/v1/cells", json={"template": "doomed"}).json()["cell_id"]
    try:
        refused = tapi.delete("/v1/templates/doomed")
        assert refused.status_code == 409 and cell_id in refused.json()["error"]
        assert tapi.delete("/v1/templates/doomed", params={"force": "true"}).status_code == 200
        assert tapi.get("/v1/templates/doomed").status_code == 404
        # The cell keeps its build.
        assert sh(tapi, cell_id, "python3 -c 'import cellboxdemo'")["exit_code"] == 0
    finally:
        tapi.delete(f"/v1/cells/{cell_id}")


def test_delete_of_an_unused_template_succeeds(tapi: httpx.Client) -> None:
    register(tapi, {"name": "short-lived"})
    assert wait_built(tapi, "short-lived")["status"] == "ready"
    assert tapi.delete("/v1/templates/short-lived").status_code == 200
    assert tapi.get("/v1/templates/short-lived").status_code == 404


@pytest.mark.parametrize("spec, words", [
    ({"name": "x", "packages": ["https://example.com/pkg.whl"]}, "'https://example.com/pkg.whl'"),
    ({"name": "x", "packages": ["-e ."]}, "'-e .'"),
    ({"name": "x", "packages": ["--index-url=http://evil"]}, "options"),
    ({"name": "x", "packages": ["./local/pkg"]}, "'./local/pkg'"),
    ({"name": "x", "packages": ["pkg @ file:///tmp/pkg"]}, "direct references"),
    ({"name": "x", "runtime": "javascript", "packages": ["git+https://github.com/a/b"]}, "git"),
    ({"name": "x", "files": [{"src": "app.py", "dest": "/data"}]}, "send each file"),
    ({"name": "x", "files": ["app.py"]}, "send each file"),
    ({"name": "x", "files": [{"path": "/etc/passwd", "content": "x"}]}, "outside what a cell can write"),
    ({"name": "x", "working_directory": "/app"}, "under /data, /home/user or /tmp"),
    ({"name": "x", "user": "root"}, "cannot be honoured"),
    ({"name": "x", "runtime": "ruby"}, "'ruby'"),
    ({"name": "bad name!"}, "name"),
    ({"name": "python3"}, "built-in"),
    ({"name": "x", "memory_mb": 10_000_000}, "maximum"),
    ({"name": "x", "_lockfile_install": True}, "lockfile"),
])
def test_bad_specs_are_refused_with_a_sentence(tapi: httpx.Client, spec: dict, words: str) -> None:
    response = tapi.post("/v1/templates", json=spec)
    assert response.status_code in (400, 409), response.text
    assert words in response.json()["error"]
    assert tapi.get("/v1/templates/x").status_code == 404


def test_list_has_builtins_and_mine_and_builtins_cannot_be_deleted(tapi: httpx.Client, demo: dict) -> None:
    listed = {t["name"]: t for t in tapi.get("/v1/templates").json()}
    assert listed["python3"]["builtin"] and listed["python3"]["status"] == "ready"
    assert listed["javascript"]["builtin"] and listed["demo"]["status"] == "ready"
    assert tapi.delete("/v1/templates/python3").status_code == 409
    assert tapi.get("/v1/templates/nope").status_code == 404


def test_another_key_sees_none_of_my_templates(template_server: Server, demo: dict) -> None:
    with template_server.client(template_server.new_key()) as other:
        assert [t["name"] for t in other.get("/v1/templates").json()] == ["python3", "javascript"]
        assert other.get("/v1/templates/demo").status_code == 404
        assert other.post("/v1/cells", json={"template": "demo"}).status_code == 400


def test_published_client_lists_gets_and_builds_templates(template_server: Server, tmp_path: Path, demo: dict) -> None:
    from synapse.cell import Cell
    from synapse.template import Template

    url, key = template_server.url, template_server.key
    assert "demo" in [t["name"] for t in Cell.list_templates(api_url=url, api_key=key)]
    assert Cell.get_template("demo", api_url=url, api_key=key)["status"] == "ready"
    assert Cell.get_template("nope", api_url=url, api_key=key) is None
    assert "demo" in [t["name"] for t in Template.list(api_url=url, api_key=key)]

    dockerfile = tmp_path / "agent" / "Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text(
        "FROM python:3.11-slim\nRUN pip install cellboxdemo==2.0\nENV MODE=docker\nWORKDIR /data/work\n"
        'CMD ["sleep", "3600"]\n'
    )
    built = Cell.build_template(str(dockerfile), name="from-docker", api_url=url, api_key=key)
    assert built["status"] == "building" and built["user"] == "sandbox"
    assert wait_built(template_server.client(), "from-docker")["status"] == "ready"

    (tmp_path / "cell.yaml").write_text("name: from-yaml\nruntime: python3\nenvs:\n  MODE: yaml\n")
    assert Template.build(str(tmp_path), api_url=url, api_key=key)["name"] == "from-yaml"
    Template.delete("from-yaml", api_url=url, api_key=key)
    assert Cell.get_template("from-yaml", api_url=url, api_key=key) is None


def test_a_build_cut_short_by_a_server_crash_runs_again_at_start(make_server, tmp_path: Path) -> None:
    import signal

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tmp_path.chmod(0o755)
    write_wheel(wheels, "cellboxdemo", "1.0", 'VALUE = "one"\n')
    env = {"CELLBOX_TEMPLATE_PIP_ARGS": f"--no-index --find-links {wheels}"}
    first = make_server(env)
    with first.client() as api:
        assert register(api, {"name": "crashy", "packages": ["cellboxdemo==1.0"]})["status"] == "building"
    first.stop(signal.SIGKILL)
    second = make_server(env, data_dir=first.data_dir)
    second.key = first.key
    with second.client() as api:
        assert wait_built(api, "crashy")["status"] == "ready"
        assert "starting it again" in api.get("/v1/templates/crashy/logs").text


def test_a_template_cell_restored_from_its_snapshot_keeps_its_packages(template_server, tapi: httpx.Client, demo: dict) -> None:
    from tests.conftest import runc_state

    cell_id = tapi.post("/v1/cells", json={"template": "demo"}).json()["cell_id"]
    try:
        tapi.post(f"/v1/cells/{cell_id}/pause")
        deadline = time.monotonic() + 20
        while runc_state(template_server, cell_id) is not None:
            assert time.monotonic() < deadline, "the paused cell was not evicted"
            time.sleep(0.2)
        assert tapi.post(f"/v1/cells/{cell_id}/resume").json()["restored"]["files"] is True
        assert sh(tapi, cell_id, "python3 -c 'import cellboxdemo; print(cellboxdemo.VALUE)'")["stdout"] == "one\n"
    finally:
        tapi.delete(f"/v1/cells/{cell_id}")


def test_a_javascript_template_runs_javascript_by_default(tapi: httpx.Client) -> None:
    register(tapi, {"name": "jsdefault", "runtime": "javascript"})
    wait_built(tapi, "jsdefault")
    cell_id = tapi.post("/v1/cells", json={"template": "jsdefault"}).json()["cell_id"]
    try:
        body = tapi.post(f"/v1/cells/{cell_id}/exec", json={"code": "[1, 2].map(x => x * 3)"}).json()
        assert body["language"] == "javascript" and body["results"] == [{"text/plain": "[ 3, 6 ]"}]
    finally:
        tapi.delete(f"/v1/cells/{cell_id}")
