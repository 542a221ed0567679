"""Shell commands in a cell: ``POST /v1/cells/{id}/cmd``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..errors import bad_request
from .cells import manager
from .deps import tenant
from .schemas import CommandRequest, CommandResult, ErrorBody, ProcessInfo

router = APIRouter(prefix="/v1/cells", tags=["commands"], responses={404: {"model": ErrorBody}})

# Time the agent may take beyond the command's own timeout to answer.
_ANSWER_MARGIN_S = 15


@router.post("/{cell_id}/cmd", response_model=CommandResult | ProcessInfo)
async def run_command(
    request: Request, cell_id: str, body: CommandRequest, tenant_id: str = Depends(tenant)
) -> CommandResult | dict:
    """Foreground: run to the end and answer its output. Background: answer
    ``command_id`` at once; follow it under ``/processes/{command_id}``."""
    cells = manager(request)
    config = request.app.state.config
    timeout = body.timeout or (None if body.background else config.command_timeout_s)
    if timeout is not None and timeout > config.max_command_timeout_s:
        raise bad_request(f"timeout {timeout:g} s is above this server's maximum of {config.max_command_timeout_s:g} s")
    live = await cells.running(tenant_id, cell_id)
    payload = {
        "command": body.command,
        "cwd": body.cwd,
        "envs": {**live.record.envs, **(body.envs or {})},
        "timeout": timeout,
    }
    cells.meters.usage.add(tenant_id, commands=1)
    if body.background:
        cells.touch(live)
        return await live.agent.request("POST", "/processes", json=payload)
    async with cells.activity(live):
        result = await live.agent.request("POST", "/commands/run", json=payload, timeout=timeout + _ANSWER_MARGIN_S)
    return CommandResult(**result)
