"""Code execution: ``/exec`` (blocking), ``/exec/stream`` (SSE), and receipts."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..cells.execution import Execution, resolve_language, sse_events
from ..cells.manager import LiveCell
from ..errors import bad_request
from .cells import manager
from .deps import tenant
from .schemas import ErrorBody, ExecRequest, ExecResult, PublicKey, Receipt
from .streams import sse_response

router = APIRouter(tags=["execution"], responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})


async def _start(request: Request, cell_id: str, body: ExecRequest, tenant_id: str, streaming: bool) -> Execution:
    cells = manager(request)
    config = request.app.state.config
    timeout = body.timeout or config.exec_timeout_s
    if timeout > config.max_exec_timeout_s:
        raise bad_request(f"timeout {timeout:g} s is above this server's maximum of {config.max_exec_timeout_s:g} s")
    live = await cells.running(tenant_id, cell_id)
    language = resolve_language(body.language, await cells.runtime_of(live))
    envs = {**live.record.envs, **(body.envs or {})}
    if not streaming:
        twin = await _abandoned_twin(live, body.code, language, envs)
        if twin is not None:
            twin.requester = request
            return twin
    execution = Execution(
        cells, request.app.state.notary, live,
        code=body.code, language=language, timeout=timeout, envs=envs, streaming=streaming,
    )
    if not streaming:
        execution.requester = request
        live.blocking.add(execution)
        execution.task.add_done_callback(lambda _: live.blocking.discard(execution))
    return execution


async def _abandoned_twin(live: LiveCell, code: str, language: str, envs: dict[str, str]) -> Execution | None:
    """The same code still running for a caller that has gone: that caller's retry.

    The published client re-sends a blocking request when its own timeout passes. Such
    a retry waits for the first run's answer instead of running the code a second time.
    """
    for execution in list(live.blocking):
        if (execution.code, execution.language, execution.envs) != (code, language, envs):
            continue
        requester = execution.requester
        if not execution.task.done() and requester is not None and await requester.is_disconnected():
            return execution
    return None


@router.post("/v1/cells/{cell_id}/exec", response_model=ExecResult)
async def execute(request: Request, cell_id: str, body: ExecRequest, tenant_id: str = Depends(tenant)) -> JSONResponse:
    """Run code and answer when it ends. An exception in the code is not an API error:
    the answer is 200 with a non-zero ``exit_code`` and the ``error``."""
    execution = await _start(request, cell_id, body, tenant_id, streaming=False)
    # Built by us to the ExecResult shape; answered as is, without a second validation,
    # because this is the hottest path of the API.
    return JSONResponse(await execution.answer())


@router.post(
    "/v1/cells/{cell_id}/exec/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE: stdout, stderr, display, error, result (last)."}},
)
async def execute_stream(request: Request, cell_id: str, body: ExecRequest, tenant_id: str = Depends(tenant)) -> StreamingResponse:
    """Stream output as it is produced: one event per output line, ``result`` last."""
    execution = await _start(request, cell_id, body, tenant_id, streaming=True)
    return sse_response(sse_events(execution))


@router.get("/v1/receipts/public-key", response_model=PublicKey)
async def public_key(request: Request) -> dict:
    """The Ed25519 key that signs every receipt; open, so anyone can verify."""
    return request.app.state.receipt_public_key


@router.get("/v1/cells/{cell_id}/receipts", response_model=list[Receipt])
async def list_receipts(
    request: Request, cell_id: str,
    after: int = Query(-1, ge=-1, le=2**62, description="Only receipts with a larger sequence."),
    limit: int = Query(1000, ge=1, le=1000),
    tenant_id: str = Depends(tenant),
) -> list[dict]:
    """A cell's receipt chain, in order (also for killed cells within retention)."""
    await manager(request).get(tenant_id, cell_id)
    notary = request.app.state.notary
    await notary.flush()
    return await request.app.state.store.list_receipts(cell_id, after, limit)
