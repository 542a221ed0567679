"""Where snapshot archives live, and saving a Python namespace across an eviction.

The namespace is saved by running code in the cell's own Python kernel (with dill
from the agent's read-only support directory), into the cell's home, so it travels
inside the snapshot archive like any other file.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from .agent import AgentClient

NAMESPACE_FILE = "/home/user/.cellbox/namespace.dill"
VENDOR = "/opt/cellbox/vendor"
# Names never saved: the kernel's own and IPython-style history.
_SKIP = "('display', 'In', 'Out', 'exit', 'quit', 'get_ipython')"

_SAVE = f"""
import sys as _cb_sys, types as _cb_types, os as _cb_os, json as _cb_json
_cb_sys.path.insert(0, {VENDOR!r})
try:
    import dill as _cb_dill
finally:
    _cb_sys.path.remove({VENDOR!r})
_cb_vars, _cb_modules, _cb_skipped = {{}}, {{}}, []
for _cb_name, _cb_value in list(globals().items()):
    if _cb_name.startswith('_') or _cb_name in {_SKIP}:
        continue
    if isinstance(_cb_value, _cb_types.ModuleType):
        _cb_modules[_cb_name] = _cb_value.__name__
        continue
    try:
        _cb_dill.dumps(_cb_value)
        _cb_vars[_cb_name] = _cb_value
    except Exception:
        _cb_skipped.append(_cb_name)
_cb_os.makedirs(_cb_os.path.dirname({NAMESPACE_FILE!r}), exist_ok=True)
with open({NAMESPACE_FILE!r}, 'wb') as _cb_file:
    _cb_dill.dump({{'vars': _cb_vars, 'modules': _cb_modules}}, _cb_file)
print(_cb_json.dumps({{'saved': sorted(_cb_vars), 'modules': sorted(_cb_modules), 'skipped': sorted(_cb_skipped)}}))
for _cb_name in [n for n in globals() if n.startswith('_cb_')]:
    del globals()[_cb_name]
"""

_RESTORE = f"""
import sys as _cb_sys, importlib as _cb_importlib, json as _cb_json, os as _cb_os
_cb_sys.path.insert(0, {VENDOR!r})
try:
    import dill as _cb_dill
finally:
    _cb_sys.path.remove({VENDOR!r})
with open({NAMESPACE_FILE!r}, 'rb') as _cb_file:
    _cb_state = _cb_dill.load(_cb_file)
_cb_failed = []
for _cb_name, _cb_module in _cb_state['modules'].items():
    try:
        globals()[_cb_name] = _cb_importlib.import_module(_cb_module)
    except Exception:
        _cb_failed.append(_cb_name)
globals().update(_cb_state['vars'])
_cb_os.remove({NAMESPACE_FILE!r})
print(_cb_json.dumps({{'restored': sorted(_cb_state['vars']), 'modules': sorted(set(_cb_state['modules']) - set(_cb_failed)), 'failed': _cb_failed}}))
for _cb_name in [n for n in globals() if n.startswith('_cb_')]:
    del globals()[_cb_name]
"""


def new_snapshot_id() -> str:
    return "snap_" + secrets.token_hex(8)


def archive_path(data_dir: Path, cell_id: str, snapshot_id: str) -> Path:
    return data_dir / "snapshots" / cell_id / f"{snapshot_id}.tar"


async def _run_python(agent: AgentClient, code: str) -> dict[str, Any] | None:
    """Run internal code in the python kernel; its last stdout line is JSON."""
    stdout, end = [], None
    async with agent.stream_lines("POST", "/exec", json={"code": code, "language": "python", "timeout": 60}) as lines:
        async for event in lines:
            if event.get("type") == "stdout":
                stdout.append(event["text"])
            elif event.get("type") == "end":
                end = event
    if end is None or end.get("exit_code") != 0:
        return None
    try:
        return json.loads("".join(stdout).strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


async def save_namespace(agent: AgentClient) -> dict[str, Any] | None:
    """Save the python kernel's picklable variables, if a python kernel is running."""
    kernels = (await agent.request("GET", "/kernels"))["kernels"]
    if not any(k["language"] == "python" and k.get("pid") for k in kernels):
        return None
    return await _run_python(agent, _SAVE)


async def restore_namespace(agent: AgentClient) -> dict[str, Any] | None:
    return await _run_python(agent, _RESTORE)
