"""The python kernel: a long-lived interpreter holding the user's namespace.

Run as a script (``python3 python_kernel.py``) by the agent, under the cell's own
interpreter, standard library only. It is not imported by the agent.

Wiring (set up by the agent):
- fd 1 and fd 2 are pipes the agent reads, so output of subprocesses and C code
  is captured, not only ``print``; they are written unbuffered;
- ``CELLBOX_KERNEL_FDS="IN,OUT"`` names the control channel: JSON lines, one
  request ``{"code", "execution_count", "envs"}`` in; events out:
  ``{"type": "ready"}`` once, then per request any number of
  ``{"type": "display", "data", "metadata"}`` (each answered by an ``{"type": "ack"}``
  line once the agent has drained the output written before it), at most one
  ``{"type": "result", "data", "metadata"}`` (the trailing expression) and a final
  ``{"type": "done", "id", "exit_code", "error"}``, sent after stdout and stderr
  are flushed so the agent can drain the pipes and keep output in order.

SIGINT is ignored between executions and raises ``KeyboardInterrupt`` during one
(unless the user installed their own handler, which is kept).
"""

from __future__ import annotations

import ast
import base64
import builtins
import io
import json
import linecache
import os
import signal
import sys
import traceback
import types
import warnings

_KERNEL_FILE = __file__
_write = os.write
_read = os.read
_dumps = json.dumps
_loads = json.loads

_REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
_BINARY_MIMES = {"image/png", "image/jpeg", "image/gif", "application/pdf"}


