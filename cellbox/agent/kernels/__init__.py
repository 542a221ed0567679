"""Kernels: one long-lived interpreter per language, started on first use and reused.

A kernel is a separate process (its own session and process group), so user code
that exits, hangs, redirects stdio or monkeypatches cannot take the agent down.

Wiring, the same for every language:
- the kernel's fd 1 and fd 2 are pipes the agent reads, so output of
  subprocesses and C extensions is captured; chunks are forwarded as they are read;
- a control channel (two pipes) carries JSON lines: a request in, ``display``,
  ``result`` and a final ``done`` event out. The kernel flushes its output before
  ``display`` and ``done``; the agent then drains the output pipes (non-blocking)
  before forwarding them, so order is kept. A ``display`` waits for an ``ack`` line
  so that nothing printed after it can overtake it.
  The bash kernel has no request message: it is an interactive shell reading
  ``source`` lines on its stdin, and its ``PROMPT_COMMAND`` writes ``done``.

Per execution: a timeout (SIGINT to the kernel's process group first, then SIGKILL
after ``INTERRUPT_GRACE_S``; a killed kernel is restarted on next use and the answer
says state was lost), output caps per stream (the rest is counted, dropped and
marked), a cap on the total size of rich results. One execution at a time per
kernel: callers hold ``Slot.lock`` around ``Slot.execute``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from .. import children
from ..environment import WORKDIR, base_env

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
DEFAULT_RESULTS_CAP = 32 * 1024 * 1024
INTERRUPT_GRACE_S = 2.0
START_TIMEOUT_S = 30.0
_POLL_S = 0.05
_READ_SIZE = 64 * 1024
# A single control message (a display) larger than this is dropped, never held.
_MAX_CONTROL_LINE = DEFAULT_RESULTS_CAP + 1024 * 1024

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))

LANGUAGE_ALIASES = {
    "python": "python",
    "python3": "python",
    "py": "python",
    "javascript": "javascript",
    "js": "javascript",
    "node": "javascript",
    "bash": "bash",
    "sh": "bash",
}

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Emit = Callable[[dict], None]



def end_event(**fields: Any) -> dict[str, Any]:
    """The last event of an execution, with every field the host reads."""
    end: dict[str, Any] = {
        "type": "end",
        "exit_code": 0,
        "error": None,
        "results": [],
        "execution_count": 0,
        "timed_out": False,
        "state_lost": False,
        "kernel_restarted": False,
        "truncated": {"stdout": 0, "stderr": 0, "results": 0},
        "duration_ms": 0.0,
    }
    end.update(fields)
    return end

class KernelStartError(Exception):
    pass


def _node_binary() -> str | None:
    return shutil.which("node") or (os.path.exists("/usr/bin/node") and "/usr/bin/node") or None


def _bash_binary() -> str | None:
    return shutil.which("bash") or (os.path.exists("/bin/bash") and "/bin/bash") or None


def interpreter(language: str) -> str | None:
    """The program a language's kernel runs on, or None when the cell lacks it."""
    if language == "python":
        return sys.executable or None
    if language == "javascript":
        return _node_binary()
    if language == "bash":
        return _bash_binary()
    return None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


def _exit_code_of(code: int | None) -> int:
    if code is None:
        return 1
    if code < 0:
        return 128 - code
    return code or 1


