"""Code execution over the Cell API on real cells: kernels, streaming, receipts."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from synapse.cell import Cell
from synapse.e2b_compat import Sandbox

from cellbox.api.schemas import ExecResult
from cellbox.receipts import GENESIS, result_hash, sha256, verify


def run(api, cell_id, code, **extra):
    response = api.post(f"/v1/cells/{cell_id}/exec", json={"code": code, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def stream_events(server, cell_id, code, on_event=None):
    events = []
    with server.client() as client:
        with client.stream("POST", f"/v1/cells/{cell_id}/exec/stream", json={"code": code}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    events.append((time.monotonic(), event))
                    if on_event:
                        on_event(event)
                    if event["type"] == "result":
                        break
    return events


def test_python_state_persists_and_the_trailing_expression_is_a_result(api, cell):
    cell_id = cell["cell_id"]
    assert run(api, cell_id, "x = 41\ndef f(): return x + 1")["exit_code"] == 0
    body = run(api, cell_id, "print(f())\nx")
    ExecResult.model_validate(body)  # the answer is what the OpenAPI document promises
    assert body["stdout"] == "42\n"
    assert body["results"] == [{"text/plain": "41"}]
    assert body["execution_count"] == 2


def test_an_exception_is_a_200_with_the_error_and_a_traceback_of_user_code(api, cell):
    body = run(api, cell["cell_id"], "def boom():\n    raise ValueError('bad')\nboom()")
    assert body["exit_code"] != 0
    assert body["error"]["name"] == "ValueError" and body["error"]["value"] == "bad"
    assert "boom()" in body["error"]["traceback"]
    assert "cellbox" not in body["error"]["traceback"] and "kernel" not in body["error"]["traceback"].lower()
    assert "ValueError: bad" in body["stderr"]


def test_output_of_subprocesses_is_captured(api, cell):
    body = run(api, cell["cell_id"], "import os, sys\nos.system('echo from-shell')\nsys.stdout.flush()")
    assert "from-shell" in body["stdout"]


def test_rich_results_follow_ipython_conventions(api, cell):
    code = (
        "class Page:\n"
        "    def _repr_html_(self): return '<b>hi</b>'\n"
        "    def _repr_markdown_(self): return '**hi**'\n"
        "display(Page())\n"
        "class Chart:\n"
        "    def _repr_png_(self): return b'\\x89PNG fake'\n"
        "Chart()"
    )
    results = run(api, cell["cell_id"], code)["results"]
    assert results[0]["text/html"] == "<b>hi</b>" and results[0]["text/markdown"] == "**hi**"
    assert base64.b64decode(results[1]["image/png"]) == b"\x89PNG fake"


def test_javascript_and_bash_kernels_keep_state(api, cell):
    cell_id = cell["cell_id"]
    run(api, cell_id, "let n = 20; const add = (a) => a + n;", language="javascript")
    body = run(api, cell_id, "console.log(add(1)); await Promise.resolve(add(22))", language="js")
    assert body["stdout"] == "21\n" and body["results"] == [{"text/plain": "42"}]
    run(api, cell_id, "cd /tmp && export GREETING=hey", language="bash")
    assert run(api, cell_id, "echo $GREETING $(pwd)", language="bash")["stdout"] == "hey /tmp\n"


def test_a_javascript_template_cell_defaults_to_javascript(cells, api):
    cell_id = cells(template="javascript")["cell_id"]
    body = run(api, cell_id, "typeof process.version")
    assert body["language"] == "javascript" and body["results"] == [{"text/plain": "'string'"}]


def test_timeout_interrupts_and_keeps_state(api, cell):
    cell_id = cell["cell_id"]
    run(api, cell_id, "kept = 'yes'")
    body = run(api, cell_id, "import time\ntime.sleep(30)", timeout=1)
    assert body["timed_out"] is True and body["error"]["name"] == "KeyboardInterrupt"
    assert body["state_lost"] is False
    assert run(api, cell_id, "print(kept)")["stdout"] == "yes\n"


def test_a_kernel_that_dies_is_reported_and_restarted(api, cell):
    cell_id = cell["cell_id"]
    run(api, cell_id, "lost = 1")
    body = run(api, cell_id, "import os\nos._exit(3)")
    assert body["exit_code"] != 0 and body["state_lost"] is True and body["error"]
    after = run(api, cell_id, "print('fresh'); 'lost' in globals()")
    assert after["stdout"] == "fresh\n" and after["results"] == [{"text/plain": "False"}]


def test_non_persistent_cells_forget_between_executions(cells, api):
    cell_id = cells(persistent=False)["cell_id"]
    run(api, cell_id, "y = 1")
    assert run(api, cell_id, "'y' in globals()")["results"] == [{"text/plain": "False"}]


def test_output_above_the_cap_is_cut_with_a_marker(api, cell):
    body = run(api, cell["cell_id"], "print('x' * (11 * 1024 * 1024))")
    assert len(body["stdout"]) < 10.5 * 1024 * 1024
    assert "truncated" in body["stdout"]
    assert body["truncated"]["stdout"] > 0


def test_stream_sends_lines_as_they_are_printed_and_result_last(server, cell):
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\nprint('partial', end='')"
    events = stream_events(server, cell["cell_id"], code)
    kinds = [e["type"] for _, e in events]
    texts = [e.get("text") for _, e in events if e["type"] == "stdout"]
    assert texts == ["first", "second", "partial"]
    assert kinds[-1] == "result"
    first_at = next(t for t, e in events if e.get("text") == "first")
    result_at = events[-1][0]
    assert result_at - first_at >= 1.0, "the first line must arrive before the execution ends"
    assert events[-1][1]["exit_code"] == 0 and events[-1][1]["receipt"]["code_hash"] == sha256(code)


def test_stream_reports_errors_and_displays(server, cell):
    events = [e for _, e in stream_events(server, cell["cell_id"], "display({'a': 1})\n1/0")]
    kinds = [e["type"] for e in events]
    assert "display" in kinds
    assert kinds[-2:] == ["error", "result"]
    assert "ZeroDivisionError" in events[-2]["message"]


def test_a_client_that_leaves_mid_stream_does_not_stop_the_execution(server, api, cell):
    cell_id = cell["cell_id"]
    with server.client() as client:
        with client.stream("POST", f"/v1/cells/{cell_id}/exec/stream",
                           json={"code": "import time\nprint('go', flush=True)\ntime.sleep(1)\nopen('/data/done','w').write('1')"}) as response:
            for line in response.iter_lines():
                if "go" in line:
                    break
    time.sleep(2)
    assert run(api, cell_id, "print(open('/data/done').read())")["stdout"] == "1\n"


def test_two_executions_on_one_kernel_do_not_interleave(api, server, cell):
    cell_id = cell["cell_id"]
    outputs = []

    def worker(tag):
        with server.client() as client:
            body = client.post(f"/v1/cells/{cell_id}/exec",
                               json={"code": f"import time\nfor i in range(3):\n    print('{tag}', i)\n    time.sleep(0.1)"}).json()
            outputs.append(body["stdout"])

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in outputs:
        tags = {line.split()[0] for line in out.splitlines()}
        assert len(tags) == 1, out


def test_receipts_chain_and_verify_with_the_public_key(server, api, cell):
    cell_id = cell["cell_id"]
    answers = [run(api, cell_id, f"print({i})") for i in range(3)]
    key_info = httpx.get(server.url + "/v1/receipts/public-key").json()
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_info["public_key"]))
    chain = api.get(f"/v1/cells/{cell_id}/receipts").json()
    assert [r["execution_id"] for r in chain] == [a["receipt"]["execution_id"] for a in answers]
    prev = GENESIS
    for receipt, answer in zip(chain, answers):
        assert verify(receipt, public_key)
        assert receipt["prev_hash"] == prev
        prev = receipt["receipt_hash"]
        assert receipt["result_hash"] == result_hash(answer)
    forged = dict(chain[1], result_hash=sha256("something else"))
    assert not verify(forged, public_key)


def test_execution_counts_as_activity_and_is_counted(api, cells):
    cell_id = cells()["cell_id"]
    api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 1})
    run(api, cell_id, "import time\ntime.sleep(2.5)")
    info = api.get(f"/v1/cells/{cell_id}").json()
    assert info["state"] == "running" and info["executions"] == 1


def test_bad_exec_input_gets_clear_errors(api, cell):
    cell_id = cell["cell_id"]
    cases = [({}, "code"), ({"code": 5}, "code"), ({"code": "1", "language": "cobol"}, "language"),
             ({"code": "1", "timeout": 0}, "timeout")]
    for body, word in cases:
        response = api.post(f"/v1/cells/{cell_id}/exec", json=body)
        assert response.status_code == 400 and word in response.json()["error"], response.text
    assert api.post("/v1/cells/cell-nope/exec", json={"code": "1"}).status_code == 404


def test_published_client_run_stream_and_callbacks(server):
    cell = Cell(api_url=server.url, api_key=server.key)
    try:
        assert cell.run("x = 6").ok
        result = cell.run("print(x * 7)")
        assert result.stdout == "42\n" and result.receipt.code_hash == sha256("print(x * 7)")
        lines = []
        streamed = cell.run("for i in range(3): print(i)", on_stdout=lines.append)
        assert lines == ["0", "1", "2"] and streamed.stdout == "0\n1\n2"
        assert [e["type"] for e in cell.run_stream("print('s')")][-1] == "result"
        out = []
        cell.command("echo via-command", on_stdout=out.append)
        assert out == ["via-command"]
    finally:
        cell.kill()


def test_published_client_javascript_cell_and_e2b_sandbox(server):
    js = Cell(api_url=server.url, api_key=server.key, template="javascript")
    try:
        assert js.run("console.log([1,2].map(x => x * 2).join(','))").stdout == "2,4\n"
    finally:
        js.kill()
    sandbox = Sandbox(api_url=server.url, api_key=server.key, allow_internet_access=False)
    try:
        assert sandbox.run_code("n = 40").error is None
        execution = sandbox.run_code("print(n + 2)")
        assert execution.text == "42" and execution.error is None
        failed = sandbox.run_code("raise KeyError('k')")
        assert failed.error is not None and "KeyError" in failed.error.value
    finally:
        sandbox.kill()


def test_a_retry_of_a_blocking_execution_whose_caller_left_waits_for_the_same_run(server, api, cell):
    cell_id = cell["cell_id"]
    code = "import time\nopen('/data/runs', 'a').write('x')\ntime.sleep(3)\nprint('done')"
    with server.client() as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post(f"/v1/cells/{cell_id}/exec", json={"code": code}, timeout=1)
    # What the published client does after its timeout: the same request again.
    body = run(api, cell_id, code)
    assert body["stdout"] == "done\n"
    assert run(api, cell_id, "print(open('/data/runs').read())")["stdout"] == "x\n", "the code ran once"


def test_identical_executions_from_callers_still_waiting_each_run(server, api, cell):
    cell_id = cell["cell_id"]
    code = "import time\nopen('/data/both', 'a').write('x')\ntime.sleep(0.5)"

    def call():
        with server.client() as client:
            assert client.post(f"/v1/cells/{cell_id}/exec", json={"code": code}).status_code == 200

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert run(api, cell_id, "print(open('/data/both').read())")["stdout"] == "xx\n"
