"""Pure logic of the cell manager: state machine, timers, list cursors."""

from __future__ import annotations

import asyncio
import time

import pytest

from cellbox.cells.state import CellState, IllegalTransition, check_transition
from cellbox.cells.timers import InactivityTimers
from cellbox.store import decode_cursor, encode_cursor


def test_killed_is_final():
    for state in CellState:
        with pytest.raises(IllegalTransition):
            check_transition("killed", state)


def test_running_can_pause_and_be_killed_but_not_go_back_to_creating():
    check_transition("running", CellState.PAUSED)
    check_transition("running", CellState.KILLED)
    with pytest.raises(IllegalTransition):
        check_transition("running", CellState.CREATING)


def test_cursor_round_trips_and_refuses_garbage():
    assert decode_cursor(encode_cursor(1234.5678, "cell-abc")) == (1234.5678, "cell-abc")
    with pytest.raises(ValueError):
        decode_cursor("bm90IGEgY3Vyc29y")


def test_timer_fires_once_the_deadline_passes():
    async def scenario():
        fired = []
        deadline = {"c": time.time() + 0.05}

        async def expire(cell_id):
            fired.append(cell_id)

        timers = InactivityTimers(deadline.get, expire)
        timers.arm("c")
        await asyncio.sleep(0.2)
        return fired

    assert asyncio.run(scenario()) == ["c"]


def test_activity_moves_the_deadline_without_rearming():
    async def scenario():
        fired = []
        deadline = {"c": time.time() + 0.1}

        async def expire(cell_id):
            fired.append(time.time())

        timers = InactivityTimers(deadline.get, expire)
        timers.arm("c")
        await asyncio.sleep(0.05)
        deadline["c"] = time.time() + 0.2  # activity: only the number moves
        start = time.time()
        await asyncio.sleep(0.1)
        assert fired == []
        await asyncio.sleep(0.3)
        return fired, start

    fired, start = asyncio.run(scenario())
    assert len(fired) == 1 and fired[0] - start >= 0.15


def test_a_cell_without_a_deadline_never_fires():
    async def scenario():
        fired = []

        async def expire(cell_id):
            fired.append(cell_id)

        deadline = {"c": time.time() + 0.05}
        timers = InactivityTimers(deadline.get, expire)
        timers.arm("c")
        deadline["c"] = None
        await asyncio.sleep(0.15)
        return fired

    assert asyncio.run(scenario()) == []
