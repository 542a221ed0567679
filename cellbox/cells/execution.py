"""Running code in a cell's kernels, as a task of its own.

An execution is driven by a task that reads the agent's NDJSON events to the end,
whoever is listening: a client that goes away mid-stream does not stop the
kernel, and the execution is still counted and receipted. Listeners read the
task's queue; the blocking API waits for the task's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from ..errors import ApiError, bad_request
from ..receipts import Notary
from .manager import CellManager, LiveCell

log = logging.getLogger("cellbox.exec")

LANGUAGES = {
    "python": "python", "python3": "python", "py": "python",
    "javascript": "javascript", "js": "javascript", "node": "javascript",
    "bash": "bash", "sh": "bash",
}
TEMPLATE_LANGUAGES = {"python3": "python", "javascript": "javascript"}
# A partial output line is sent after this long without its line break.
PARTIAL_LINE_FLUSH_S = 0.05
SSE_HEARTBEAT_S = 5.0


def resolve_language(requested: str | None, runtime: str) -> str:
    """The kernel for an execution: the one asked for, else the template runtime's."""
    if requested is None:
        return TEMPLATE_LANGUAGES.get(runtime, "python")
    language = LANGUAGES.get(requested.lower())
    if language is None:
        raise bad_request(f"unknown language {requested!r}; use one of {', '.join(LANGUAGES)}")
    return language


class Execution:
    def __init__(
        self, manager: CellManager, notary: Notary, live: LiveCell, *,
        code: str, language: str, timeout: float, envs: dict[str, str], streaming: bool = False,
    ) -> None:
        self.manager = manager
        self.notary = notary
        self.live = live
        self.code = code
        self.language = language
        self.timeout = timeout
        self.envs = envs
        self.started = time.monotonic()
        # The request waiting for a blocking answer (a retry of it may take its place).
        self.requester: Any = None
        self.streaming = streaming
        # Bounded by the agent's output caps; filled only when someone streams.
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())
        # Keep a reference: a listener that leaves must not let the task be collected.
        manager.background_tasks.add(self.task)
        self.task.add_done_callback(manager.background_tasks.discard)

    async def answer(self) -> dict[str, Any]:
        return await asyncio.shield(self.task)

    async def _run(self) -> dict[str, Any]:
        agent = self.live.agent
        stdout: list[str] = []
        stderr: list[str] = []
        end: dict[str, Any] | None = None
        try:
            async with self.manager.activity(self.live):
                if not self.live.record.persistent:
                    await agent.request("DELETE", f"/kernels/{self.language}")
                payload = {
                    "code": self.code, "language": self.language, "timeout": self.timeout, "envs": self.envs,
                    "output_cap": self.manager.config.exec_output_cap,
                }
                async with agent.stream_lines("POST", "/exec", json=payload) as lines:
                    received = 0
                    # The agent caps each stream; a hostile one may not. Twice the caps,
                    # plus room for markers, is the most an honest agent sends.
                    most = 2 * self.manager.config.exec_output_cap + 64 * 1024
                    async for event in lines:
                        kind = event.get("type")
                        if kind in ("stdout", "stderr"):
                            received += len(event["text"])
                            if received > most:
                                raise ApiError(502, "the cell's agent sent more output than the caps allow", "agent_error")
                        if kind == "stdout":
                            stdout.append(event["text"])
                        elif kind == "stderr":
                            stderr.append(event["text"])
                        elif kind == "end":
                            end = event
                            continue
                        if self.streaming:
                            self.events.put_nowait(event)
            if end is None:
                raise ApiError(502, "the cell's agent ended the execution without a result", "agent_error")
        except ApiError as exc:
            self.events.put_nowait({"type": "failed", "status": exc.status, "error": exc.error, "error_type": exc.error_type})
            raise
        answer = await self._finish("".join(stdout), "".join(stderr), end)
        self.events.put_nowait({"type": "end", "answer": answer})
        return answer

    async def _finish(self, stdout: str, stderr: str, end: dict[str, Any]) -> dict[str, Any]:
        record = self.live.record
        record.executions += 1
        outcome = {
            "stdout": stdout,
            "stderr": stderr,
            "exit_code": end["exit_code"],
            "results": end.get("results", []),
            "error": end.get("error"),
        }
        receipt = await self.notary.issue(
            tenant_id=record.tenant_id, cell_id=record.id, template=record.template,
            language=self.language, code=self.code, outcome=outcome,
        )
        latency_ms = round((time.monotonic() - self.started) * 1000, 3)
        self.manager.meters.execution(record.tenant_id, self.language, latency_ms)
        return {
            **outcome,
            "latency_ms": latency_ms,
            "language": self.language,
            "execution_count": end.get("execution_count"),
            "timed_out": end.get("timed_out", False),
            "state_lost": end.get("state_lost", False),
            "kernel_restarted": end.get("kernel_restarted", False),
            "truncated": end.get("truncated", {}),
            "receipt": receipt,
        }


class LineFramer:
    """Cuts a stream's text into lines; a partial line waits for its end or a flush."""

    def __init__(self) -> None:
        self.partial = ""

    def feed(self, text: str) -> list[str]:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        return lines

    def flush(self) -> str | None:
        text, self.partial = self.partial, ""
        return text or None


async def sse_events(execution: Execution) -> AsyncIterator[dict[str, Any] | None]:
    """The contract's stream events, one output line each; None asks for a heartbeat."""
    framers = {"stdout": LineFramer(), "stderr": LineFramer()}
    while True:
        waiting = any(f.partial for f in framers.values())
        try:
            event = await asyncio.wait_for(
                execution.events.get(), PARTIAL_LINE_FLUSH_S if waiting else SSE_HEARTBEAT_S
            )
        except asyncio.TimeoutError:
            if not waiting:
                yield None
            for name, framer in framers.items():
                text = framer.flush()
                if text is not None:
                    yield {"type": name, "text": text}
            continue
        kind = event["type"]
        if kind in framers:
            for line in framers[kind].feed(event["text"]):
                yield {"type": kind, "text": line}
        elif kind == "display":
            yield {"type": "display", "data": event.get("data", {}), "metadata": event.get("metadata", {})}
        elif kind == "end":
            for name, framer in framers.items():
                text = framer.flush()
                if text is not None:
                    yield {"type": name, "text": text}
            answer = event["answer"]
            if answer["error"]:
                error = answer["error"]
                yield {"type": "error", "message": f"{error.get('name')}: {error.get('value')}", **error}
            yield {"type": "result", **answer}
            return
        elif kind == "failed":
            yield {"type": "error", "message": event["error"], "error_type": event["error_type"]}
            yield {"type": "result", "exit_code": -1, "latency_ms": 0.0, "error": {"name": event["error_type"], "value": event["error"], "traceback": ""}}
            return
