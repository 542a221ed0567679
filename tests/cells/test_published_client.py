"""The published client (synapserun) against our server, unchanged."""

from __future__ import annotations

import pytest
from synapse.cell import Cell, CellError, SandboxQuery, SandboxState


@pytest.fixture
def client_cell(server):
    cell = Cell(api_url=server.url, api_key=server.key, metadata={"via": "synapserun"}, envs={"K": "v"}, timeout_ms=300_000)
    yield cell
    cell.kill()


def test_cell_creates_and_reports_info(client_cell):
    info = client_cell.get_info()
    assert info.sandbox_id == client_cell.cell_id
    assert info.state is SandboxState.RUNNING
    assert info.metadata == {"via": "synapserun"}
    assert info.end_at > info.started_at
    assert client_cell.is_running()


def test_command_runs_in_the_cell(client_cell):
    result = client_cell.command("echo hello from $K; pwd")
    assert result.ok and result.stdout == "hello from v\n/data\n"
    failed = client_cell.command("exit 3")
    assert failed.exit_code == 3 and not failed.ok


def test_timeout_refresh_metadata_and_envs(client_cell):
    client_cell.set_timeout(120)
    client_cell.refresh()
    assert client_cell.patch_metadata({"stage": "two"}) == {"via": "synapserun", "stage": "two"}
    assert client_cell.get_envs() == {"K": "v"}
    assert client_cell.patch_envs({"L": "w"}) == {"K": "v", "L": "w"}
    assert client_cell.command("echo $L").stdout == "w\n"


def test_list_pages_and_filters(server, client_cell):
    other = Cell(api_url=server.url, api_key=server.key, metadata={"via": "synapserun", "n": "2"})
    try:
        paginator = Cell.list(query=SandboxQuery(metadata={"via": "synapserun"}), limit=1, api_url=server.url, api_key=server.key)
        ids = []
        while paginator.has_next:
            ids += [i.sandbox_id for i in paginator.next_items()]
        assert {client_cell.cell_id, other.cell_id} <= set(ids)
        narrowed = Cell.list(query=SandboxQuery(metadata={"n": "2"}), api_url=server.url, api_key=server.key)
        assert [i.sandbox_id for i in narrowed.next_items()] == [other.cell_id]
    finally:
        other.kill()
    killed = Cell.list(query=SandboxQuery(state=[SandboxState.KILLED]), api_url=server.url, api_key=server.key)
    assert other.cell_id in [i.sandbox_id for i in killed.next_items()]


def test_connect_attaches_to_a_running_cell_and_refuses_a_killed_one(server, client_cell):
    again = Cell.connect(client_cell.cell_id, api_url=server.url, api_key=server.key)
    assert again.command("echo same cell").stdout == "same cell\n"
    doomed = Cell(api_url=server.url, api_key=server.key)
    doomed.kill()
    with pytest.raises(CellError, match="killed"):
        Cell.connect(doomed.cell_id, api_url=server.url, api_key=server.key)
    with pytest.raises(CellError, match="killed"):
        doomed.get_info()
    with pytest.raises(CellError, match="not found"):
        Cell.connect("cell-0000000000000000", api_url=server.url, api_key=server.key)


def test_client_errors_carry_our_sentences(server):
    with pytest.raises(CellError, match="allow_internet_access"):
        Cell(api_url=server.url, api_key=server.key, allow_internet_access=True)
    with pytest.raises(CellError, match="API key"):
        Cell(api_url=server.url, api_key="cell_sk_live_nope")