class _Kernel:
    def __init__(self, ctl_in: int, ctl_out: int) -> None:
        self.ctl_in = ctl_in
        self.ctl_out = ctl_out
        self.inbuf = bytearray()
        self.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        self.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        self.user_sigint = signal.default_int_handler
        self.loop = None
        module = types.ModuleType("__main__")
        module.__builtins__ = builtins  # type: ignore[attr-defined]
        self.module = module
        self.ns = module.__dict__

    # -- control channel ---------------------------------------------------

    def send(self, message: dict) -> None:
        data = (_dumps(message, default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[_write(self.ctl_out, view):]

    def read_message(self) -> dict | None:
        while True:
            index = self.inbuf.find(b"\n")
            if index >= 0:
                line = bytes(self.inbuf[:index])
                del self.inbuf[: index + 1]
                return _loads(line)
            chunk = _read(self.ctl_in, 1 << 16)
            if not chunk:
                return None
            self.inbuf += chunk

    def read_request(self) -> dict | None:
        while True:
            message = self.read_message()
            if message is None or message.get("type") != "ack":  # a late ack is skipped
                return message

    def send_display(self, message: dict) -> None:
        """Send a display and wait until the agent has taken the output printed before it."""
        self.flush()
        self.send(message)
        while True:
            reply = self.read_message()
            if reply is None:
                os._exit(0)  # the agent is gone
            if reply.get("type") == "ack":
                return

    def flush(self) -> None:
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            try:
                stream.flush()
            except BaseException:
                pass

    # -- rich output -------------------------------------------------------

    def display(self, *objs, raw: bool = False, metadata: dict | None = None, **_ignored) -> None:
        """Show objects as rich output (IPython's ``display``); ``raw=True`` takes mime dicts."""
        for obj in objs:
            if raw and isinstance(obj, dict):
                data, md = dict(obj), dict(metadata or {})
            else:
                data, md = self.bundle(obj)
                if metadata:
                    md.update(metadata)
            self.send_display({"type": "display", "data": data, "metadata": md})

    def _warn(self, what: str, exc: BaseException) -> None:
        try:
            self.stderr.write(f"[cellbox: {what} failed: {type(exc).__name__}: {exc}]\n")
        except BaseException:
            pass

    def bundle(self, obj) -> tuple[dict, dict]:
        data: dict = {}
        md: dict = {}
        if not isinstance(obj, type):  # a class's _repr_*_ are unbound functions
            method = _method(obj, "_repr_mimebundle_")
            if method is not None:
                try:
                    try:
                        got = method(include=None, exclude=None)
                    except TypeError:
                        got = method()
                    if isinstance(got, tuple) and len(got) == 2:
                        got, extra = got
                        if isinstance(extra, dict):
                            md.update(extra)
                    if isinstance(got, dict):
                        data.update(got)
                except Exception as exc:
                    self._warn("_repr_mimebundle_", exc)
            for name, mime in _REPR_METHODS:
                if mime in data:
                    continue
                method = _method(obj, name)
                if method is None:
                    continue
                try:
                    value = method()
                except Exception as exc:
                    self._warn(name, exc)
                    continue
                if isinstance(value, tuple) and len(value) == 2:
                    value, extra = value
                    if extra:
                        md[mime] = extra
                if value is not None:
                    data[mime] = value
        for mime, value in list(data.items()):
            if isinstance(value, (bytes, bytearray, memoryview)):
                if mime in _BINARY_MIMES or not mime.startswith("text/"):
                    data[mime] = base64.b64encode(bytes(value)).decode("ascii")
                else:
                    data[mime] = bytes(value).decode("utf-8", "replace")
            elif mime == "application/json" or mime.endswith("+json"):
                try:
                    _dumps(value)
                except (TypeError, ValueError) as exc:
                    self._warn(f"{mime} output", exc)
                    del data[mime]
            elif not isinstance(value, str):
                data[mime] = str(value)
        if "text/plain" not in data:
            try:
                data["text/plain"] = repr(obj)
            except Exception as exc:
                data["text/plain"] = f"<{type(obj).__name__} object (repr failed: {type(exc).__name__}: {exc})>"
        return data, md

    def flush_figures(self) -> None:
        """Every open matplotlib figure becomes a PNG display, then it is closed."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            numbers = list(plt.get_fignums())
        except Exception:
            return
        for number in numbers:
            try:
                figure = plt.figure(number)
                buf = io.BytesIO()
                figure.savefig(buf, format="png", bbox_inches="tight")
                png = base64.b64encode(buf.getvalue()).decode("ascii")
                self.display({"image/png": png, "text/plain": repr(figure)}, raw=True)
            except Exception as exc:
                self._warn("saving a matplotlib figure", exc)
        try:
            plt.close("all")
        except Exception:
            pass

    def patch_pyplot(self) -> None:
        """``plt.show()`` shows the open figures inline, as in a notebook."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None or getattr(plt.show, "_cellbox", False):
            return

        def show(*args, **kwargs):
            self.flush_figures()

        show._cellbox = True  # type: ignore[attr-defined]
        try:
            plt.show = show
        except Exception:
            pass

    # -- execution ---------------------------------------------------------

    def _eval(self, code):
        value = eval(code, self.ns)
        if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
            if self.loop is None:
                import asyncio

                self.loop = asyncio.new_event_loop()
                asyncio.set_event_loop(self.loop)
            value = self.loop.run_until_complete(value)
        return value

    def run_cell(self, code: str, count: int) -> None:
        filename = f"<cell-{count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST | flags, dont_inherit=True)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
            last = ast.Expression(tree.body.pop().value)
        self._eval(compile(tree, filename, "exec", flags, dont_inherit=True))
        if last is not None:
            value = self._eval(compile(last, filename, "eval", flags, dont_inherit=True))
            if value is not None:
                self.ns["_"] = value
                data, md = self.bundle(value)
                self.flush()
                self.send({"type": "result", "data": data, "metadata": md})

    def error_of(self, exc: BaseException) -> dict:
        tb = exc.__traceback__
        # Drop the kernel's own frames (and asyncio's, for top-level await) above the cell.
        frames = []
        cursor = tb
        while cursor is not None:
            frames.append(cursor)
            cursor = cursor.tb_next
        start = None
        for i, frame in enumerate(frames):
            if frame.tb_frame.f_code.co_filename.startswith("<cell-"):
                start = i
                break
        if start is None:
            start = 0
            while start < len(frames) and frames[start].tb_frame.f_code.co_filename == _KERNEL_FILE:
                start += 1
        tb = frames[start] if start < len(frames) else None
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except Exception:
            text = f"{type(exc).__name__}: {exc}\n"
        try:
            value = str(exc)
        except Exception:
            value = "<str() failed>"
        return {"name": type(exc).__name__, "value": value, "traceback": text}

    def execute(self, request: dict) -> dict:
        """Run one request; never raises (KeyboardInterrupt aside, see main)."""
        code = request.get("code", "")
        count = int(request.get("execution_count") or 0)
        envs = request.get("envs") or {}
        saved = {key: os.environ.get(key) for key in envs}
        error = None
        exit_code = 0
        try:
            os.environ.update(envs)
            self.patch_pyplot()
            try:
                self.run_cell(code, count)
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    exit_code = exc.code if isinstance(exc.code, int) else 1
                    if not isinstance(exc.code, int):
                        self.stderr.write(f"{exc.code}\n")
                    error = {"name": "SystemExit", "value": str(exc.code), "traceback": ""}
            except BaseException as exc:  # KeyboardInterrupt included
                error = self.error_of(exc)
                exit_code = 1
                self.flush()
                self.stderr.write(error["traceback"])
            self.patch_pyplot()
            self.flush_figures()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return {"exit_code": exit_code, "error": error}

    def serve(self) -> None:
        self.send({"type": "ready", "pid": os.getpid()})
        while True:
            _ignore_sigint()
            try:
                request = self.read_request()
            except KeyboardInterrupt:
                continue
            if request is None:
                return
            count = request.get("execution_count")
            reply = None
            try:
                signal.signal(signal.SIGINT, self.user_sigint)
                reply = self.execute(request)
            except KeyboardInterrupt as exc:  # landed in the kernel's own code
                if reply is None:
                    reply = {"exit_code": 1, "error": self.error_of(exc)}
            finally:
                # Keep whatever handler the user installed for their next execution.
                handler = _ignore_sigint()
                if handler is not None:
                    self.user_sigint = handler
            if reply is None:
                reply = {"exit_code": 1, "error": {"name": "KeyboardInterrupt", "value": "", "traceback": ""}}
            self.flush()
            self.send({"type": "done", "id": count, **reply})


def _method(obj, name):
    try:
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _ignore_sigint():
    """Ignore SIGINT and return the handler that was installed (retrying if one lands now)."""
    previous = None
    while True:
        try:
            previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return previous
        except KeyboardInterrupt:
            continue


def main() -> None:
    ctl_in, ctl_out = (int(fd) for fd in os.environ.pop("CELLBOX_KERNEL_FDS").split(","))
    os.set_inheritable(ctl_in, False)
    os.set_inheritable(ctl_out, False)
    kernel = _Kernel(ctl_in, ctl_out)
    sys.stdout = sys.__stdout__ = kernel.stdout
    sys.stderr = sys.__stderr__ = kernel.stderr
    # Imports resolve from the working directory, as in a notebook, not from here.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(_KERNEL_FILE)):
        sys.path[0] = ""
    sys.modules["__main__"] = kernel.module
    builtins.display = kernel.display  # type: ignore[attr-defined]
    sys.argv = [""]
    warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
    warnings.filterwarnings("ignore", message=".*Matplotlib is currently using agg.*")
    kernel.serve()


if __name__ == "__main__":
    main()