def _read_nonblocking(fd: int) -> bytes | None:
    """A chunk, b"" at end of file, or None when nothing is waiting."""
    try:
        return os.read(fd, _READ_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Kernel:
    """One running kernel process and the agent's ends of its pipes."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.execution_count = 0
        self.started_at = time.time()
        self.tmpdir: str | None = None
        self._ctl_buf = bytearray()
        self._ctl_discarding = False
        self._ctl_dropped_display = False
        self.ctl_dropped = 0
        self.ctl_eof = False
        self.closed = False
        self._start()

    # -- life ---------------------------------------------------------------

    def _start(self) -> None:
        program = interpreter(self.language)
        if program is None:
            raise KernelStartError(f"no interpreter for {self.language} in this cell")
        if self.language == "bash":
            try:
                self.tmpdir = tempfile.mkdtemp(prefix="cellbox-bash-")
            except OSError as exc:
                raise KernelStartError(f"could not make a temporary directory for the bash kernel: {exc}") from exc
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        req_r, req_w = os.pipe()  # agent -> kernel
        evt_r, evt_w = os.pipe()  # kernel -> agent
        env = base_env()
        env["CELLBOX_KERNEL_FDS"] = f"{req_r},{evt_w}"
        cwd = WORKDIR if os.path.isdir(WORKDIR) else "/"
        stdin: Any = subprocess.DEVNULL
        if self.language == "python":
            env["MPLBACKEND"] = "Agg"
            argv = [program, os.path.join(KERNEL_DIR, "python_kernel.py")]
        elif self.language == "javascript":
            argv = [program, "--expose-internals", os.path.join(KERNEL_DIR, "node_kernel.js")]
        else:
            del env["CELLBOX_KERNEL_FDS"]
            env.pop("PROMPT_COMMAND", None)
            argv = [program, "--noprofile", "--norc", "--noediting", "-i"]
            stdin = req_r
        try:
            self.child = children.spawn(
                argv,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=out_w,
                stderr=err_w,
                # bash reads its requests on stdin, not on a separate descriptor.
                pass_fds=(evt_w,) if self.language == "bash" else (req_r, evt_w),
            )
        except OSError as exc:
            for fd in (out_r, out_w, err_r, err_w, req_r, req_w, evt_r, evt_w):
                os.close(fd)
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise KernelStartError(f"could not start the {self.language} kernel: {exc}") from exc
        for fd in (out_w, err_w, req_r, evt_w):
            os.close(fd)
        for fd in (out_r, err_r, evt_r, req_w):
            os.set_blocking(fd, False)
        self.out_r, self.err_r, self.evt_r, self.req_w = out_r, err_r, evt_r, req_w
        self.evt_w_in_kernel = evt_w
        self.pid = self.child.pid
        if self.language == "bash":
            self._write(self._bash_init(evt_w, self.tmpdir or "").encode(), time.monotonic() + START_TIMEOUT_S)
        self._wait_ready()

    @staticmethod
    def _bash_init(ctl: int, tmpdir: str) -> str:
        # Interactive, so SIGINT abandons the running line and returns to the prompt;
        # PROMPT_COMMAND runs after every line (finished or interrupted) and reports
        # the status of the execution whose id is set, then undoes its envs. The
        # shell removes its directory of code files when it exits.
        return (
            f"trap {shlex.quote('rm -rf ' + shlex.quote(tmpdir))} EXIT\n"
            "PS1=''; PS2=''; PS0=''; set +H; set +o history; unset HISTFILE MAILCHECK; "
            "shopt -s expand_aliases\n"
            "__cellbox_prompt() { local __cb_st=$?; "
            'if [ -f "$__cb_post" ]; then source "$__cb_post"; fi; __cb_post=; '
            'if [ -n "$__cb_id" ]; then printf \'{"type":"done","id":%s,"exit_code":%d}\\n\' '
            f'"$__cb_id" "$__cb_st" >&{ctl}; __cb_id=; fi; return $__cb_st; }}\n'
            "readonly -f __cellbox_prompt\n"
            "PROMPT_COMMAND=__cellbox_prompt; readonly PROMPT_COMMAND\n"
            "__cb_id=0; :\n"
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        stderr_tail = bytearray()
        while time.monotonic() < deadline:
            for message in self.read_control():
                if message.get("type") == "ready" or (message.get("type") == "done" and message.get("id") == 0):
                    # Whatever the kernel printed while starting is not an execution's output.
                    for fd in (self.out_r, self.err_r):
                        while _read_nonblocking(fd):
                            pass
                    return
            gone = not self.child.running or self.ctl_eof
            while True:
                chunk = _read_nonblocking(self.err_r)
                if not chunk:
                    break
                stderr_tail += chunk
                del stderr_tail[:-4096]
            while _read_nonblocking(self.out_r):
                pass
            if gone:
                self.close()
                detail = stderr_tail.decode("utf-8", "replace").strip()
                raise KernelStartError(
                    f"the {self.language} kernel exited while starting ({_describe_exit(self.child.wait(1))})"
                    + (f": {detail}" if detail else "")
                )
            selectors_wait([self.evt_r, self.err_r], _POLL_S)
        self.close()
        raise KernelStartError(f"the {self.language} kernel did not start within {START_TIMEOUT_S:g} s")

    @property
    def alive(self) -> bool:
        return not self.closed and self.child.running

    def interrupt(self) -> None:
        if self.alive:
            self.child.signal_group(signal.SIGINT)

    def kill(self) -> None:
        self.child.signal_group(signal.SIGKILL)
        self.child.wait(5)

    def close(self) -> None:
        """Kill the kernel (and its process group) and release everything."""
        if self.closed:
            return
        self.closed = True
        if self.child.running:
            self.kill()
        for fd in (self.out_r, self.err_r, self.evt_r, self.req_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- control channel ------------------------------------------------------

    def _write(self, data: bytes, deadline: float) -> bool:
        """Write to the kernel's input; False if it died or stopped reading."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.req_w, view):]
            except BlockingIOError:
                if not self.child.running or time.monotonic() > deadline:
                    return False
                selectors_wait([], _POLL_S, write=[self.req_w])
            except OSError:  # BrokenPipeError: the kernel is gone
                return False
        return True

    def read_control(self) -> list[dict]:
        """Parse whatever complete messages are waiting on the control channel."""
        messages = []
        while True:
            chunk = _read_nonblocking(self.evt_r)
            if chunk is None:
                break
            if not chunk:
                self.ctl_eof = True
                break
            self._feed_control(chunk, messages)
        return messages

    def _feed_control(self, chunk: bytes, messages: list[dict]) -> None:
        while chunk:
            index = chunk.find(b"\n")
            head, chunk = (chunk, b"") if index < 0 else (chunk[:index], chunk[index + 1 :])
            if self._ctl_discarding:
                self.ctl_dropped += len(head)
            else:
                self._ctl_buf += head
                if len(self._ctl_buf) > _MAX_CONTROL_LINE:
                    self.ctl_dropped += len(self._ctl_buf)
                    head = bytes(self._ctl_buf[:64])
                    self._ctl_dropped_display = re.match(rb'\{\s*"type"\s*:\s*"display"', head) is not None
                    self._ctl_buf.clear()
                    self._ctl_discarding = True
            if index < 0:
                return
            if self._ctl_discarding:
                self._ctl_discarding = False
                messages.append({"type": "dropped", "display": self._ctl_dropped_display})
                continue
            line = bytes(self._ctl_buf)
            self._ctl_buf.clear()
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                messages.append(message)

    def request(self, count: int, code: str, envs: dict[str, str], deadline: float) -> bool:
        if self.language != "bash":
            line = json.dumps({"code": code, "execution_count": count, "envs": envs}) + "\n"
            return self._write(line.encode(), deadline)
        assert self.tmpdir is not None
        os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)  # user code may have cleaned /tmp
        code_path = os.path.join(self.tmpdir, f"cell-{count}.sh")
        post_path = os.path.join(self.tmpdir, f"post-{count}.sh")
        pre, post = [], []
        for i, (key, value) in enumerate(envs.items()):
            pre.append(
                f'if [ "${{{key}+set}}" = set ]; then __cb_old_{i}=${key}; __cb_had_{i}=1; '
                f"else __cb_had_{i}=0; fi; export {key}={shlex.quote(value)}\n"
            )
            post.append(
                f'if [ "$__cb_had_{i}" = 1 ]; then export {key}="$__cb_old_{i}"; else unset {key}; fi; '
                f"unset __cb_old_{i} __cb_had_{i}\n"
            )
        with open(code_path, "w", encoding="utf-8") as f:
            f.write(code)
            if not code.endswith("\n"):
                f.write("\n")
        with open(post_path, "w", encoding="utf-8") as f:
            f.writelines(post)
            f.write(f"rm -f {shlex.quote(code_path)} {shlex.quote(post_path)}\n")
        line = f"__cb_id={count}; __cb_post={shlex.quote(post_path)}; "
        if pre:
            pre_path = os.path.join(self.tmpdir, f"pre-{count}.sh")
            with open(pre_path, "w", encoding="utf-8") as f:
                f.writelines(pre)
            line += f"source {shlex.quote(pre_path)}; rm -f {shlex.quote(pre_path)}; "
        # The user's code gets /dev/null as stdin and no control channel.
        line += f"source {shlex.quote(code_path)} </dev/null {self.evt_w_in_kernel}>&-\n"
        return self._write(line.encode(), deadline)


