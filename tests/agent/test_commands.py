def test_health_reports_version(agent):
    body = agent.get("/health").json()
    assert body["status"] == "ok" and body["version"]


def test_foreground_command_captures_both_streams_and_exit_code(agent):
    body = agent.post("/commands/run", json={"command": "echo out; echo err >&2; exit 3"}).json()
    assert body["stdout"] == "out\n"
    assert body["stderr"] == "err\n"
    assert body["exit_code"] == 3


def test_command_starts_in_the_working_directory(agent):
    body = agent.post("/commands/run", json={"command": "pwd"}).json()
    assert body["stdout"].strip() == str(agent.workdir)


def test_command_gets_request_envs(agent):
    body = agent.post("/commands/run", json={"command": "echo $GREETING", "envs": {"GREETING": "hi"}}).json()
    assert body["stdout"] == "hi\n"


def test_command_timeout_kills_the_process_group(agent):
    body = agent.post("/commands/run", json={"command": "sleep 30 & sleep 30", "timeout": 0.5}).json()
    assert body["timed_out"] is True
    assert body["exit_code"] == 124
    assert "timed out" in body["stderr"]


def test_background_grandchild_holding_stdout_does_not_hang_the_command(agent):
    body = agent.post("/commands/run", json={"command": "(sleep 30 &) ; echo done", "timeout": 10}).json()
    assert body["stdout"] == "done\n"
    assert body["latency_ms"] < 5000


def test_output_beyond_the_cap_is_cut_with_a_marker(agent):
    body = agent.post(
        "/commands/run", json={"command": "yes a | tr -d '\\n' | head -c 100000", "output_cap": 1000}
    ).json()
    assert body["stdout"].startswith("a" * 1000)
    assert "truncated" in body["stdout"]


def test_bad_command_is_a_400(agent):
    response = agent.post("/commands/run", json={"command": 5})
    assert response.status_code == 400
    assert "command" in response.json()["error"]
