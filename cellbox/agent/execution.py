"""Code execution in persistent kernels, streamed as NDJSON.

``POST /exec`` body::

    {"code": str, "language": "python"|"javascript"|"bash" (aliases python3, py,
     js, node, sh; default python), "timeout": seconds (default 300),
     "output_cap": bytes per stream (default 10 MiB), "results_cap": bytes of rich
     results in total (default 32 MiB), "envs": {name: value}}

answers 200 ``application/x-ndjson``, chunked, one JSON object per line, each sent
as soon as it is produced: ``stdout``/``stderr`` (``text``: an exact chunk, not a
line), ``display`` (``data``, ``metadata``), and last ``end`` (see
``kernels.Slot.execute``). ``envs`` apply to that one execution: they are set
before it and the previous values restored after it.

A request waits its turn when the kernel is busy, at most its own timeout; then
409 ``kernel_busy``. If the client goes away mid-stream the execution still runs
to its end (its output is dropped) and the kernel is released.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import traceback
from typing import Iterator

from .http import HTTPError, Request, Response, Router, json_response
from .kernels import (
    DEFAULT_OUTPUT_CAP,
    DEFAULT_RESULTS_CAP,
    DEFAULT_TIMEOUT_S,
    KernelStartError,
    ENV_NAME,
    end_event,
    LANGUAGE_ALIASES,
    interpreter,
    manager,
)

router = Router()

_COALESCE_BYTES = 256 * 1024
_INTERPRETER_NAMES = {"python": "python3", "javascript": "node", "bash": "bash"}


class _EventStream:
    """Events from the execution thread to the response, one NDJSON line each."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._detached = False

    def emit(self, event: dict) -> None:
        if not self._detached:
            self._queue.put(json.dumps(event).encode() + b"\n")

    def close(self) -> None:
        self._queue.put(None)

    def detach(self) -> None:
        """The client is gone (or the response is over): drop everything from now on."""
        self._detached = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            chunks, size = [item], len(item)
            while size < _COALESCE_BYTES:  # send what is already waiting in one chunk
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    yield b"".join(chunks)
                    return
                chunks.append(item)
                size += len(item)
            yield b"".join(chunks)


def _language(body: dict) -> str:
    raw = body.get("language", "python")
    if raw is None:
        raw = "python"
    if not isinstance(raw, str) or raw.lower() not in LANGUAGE_ALIASES:
        raise HTTPError(
            400,
            f"'language' must be one of {', '.join(sorted(LANGUAGE_ALIASES))}, not {raw!r}",
            "invalid_request",
        )
    return LANGUAGE_ALIASES[raw.lower()]


def _positive(body: dict, name: str, default: float, integer: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or not math.isfinite(value):
        kind = "a positive integer number of bytes" if integer else "a positive number of seconds"
        raise HTTPError(400, f"'{name}' must be {kind}", "invalid_request")
    return int(value) if integer else float(value)


def _envs(body: dict) -> dict[str, str]:
    envs = body.get("envs")
    if envs is None:
        return {}
    if not isinstance(envs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in envs.items()):
        raise HTTPError(400, "'envs' must map strings to strings", "invalid_request")
    for key, value in envs.items():
        if not ENV_NAME.match(key):
            raise HTTPError(400, f"'envs' has an invalid variable name {key!r}", "invalid_request")
        if "\x00" in value:
            raise HTTPError(400, f"'envs' value of {key} contains a NUL byte", "invalid_request")
    return envs


@router.route("POST", "/exec")
def execute(request: Request) -> Response:
    body = request.json()
    code = body.get("code")
    if not isinstance(code, str):
        raise HTTPError(400, "'code' must be a string", "invalid_request")
    language = _language(body)
    timeout = _positive(body, "timeout", DEFAULT_TIMEOUT_S)
    output_cap = int(_positive(body, "output_cap", DEFAULT_OUTPUT_CAP, integer=True))
    results_cap = int(_positive(body, "results_cap", DEFAULT_RESULTS_CAP, integer=True))
    envs = _envs(body)
    if interpreter(language) is None:
        raise HTTPError(
            400,
            f"{language} is not available in this cell: {_INTERPRETER_NAMES[language]} was not found",
            "invalid_request",
        )

    slot = manager.slot(language)
    if not slot.lock.acquire(timeout=timeout):
        raise HTTPError(
            409,
            f"the {language} kernel is busy with another execution (waited {timeout:g} s); "
            "try again later or interrupt it",
            "kernel_busy",
        )
    stream = _EventStream()

    def work() -> None:
        released = False
        try:
            try:
                end = slot.execute(
                    code, stream.emit, timeout=timeout, output_cap=output_cap, results_cap=results_cap, envs=envs
                )
            except Exception as exc:  # a bug here must still end the stream and free the kernel
                traceback.print_exc()
                end = end_event(
                    exit_code=1,
                    error={"name": "AgentError", "value": f"{type(exc).__name__}: {exc}", "traceback": ""},
                )
            # Free the kernel before the client sees ``end``, so a next request needs no wait.
            slot.lock.release()
            released = True
            stream.emit(end)
        finally:
            if not released:
                slot.lock.release()
            stream.close()

    try:
        threading.Thread(target=work, name=f"exec-{language}", daemon=True).start()
    except BaseException:
        slot.lock.release()
        raise
    return Response(body=stream, content_type="application/x-ndjson", on_close=stream.detach)


@router.route("POST", "/exec/interrupt")
def interrupt(request: Request) -> Response:
    language = _language(request.json())
    return json_response({"language": language, "interrupted": manager.slot(language).interrupt()})


@router.route("GET", "/kernels")
def list_kernels(request: Request) -> Response:
    return json_response({"kernels": manager.list()})


@router.route("POST", "/kernels/{language}")
def start_kernel(request: Request) -> Response:
    """Start a kernel now, so that the first execution does not wait for it."""
    language = _language({"language": request.params["language"]})
    try:
        kernel = manager.slot(language).start(timeout=DEFAULT_TIMEOUT_S)
    except KernelStartError as exc:
        raise HTTPError(500, f"the {language} kernel did not start: {exc}", "kernel_start_failed") from exc
    return json_response({"language": language, "kernel": kernel})


@router.route("DELETE", "/kernels/{language}")
def shutdown_kernel(request: Request) -> Response:
    language = _language({"language": request.params["language"]})
    return json_response({"language": language, "shut_down": manager.slot(language).shutdown()})