def selectors_wait(fds: list[int], timeout: float, write: list[int] | None = None) -> None:
    sel = selectors.DefaultSelector()
    try:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        for fd in write or []:
            sel.register(fd, selectors.EVENT_WRITE)
        sel.select(timeout)
    finally:
        sel.close()


class _Output:
    """One output stream of an execution: decoded incrementally, capped, forwarded."""

    def __init__(self, name: str, cap: int, emit: Emit) -> None:
        self.name = name
        self.cap = cap
        self.kept = 0
        self.dropped = 0
        self.emit = emit
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> None:
        room = self.cap - self.kept
        if room < len(chunk):
            self.dropped += len(chunk) - max(room, 0)
            chunk = chunk[: max(room, 0)]
        if not chunk:
            return
        self.kept += len(chunk)
        text = self.decoder.decode(chunk)
        if text:
            self.emit({"type": self.name, "text": text})

    def finish(self) -> None:
        text = self.decoder.decode(b"", final=True)
        if self.dropped:
            text += f"\n[cellbox: output truncated, {self.dropped} bytes not kept]\n"
        if text:
            self.emit({"type": self.name, "text": text})


class _Execution:
    """Drive one request on a kernel until ``done``, death, or kill after timeout."""

    def __init__(self, kernel: Kernel, emit: Emit, output_cap: int, results_cap: int) -> None:
        self.kernel = kernel
        self.emit = emit
        self.outputs = {
            kernel.out_r: _Output("stdout", output_cap, emit),
            kernel.err_r: _Output("stderr", output_cap, emit),
        }
        self.open_outputs = set(self.outputs)
        self.results: list[dict] = []
        self.results_cap = results_cap
        self.results_size = 0
        self.results_dropped = 0
        self.done: dict | None = None
        self.timed_out = False
        self.killed = False
        self.died = False

    def _drain(self) -> None:
        for fd in list(self.open_outputs):
            while True:
                chunk = _read_nonblocking(fd)
                if chunk is None:
                    break
                if not chunk:
                    self.open_outputs.discard(fd)
                    break
                self.outputs[fd].feed(chunk)

    def _note(self, text: str) -> None:
        self.emit({"type": "stderr", "text": f"[cellbox: {text}]\n"})

    def _keep_result(self, data: Any) -> bool:
        if not isinstance(data, dict):
            return False
        size = len(json.dumps(data))
        if self.results_size + size > self.results_cap:
            self.results_dropped += size
            self._note(f"a rich output of {size} bytes was dropped: results are capped at {self.results_cap} bytes")
            return False
        self.results_size += size
        self.results.append(data)
        return True

    def _handle(self, messages: list[dict], count: int) -> None:
        for message in messages:
            kind = message.get("type")
            if kind == "display":
                self._drain()  # what was printed before the display comes first
                data = message.get("data")
                if self._keep_result(data):
                    metadata = message.get("metadata")
                    metadata = metadata if isinstance(metadata, dict) else {}
                    self.emit({"type": "display", "data": data, "metadata": metadata})
                # The kernel waits for this, so nothing it prints after the display is
                # drained before it.
                self.kernel._write(b'{"type":"ack"}\n', time.monotonic() + 5)
            elif kind == "result":
                self._keep_result(message.get("data"))
            elif kind == "dropped":
                self._note("a rich output was dropped: it was larger than the results cap")
                if message.get("display"):  # the kernel waits for its ack
                    self.kernel._write(b'{"type":"ack"}\n', time.monotonic() + 5)
            elif kind == "done" and message.get("id") in (count, None):
                self.done = message

    def run(self, count: int, code: str, envs: dict[str, str], timeout: float) -> None:
        kernel = self.kernel
        started = time.monotonic()
        deadline = started + timeout
        sel = selectors.DefaultSelector()
        for fd in (kernel.out_r, kernel.err_r, kernel.evt_r):
            sel.register(fd, selectors.EVENT_READ)
        interrupted_at: float | None = None
        try:
            if not kernel.request(count, code, envs, deadline):
                if kernel.child.running:  # alive but not reading its input for the whole timeout
                    self.timed_out = True
                    self.killed = True
                    kernel.kill()
                else:
                    self.died = True
                self._drain()
                return
            while True:
                now = time.monotonic()
                if self.done is None and interrupted_at is None and now >= deadline:
                    self.timed_out = True
                    interrupted_at = now
                    kernel.interrupt()
                if interrupted_at is not None and now - interrupted_at >= INTERRUPT_GRACE_S:
                    self.killed = True
                    kernel.kill()
                    self._drain()
                    self._handle(kernel.read_control(), count)
                    return
                wait = _POLL_S if interrupted_at is not None else min(_POLL_S, max(0.0, deadline - now))
                for key, _ in sel.select(wait):
                    if key.fd == kernel.evt_r:
                        self._handle(kernel.read_control(), count)
                        if kernel.ctl_eof:
                            sel.unregister(kernel.evt_r)
                    else:
                        chunk = _read_nonblocking(key.fd)
                        if chunk:
                            self.outputs[key.fd].feed(chunk)
                        elif chunk == b"":
                            sel.unregister(key.fd)
                            self.open_outputs.discard(key.fd)
                if self.done is not None:
                    self._drain()
                    return
                if not kernel.child.running or kernel.ctl_eof:
                    # Died, or closed its control channel: nothing more will come.
                    if kernel.child.running:
                        kernel.child.wait(1)
                        if kernel.child.running:
                            kernel.kill()
                    self._drain()
                    self._handle(kernel.read_control(), count)
                    if self.done is None:
                        self.died = True
                    return
        finally:
            sel.close()
            for output in self.outputs.values():
                output.finish()


