"""The cell state machine: which changes are allowed, in one place."""

from __future__ import annotations

from enum import Enum


class CellState(str, Enum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"


_ALLOWED = {
    CellState.CREATING: {CellState.RUNNING, CellState.KILLED},
    CellState.RUNNING: {CellState.PAUSED, CellState.KILLED},
    CellState.PAUSED: {CellState.RUNNING, CellState.KILLED},
    CellState.KILLED: set(),
}

LIVE_STATES = (CellState.CREATING.value, CellState.RUNNING.value, CellState.PAUSED.value)


class IllegalTransition(Exception):
    pass


def check_transition(current: str, new: CellState) -> None:
    if new not in _ALLOWED[CellState(current)]:
        raise IllegalTransition(f"a {current} cell cannot become {new.value}")
