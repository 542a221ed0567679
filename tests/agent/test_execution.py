"""Code execution in persistent kernels: POST /exec streams NDJSON events."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time

import pytest

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def run(agent, code: str, **body) -> tuple[list[dict], dict]:
    with agent.stream("POST", "/exec", json={"code": code, **body}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events and events[-1]["type"] == "end"
    assert all(event["type"] != "end" for event in events[:-1])
    return events, events[-1]


def text(events: list[dict], stream: str = "stdout") -> str:
    return "".join(event["text"] for event in events if event["type"] == stream)


def ok(agent, code: str, **body) -> tuple[list[dict], dict]:
    events, end = run(agent, code, **body)
    assert end["exit_code"] == 0 and end["error"] is None, (end, text(events, "stderr"))
    return events, end


# -- python -------------------------------------------------------------------------


def test_python_state_persists_between_executions(agent):
    ok(agent, "x = 41")
    events, end = ok(agent, "print(x + 1)")
    assert text(events) == "42\n"
    assert end["execution_count"] == 2


def test_python_imports_functions_and_classes_persist(agent):
    ok(agent, "import math\ndef area(r):\n    return math.pi * r * r\nclass P:\n    k = 3")
    events, _ = ok(agent, "print(round(area(1), 2), P.k)")
    assert text(events) == "3.14 3\n"


def test_python_trailing_expression_is_a_result(agent):
    _, end = ok(agent, "a = 2\na * 21")
    assert end["results"] == [{"text/plain": "42"}]


def test_python_trailing_none_or_semicolon_gives_no_result(agent):
    _, end = ok(agent, "None")
    assert end["results"] == []
    _, end = ok(agent, "1 + 1;")
    assert end["results"] == []


def test_python_top_level_await(agent):
    _, end = ok(agent, "import asyncio\nasync def f():\n    return 7\nawait f()")
    assert end["results"] == [{"text/plain": "7"}]


def test_python_runs_in_the_working_directory(agent):
    events, _ = ok(agent, "import os; print(os.getcwd())")
    assert text(events).strip() == str(agent.workdir)


def test_display_builtin_emits_display_events_in_order(agent):
    events, end = ok(agent, "print('a')\ndisplay(1, 'two')\nprint('b')\n3")
    kinds: list[tuple] = []
    for event in events[:-1]:  # stdout chunks are not lines: join neighbours
        if event["type"] == "stdout" and kinds and kinds[-1][0] == "stdout":
            kinds[-1] = ("stdout", kinds[-1][1] + event["text"])
        else:
            kinds.append((event["type"], event.get("text") or event.get("data")))
    assert kinds == [
        ("stdout", "a\n"),
        ("display", {"text/plain": "1"}),
        ("display", {"text/plain": "'two'"}),
        ("stdout", "b\n"),
    ]
    assert end["results"] == [{"text/plain": "1"}, {"text/plain": "'two'"}, {"text/plain": "3"}]


REPR_CASES = [
    ("_repr_html_", "return '<b>hi</b>'", "text/html", "<b>hi</b>"),
    ("_repr_markdown_", "return '# hi'", "text/markdown", "# hi"),
    ("_repr_svg_", "return '<svg/>'", "image/svg+xml", "<svg/>"),
    ("_repr_png_", "return b'\\x89PNG'", "image/png", base64.b64encode(b"\x89PNG").decode()),
    ("_repr_jpeg_", "return b'\\xff\\xd8'", "image/jpeg", base64.b64encode(b"\xff\xd8").decode()),
    ("_repr_json_", "return {'a': [1, 2]}", "application/json", {"a": [1, 2]}),
    ("_repr_latex_", "return '$x^2$'", "text/latex", "$x^2$"),
]


@pytest.mark.parametrize("method,body,mime,expected", REPR_CASES, ids=[c[2] for c in REPR_CASES])
def test_repr_method_becomes_its_mime_type(agent, method, body, mime, expected):
    code = f"class R:\n    def {method}(self):\n        {body}\n    def __repr__(self):\n        return 'R()'\nR()"
    _, end = ok(agent, code)
    assert end["results"] == [{mime: expected, "text/plain": "R()"}]


def test_repr_mimebundle_is_used_and_plain_text_added(agent):
    code = (
        "class B:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/html': '<i>b</i>', 'application/vnd.custom+json': {'v': 1}}\n"
        "B()"
    )
    _, end = ok(agent, code)
    (bundle,) = end["results"]
    assert bundle["text/html"] == "<i>b</i>"
    assert bundle["application/vnd.custom+json"] == {"v": 1}
    assert bundle["text/plain"].startswith("<__main__.B object")


def test_display_of_rich_object_streams_its_bundle(agent):
    events, _ = ok(agent, "class H:\n    def _repr_html_(self):\n        return '<p>x</p>'\ndisplay(H())")
    (display,) = [e for e in events if e["type"] == "display"]
    assert display["data"]["text/html"] == "<p>x</p>"
    assert display["metadata"] == {}


def test_error_traceback_shows_user_code_not_the_kernel(agent):
    events, end = run(agent, "def f():\n    return 1 / 0\n\nf()")
    assert end["exit_code"] == 1
    error = end["error"]
    assert error["name"] == "ZeroDivisionError"
    assert error["value"] == "division by zero"
    assert 'File "<cell-1>", line 4' in error["traceback"]
    assert "return 1 / 0" in error["traceback"]  # the source line, through linecache
    assert "python_kernel" not in error["traceback"]
    assert error["traceback"] in text(events, "stderr")


def test_syntax_error_is_reported(agent):
    _, end = run(agent, "x = (")
    assert end["exit_code"] == 1
    assert end["error"]["name"] == "SyntaxError"
    assert "<cell-1>" in end["error"]["traceback"]
    assert "python_kernel" not in end["error"]["traceback"]


def test_state_survives_an_error(agent):
    run(agent, "y = 5\nraise ValueError('boom')")
    events, _ = ok(agent, "print(y)")
    assert text(events) == "5\n"


def test_sys_exit_does_not_kill_the_kernel(agent):
    ok(agent, "z = 1")
    _, end = run(agent, "import sys; sys.exit(3)")
    assert end["exit_code"] == 3 and end["error"]["name"] == "SystemExit"
    events, _ = ok(agent, "print(z)")
    assert text(events) == "1\n"


def test_os_system_and_fd_level_output_are_captured(agent):
    events, _ = ok(agent, "import os\nos.system('echo from-shell; echo err-shell >&2')\nos.write(1, b'raw\\n')")
    assert text(events) == "from-shell\nraw\n"
    assert text(events, "stderr") == "err-shell\n"


def test_stdout_and_stderr_keep_their_order_within_a_stream(agent):
    code = "import sys\nfor i in range(200):\n    print(i)\n    print(-i, file=sys.stderr)"
    events, _ = ok(agent, code)
    assert text(events) == "".join(f"{i}\n" for i in range(200))
    assert text(events, "stderr") == "".join(f"{-i}\n" for i in range(200))


def test_output_streams_before_the_execution_ends(agent):
    code = "import time\nprint('first', end='')\ntime.sleep(1)\nprint('second')"
    seen = []
    with agent.stream("POST", "/exec", json={"code": code}) as response:
        lines = response.iter_lines()
        for line in lines:
            event = json.loads(line)
            seen.append(event)
            if event["type"] == "stdout":
                break  # a partial line arrived while the kernel is still sleeping
        rest = [json.loads(line) for line in lines if line]
    assert seen[-1] == {"type": "stdout", "text": "first"}
    assert all(event["type"] != "end" for event in seen)
    assert rest[-1]["type"] == "end"
    assert text(seen + rest) == "firstsecond\n"


def test_multibyte_characters_split_across_writes_stay_whole(agent):
    code = "import os, time\nb = 'é€'.encode()\nos.write(1, b[:1])\ntime.sleep(0.2)\nos.write(1, b[1:4])\ntime.sleep(0.2)\nos.write(1, b[4:])"
    events, _ = ok(agent, code)
    assert text(events) == "é€"
    assert "\ufffd" not in text(events)


def test_timeout_raises_keyboard_interrupt_and_keeps_state(agent):
    ok(agent, "kept = 'yes'")
    events, end = run(agent, "while True:\n    pass", timeout=0.5)
    assert end["timed_out"] is True
    assert end["state_lost"] is False
    assert end["error"]["name"] == "KeyboardInterrupt"
    assert "<cell-2>" in end["error"]["traceback"]
    assert "timed out" in text(events, "stderr")
    events, end = ok(agent, "print(kept)")
    assert text(events) == "yes\n"
    assert end["kernel_restarted"] is False


def test_kernel_ignoring_sigint_is_killed_and_next_execution_works(agent):
    ok(agent, "lost = 1")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    events, end = run(agent, code, timeout=0.3)
    assert end["timed_out"] is True
    assert end["state_lost"] is True
    assert end["error"]["name"] == "TimeoutError"
    assert "state was lost" in end["error"]["value"]
    events, end = run(agent, "print('fresh')\n'lost' in globals()")
    assert text(events) == "fresh\n"
    assert end["results"] == [{"text/plain": "False"}]
    assert end["kernel_restarted"] is True
    assert end["execution_count"] == 1


def test_kernel_exit_is_reported_and_next_execution_gets_a_fresh_kernel(agent):
    ok(agent, "before = 1")
    events, end = run(agent, "import os\nprint('bye', flush=True)\nos._exit(7)")
    assert text(events) == "bye\n"
    assert end["error"]["name"] == "KernelDied"
    assert end["exit_code"] == 7
    assert end["state_lost"] is True
    events, end = run(agent, "'before' in globals()")
    assert end["exit_code"] == 0
    assert end["results"] == [{"text/plain": "False"}]
    assert end["kernel_restarted"] is True


def test_kernel_dying_between_executions_is_reported_on_the_next(agent):
    ok(agent, "import os, threading\nthreading.Timer(0.1, os._exit, (5,)).start()")
    time.sleep(0.5)
    events, end = run(agent, "print('again')")
    assert text(events).endswith("again\n")
    assert "died since the last execution" in text(events, "stderr")
    assert end["state_lost"] is True and end["kernel_restarted"] is True
    # The code ran fine; the answer that found the kernel dead says so in ``error``.
    assert end["exit_code"] == 0 and end["error"]["name"] == "KernelDied"
    _, after = ok(agent, "print('and on')")
    assert after["error"] is None


def test_output_beyond_the_cap_is_dropped_with_a_marker(agent):
    events, end = ok(agent, "print('a' * 100000)", output_cap=1000)
    out = text(events)
    assert out.startswith("a" * 1000 + "\n[cellbox: output truncated, 99001 bytes not kept]")
    assert len(out) < 1100
    assert end["truncated"] == {"stdout": 99001, "stderr": 0, "results": 0}


def test_rich_results_beyond_their_cap_are_dropped_with_a_note(agent):
    events, end = ok(agent, "display('x' * 5000)\nprint('next')\n'small'", results_cap=1000)
    assert end["results"] == [{"text/plain": "'small'"}]
    assert end["truncated"]["results"] > 5000
    assert "dropped" in text(events, "stderr")
    assert text(events) == "next\n"


def test_envs_apply_to_one_python_execution(agent):
    events, _ = ok(agent, "import os\nprint(os.environ['CB_X'])\nos.system('echo $CB_X')", envs={"CB_X": "v1"})
    assert text(events) == "v1\nv1\n"
    events, _ = ok(agent, "import os\nprint(os.environ.get('CB_X'))")
    assert text(events) == "None\n"


def test_fake_matplotlib_figures_become_png_displays(agent):
    pkg = agent.workdir / "matplotlib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "pyplot.py").write_text(
        "_figs = {}\n"
        "class Figure:\n"
        "    def __init__(self, n): self.n = n\n"
        "    def savefig(self, buf, format=None, **kw): buf.write(b'PNG%d' % self.n)\n"
        "    def __repr__(self): return '<Figure %d>' % self.n\n"
        "def figure(num=None):\n"
        "    num = num or max(_figs, default=0) + 1\n"
        "    return _figs.setdefault(num, Figure(num))\n"
        "def get_fignums(): return sorted(_figs)\n"
        "def close(which=None): _figs.clear()\n"
        "def show(): pass\n"
    )
    _, end = ok(agent, "import os\nprint(os.environ['MPLBACKEND'])\nimport matplotlib.pyplot as plt\nplt.figure()\nplt.figure();")
    assert end["results"] == [
        {"image/png": base64.b64encode(b"PNG1").decode(), "text/plain": "<Figure 1>"},
        {"image/png": base64.b64encode(b"PNG2").decode(), "text/plain": "<Figure 2>"},
    ]
    # plt.show() shows (and closes) the open figures where it is called.
    events, end = ok(agent, "plt.figure()\nplt.show()\nprint('after')")
    assert events[0]["type"] == "display"
    assert text(events) == "after\n"
    assert len(end["results"]) == 1


def test_real_matplotlib_figure_becomes_a_png(agent):
    pytest.importorskip("matplotlib")
    _, end = ok(agent, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nNone")
    (figure,) = end["results"]
    assert base64.b64decode(figure["image/png"]).startswith(b"\x89PNG")


# -- concurrency, interruption, the stream ---------------------------------------------


def test_busy_kernel_serialises_concurrent_executions(agent):
    code = "import time\nt0 = time.monotonic()\ntime.sleep(0.4)\nprint(t0, time.monotonic())"
    spans: list[tuple[float, float]] = []

    def one():
        events, _ = ok(agent, code)
        start, end = map(float, text(events).split())
        spans.append((start, end))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = sorted(spans)
    assert second[0] >= first[1]


def test_waiting_for_a_busy_kernel_is_bounded_by_the_timeout(agent):
    ok(agent, "pass")  # the kernel is up
    results = {}

    def slow():
        results["slow"] = run(agent, "import time; time.sleep(1.5)")[1]

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    response = agent.post("/exec", json={"code": "print(1)", "timeout": 0.3})
    thread.join()
    assert response.status_code == 409
    assert response.json()["error_type"] == "kernel_busy"
    assert "busy" in response.json()["error"]
    assert results["slow"]["exit_code"] == 0


def test_client_disconnect_mid_stream_then_new_execution_works(agent):
    code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.25)\ndone_it = True"
    with agent.stream("POST", "/exec", json={"code": code}) as response:
        first = json.loads(next(response.iter_lines()))
    assert first["type"] == "stdout" and first["text"].startswith("0")
    events, end = ok(agent, "print(done_it)")
    assert text(events) == "True\n"


def test_interrupt_endpoint_interrupts_a_running_execution(agent):
    ok(agent, "pass")
    result = {}

    def slow():
        result["end"] = run(agent, "import time\nwhile True:\n    time.sleep(0.01)")[1]

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.4)
    answer = agent.post("/exec/interrupt", json={"language": "python"}).json()
    thread.join(10)
    assert answer == {"language": "python", "interrupted": True}
    assert result["end"]["error"]["name"] == "KeyboardInterrupt"
    assert result["end"]["timed_out"] is False
    assert agent.post("/exec/interrupt", json={"language": "python"}).json()["interrupted"] is False


def test_kernels_lists_running_kernels(agent):
    assert agent.get("/kernels").json() == {"kernels": []}
    ok(agent, "1")
    ok(agent, "2")
    (kernel,) = agent.get("/kernels").json()["kernels"]
    assert kernel["language"] == "python"
    assert kernel["execution_count"] == 2
    assert kernel["busy"] is False
    assert kernel["pid"] > 0


def test_deleting_a_kernel_loses_its_state(agent):
    ok(agent, "gone = 1")
    assert agent.delete("/kernels/python").json() == {"language": "python", "shut_down": True}
    assert agent.get("/kernels").json() == {"kernels": []}
    _, end = run(agent, "'gone' in globals()")
    assert end["results"] == [{"text/plain": "False"}]


def test_deleting_a_busy_kernel_ends_its_execution(agent):
    ok(agent, "pass")
    result = {}

    def slow():
        result["end"] = run(agent, "import time; time.sleep(30)")[1]

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    assert agent.delete("/kernels/python").json()["shut_down"] is True
    thread.join(10)
    assert result["end"]["error"]["name"] == "KernelDied"
    assert "shut down" in result["end"]["error"]["value"]
    ok(agent, "pass")


def test_bash_survives_its_temporary_directory_being_removed(agent):
    events, _ = ok(agent, 'rm -rf "$(dirname "$BASH_SOURCE")"', language="bash")
    assert text(events, "stderr") == ""
    events, _ = ok(agent, "echo still", language="bash")
    assert text(events) == "still\n"


@pytest.mark.parametrize(
    "body,word",
    [
        ({}, "code"),
        ({"code": 5}, "code"),
        ({"code": "1", "language": "cobol"}, "language"),
        ({"code": "1", "timeout": 0}, "timeout"),
        ({"code": "1", "timeout": -1}, "timeout"),
        ({"code": "1", "timeout": "10"}, "timeout"),
        ({"code": "1", "output_cap": 0}, "output_cap"),
        ({"code": "1", "envs": {"A": 1}}, "envs"),
        ({"code": "1", "envs": {"A=B": "1"}}, "envs"),
    ],
)
def test_bad_input_is_a_400(agent, body, word):
    response = agent.post("/exec", json=body)
    assert response.status_code == 400
    assert response.json()["error_type"] == "invalid_request"
    assert word in response.json()["error"]


def test_language_aliases_are_accepted(agent):
    for alias in ("python3", "py"):
        _, end = ok(agent, "1", language=alias)
        assert end["results"] == [{"text/plain": "1"}]


# -- javascript ----------------------------------------------------------------------


@needs_node
def test_js_let_const_and_functions_persist(agent):
    ok(agent, "let a = 1; const b = 2; function add(x, y) { return x + y }; class K { v() { return 9 } }", language="js")
    events, end = ok(agent, "console.log(add(a, b), new K().v())", language="javascript")
    assert text(events) == "3 9\n"
    assert end["results"] == []


@needs_node
def test_js_top_level_declarations_can_be_run_again(agent):
    ok(agent, "const c = 1; let d = 2; class Q {}", language="js")
    _, end = ok(agent, "const c = 10; let d = 20; class Q {}; c + d", language="js")
    assert end["results"] == [{"text/plain": "30"}]


@needs_node
def test_js_top_level_await_and_its_declarations_persist(agent):
    _, end = ok(agent, "const v = await new Promise(r => setTimeout(() => r(5), 50)); v * 2", language="js")
    assert end["results"] == [{"text/plain": "10"}]
    _, end = ok(agent, "v + 1", language="js")
    assert end["results"] == [{"text/plain": "6"}]


@needs_node
def test_js_dynamic_import_of_builtins_and_relative_files(agent):
    (agent.workdir / "mod.mjs").write_text("export const v = 42;\n")
    events, end = ok(agent, "const fs = await import('fs'); const m = await import('./mod.mjs'); [typeof fs.readFileSync, m.v]", language="js")
    assert end["results"] == [{"text/plain": "[ 'function', 42 ]"}]
    assert text(events, "stderr") == ""


@needs_node
def test_js_display_keeps_its_place_in_the_output(agent):
    events, _ = ok(agent, "console.log('a'); display(1); console.log('b')", language="js")
    assert [e["type"] for e in events] == ["stdout", "display", "stdout", "end"]


@needs_node
def test_js_trailing_expression_uses_util_inspect(agent):
    _, end = ok(agent, "({a: 1, b: [1, 2]})", language="js")
    assert end["results"] == [{"text/plain": "{ a: 1, b: [ 1, 2 ] }"}]


@needs_node
def test_js_console_streams_and_require_of_builtins(agent):
    events, _ = ok(agent, "const os = require('os'); console.log('out'); console.error('err'); typeof os.cpus", language="js")
    assert text(events) == "out\n"
    assert text(events, "stderr") == "err\n"


@needs_node
def test_js_thrown_error_is_reported_with_user_stack(agent):
    events, end = run(agent, "function boom() { throw new RangeError('nope') }\nboom()", language="js")
    assert end["exit_code"] == 1
    error = end["error"]
    assert (error["name"], error["value"]) == ("RangeError", "nope")
    assert "<cell-1>:1" in error["traceback"]
    assert "node_kernel" not in error["traceback"] and "node:internal" not in error["traceback"]
    assert "RangeError: nope" in text(events, "stderr")


@needs_node
def test_js_timeout_interrupts_a_loop_and_keeps_state(agent):
    ok(agent, "var keep = 'k'", language="js")
    _, end = run(agent, "while (true) {}", language="js", timeout=0.5)
    assert end["timed_out"] is True and end["state_lost"] is False
    assert end["error"]["name"] == "Interrupted"
    _, end = ok(agent, "keep", language="js")
    assert end["results"] == [{"text/plain": "'k'"}]


@needs_node
def test_js_timeout_interrupts_a_pending_await(agent):
    _, end = run(agent, "await new Promise(() => {})", language="js", timeout=0.5)
    assert end["timed_out"] is True and end["state_lost"] is False
    assert end["error"]["name"] == "Interrupted"
    ok(agent, "1", language="js")


@needs_node
def test_js_display_and_envs(agent):
    events, end = ok(
        agent, "display({'text/html': '<b>j</b>'}, {raw: true}); process.env.CB_J", language="js", envs={"CB_J": "jj"}
    )
    assert [e["data"] for e in events if e["type"] == "display"] == [{"text/html": "<b>j</b>"}]
    assert end["results"] == [{"text/html": "<b>j</b>"}, {"text/plain": "'jj'"}]
    _, end = ok(agent, "process.env.CB_J", language="js")
    assert end["results"] == []


@needs_node
def test_js_process_exit_is_reported_and_kernel_restarts(agent):
    _, end = run(agent, "process.exit(4)", language="js")
    assert end["error"]["name"] == "KernelDied" and end["exit_code"] == 4
    _, end = ok(agent, "1 + 1", language="node")
    assert end["kernel_restarted"] is True


# -- bash ----------------------------------------------------------------------------


def test_bash_cd_exported_vars_and_functions_persist(agent):
    (agent.workdir / "sub").mkdir()
    ok(agent, "cd sub\nexport GREETING=hi\nshout() { echo \"$1!\"; }", language="bash")
    events, _ = ok(agent, 'pwd; echo $GREETING; shout hey; bash -c \'echo $GREETING\'', language="bash")
    assert text(events) == f"{agent.workdir / 'sub'}\nhi\nhey!\nhi\n"


def test_bash_exit_code_is_the_last_status(agent):
    events, end = run(agent, "echo out; echo err >&2; (exit 3)", language="sh")
    assert end["exit_code"] == 3
    assert end["error"] is None
    assert text(events) == "out\n" and text(events, "stderr") == "err\n"


def test_bash_stdin_is_empty(agent):
    events, end = run(agent, "cat; echo rc=$?", language="bash", timeout=5)
    assert text(events) == "rc=0\n" and end["timed_out"] is False


def test_bash_timeout_interrupts_and_keeps_the_session(agent):
    ok(agent, "KEEP=1", language="bash")
    _, end = run(agent, "sleep 30; echo never", language="bash", timeout=0.5)
    assert end["timed_out"] is True and end["state_lost"] is False
    assert end["exit_code"] == 130
    events, _ = ok(agent, "echo $KEEP", language="bash")
    assert text(events) == "1\n"


def test_bash_envs_apply_to_one_execution(agent):
    ok(agent, "export CB_B=old", language="bash")
    events, _ = ok(agent, "echo $CB_B $CB_NEW", language="bash", envs={"CB_B": "new 'quoted'", "CB_NEW": "n"})
    assert text(events) == "new 'quoted' n\n"
    events, _ = ok(agent, "echo $CB_B ${CB_NEW-unset}", language="bash")
    assert text(events) == "old unset\n"


def test_bash_exit_is_reported_and_the_shell_restarts(agent):
    ok(agent, "X=1", language="bash")
    _, end = run(agent, "exit 6", language="bash")
    assert end["error"]["name"] == "KernelDied" and end["exit_code"] == 6
    events, end = ok(agent, "echo ${X-none}", language="bash")
    assert text(events) == "none\n"
    assert end["kernel_restarted"] is True


def test_each_language_has_its_own_kernel(agent):
    ok(agent, "shared = 'py'")
    events, _ = ok(agent, "echo ${shared-none}", language="bash")
    assert text(events) == "none\n"


def test_unknown_alias_case_insensitive(agent):
    _, end = ok(agent, "echo hi", language="BASH")
    assert end["exit_code"] == 0


def test_streamed_response_is_chunked_ndjson(agent):
    with agent.stream("POST", "/exec", json={"code": "print(1)"}) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        lines = list(response.iter_lines())
    assert {json.loads(line)["type"] for line in lines[:-1]} == {"stdout"}
    end = json.loads(lines[-1])
    assert set(end) == {
        "type", "exit_code", "error", "results", "execution_count", "timed_out",
        "state_lost", "kernel_restarted", "truncated", "duration_ms",
    }



def test_a_kernel_started_ahead_counts_no_execution(agent):
    body = agent.post("/kernels/python").json()
    assert body["kernel"]["pid"] and body["kernel"]["execution_count"] == 0
    _, end = ok(agent, "1")
    assert end["execution_count"] == 1 and end["kernel_restarted"] is False