class Slot:
    """The kernel of one language: started lazily, one execution at a time."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.lock = threading.Lock()
        self.kernel: Kernel | None = None
        self._started_before = False
        self._state = threading.Lock()  # guards ``kernel`` for readers outside ``lock``
        self._shutdown_requested = False

    def describe(self) -> dict | None:
        with self._state:
            kernel = self.kernel
        if kernel is None or not kernel.alive:
            return None
        return {
            "language": self.language,
            "pid": kernel.pid,
            "execution_count": kernel.execution_count,
            "busy": self.lock.locked(),
            "started_at": kernel.started_at,
        }

    def interrupt(self) -> bool:
        with self._state:
            kernel = self.kernel
        if kernel is None or not self.lock.locked() or not kernel.alive:
            return False
        kernel.interrupt()
        return True

    def start(self, timeout: float) -> dict | None:
        """Start the kernel ahead of its first execution (a warm cell); no execution counted."""
        if not self.lock.acquire(timeout=timeout):
            return self.describe()  # busy: it is started already
        try:
            if self.kernel is None or not self.kernel.alive:
                if self.kernel is not None:
                    self.kernel.close()
                self._set_kernel(Kernel(self.language))
                self._started_before = True
        finally:
            self.lock.release()
        return self.describe()

    def shutdown(self) -> bool:
        """Kill the kernel; the next execution starts a fresh one."""
        with self._state:
            kernel = self.kernel
            if kernel is None:
                return False
            self._shutdown_requested = True
        if self.lock.acquire(blocking=False):
            try:
                with self._state:
                    self.kernel = None
                    self._shutdown_requested = False
                kernel.close()
            finally:
                self.lock.release()
        else:  # an execution is running: it reports the kernel's death and cleans up
            kernel.kill()
        return True

    def _set_kernel(self, kernel: Kernel | None) -> None:
        with self._state:
            self.kernel = kernel

    def execute(
        self,
        code: str,
        emit: Emit,
        timeout: float = DEFAULT_TIMEOUT_S,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        results_cap: int = DEFAULT_RESULTS_CAP,
        envs: dict[str, str] | None = None,
    ) -> dict:
        """Run ``code``; stream events through ``emit``; return the ``end`` event.

        The caller holds ``self.lock``. Events: ``{"type": "stdout"|"stderr", "text"}``
        (exact chunks as read, UTF-8 decoded incrementally; the agent's own notes are
        ``[cellbox: ...]`` lines on stderr), ``{"type": "display", "data", "metadata"}``.
        The ``end`` event:

        - ``exit_code``: 0; 1 for an exception (python, javascript); the status of the
          last command (bash; 130 when interrupted); 124 when killed after a timeout;
          the kernel's exit code (128+signal) when it died;
        - ``error``: ``{"name", "value", "traceback"}`` or null; the traceback is a
          string and was also written to stderr. Agent-made names: ``TimeoutError``,
          ``KernelDied``, ``KernelStartError``;
        - ``results``: MIME bundles (``{mime: value}``, binary types base64) of the
          displays and the trailing expression's value, in order;
        - ``execution_count``: of this kernel (1 after a restart);
        - ``timed_out``; ``state_lost`` (the kernel's earlier state is gone: it was
          killed or died during this execution, or had died since the last one);
          ``kernel_restarted`` (this ran on a new kernel replacing an earlier one);
        - ``truncated``: ``{"stdout", "stderr", "results"}`` bytes dropped by the caps;
        - ``duration_ms``.
        """
        started = time.monotonic()
        notes: list[str] = []
        state_lost = False
        kernel_restarted = False
        # Set when this execution found its kernel dead: the answer says so in ``error``.
        died_before: str | None = None
        end = end_event()

        def note(text: str) -> None:
            emit({"type": "stderr", "text": f"[cellbox: {text}]\n"})

        kernel = self.kernel
        if kernel is not None and not kernel.alive:
            with self._state:
                shutdown = self._shutdown_requested
                self._shutdown_requested = False
            if not shutdown:
                state_lost = True
                notes.append(
                    f"the {self.language} kernel had died since the last execution "
                    f"({_describe_exit(kernel.child.returncode)}); it was restarted and earlier state was lost"
                )
                died_before = notes[-1]
            kernel.close()
            self._set_kernel(None)
            kernel = None
        if kernel is None:
            try:
                kernel = Kernel(self.language)
            except KernelStartError as exc:
                end.update(
                    exit_code=1,
                    error={"name": "KernelStartError", "value": str(exc), "traceback": ""},
                    state_lost=state_lost,
                    duration_ms=round((time.monotonic() - started) * 1000, 3),
                )
                note(str(exc))
                return end
            kernel_restarted = self._started_before
            self._started_before = True
            self._set_kernel(kernel)
        for text in notes:
            note(text)

        kernel.execution_count += 1
        count = kernel.execution_count
        run = _Execution(kernel, emit, output_cap, results_cap)
        run.run(count, code, envs or {}, max(0.0, timeout - (time.monotonic() - started)))

        error = None
        exit_code = 0
        if run.done is not None:
            error = run.done.get("error") if isinstance(run.done.get("error"), dict) else None
            try:
                exit_code = int(run.done.get("exit_code") or 0)
            except (TypeError, ValueError):
                exit_code = 1
            if run.timed_out:
                message = f"execution timed out after {timeout:g} s and was interrupted; the kernel's state was kept"
                note(message)
                if error is None:
                    error = {"name": "TimeoutError", "value": message, "traceback": ""}
                    exit_code = exit_code or 1
        elif run.killed:
            state_lost = True
            message = (
                f"execution timed out after {timeout:g} s and did not stop when interrupted; "
                f"the {self.language} kernel was killed and its state was lost"
            )
            note(message)
            error = {"name": "TimeoutError", "value": message, "traceback": ""}
            exit_code = 124
        else:  # died
            state_lost = True
            with self._state:
                shutdown = self._shutdown_requested
                self._shutdown_requested = False
            returncode = kernel.child.wait(1)
            if shutdown:
                message = f"the {self.language} kernel was shut down by a request during the execution; its state was lost"
            else:
                message = (
                    f"the {self.language} kernel died during the execution ({_describe_exit(returncode)}); "
                    "its state was lost and it will be restarted on the next execution"
                )
            note(message)
            error = {"name": "KernelDied", "value": message, "traceback": ""}
            exit_code = _exit_code_of(returncode)
        if run.killed or run.died or not kernel.alive:
            kernel.close()
            self._set_kernel(None)
        if error is None and died_before is not None:
            # The code itself ran fine (exit code 0); the death is news all the same.
            error = {"name": "KernelDied", "value": died_before, "traceback": ""}

        end.update(
            exit_code=exit_code,
            error=error,
            results=run.results,
            execution_count=count,
            timed_out=run.timed_out,
            state_lost=state_lost,
            kernel_restarted=kernel_restarted,
            truncated={
                "stdout": run.outputs[kernel.out_r].dropped,
                "stderr": run.outputs[kernel.err_r].dropped,
                "results": run.results_dropped + kernel.ctl_dropped,
            },
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )
        kernel.ctl_dropped = 0
        return end


class KernelManager:
    """One ``Slot`` per language, for the life of the agent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, Slot] = {}

    def slot(self, language: str) -> Slot:
        with self._lock:
            slot = self._slots.get(language)
            if slot is None:
                slot = self._slots[language] = Slot(language)
            return slot

    def list(self) -> list[dict]:
        with self._lock:
            slots = list(self._slots.values())
        return [info for info in (slot.describe() for slot in slots) if info is not None]


manager = KernelManager()
