"""Files in real cells over the Cell API."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from datetime import datetime

from synapse.cell import Cell

from tests.conftest import sh

ENTRY_FIELDS = {"name", "type", "path", "size", "mode", "permissions", "owner", "group", "modified_time", "symlink_target"}


def test_write_read_list_info_exists_rename_remove(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    entry = api.post(base, json={"path": "notes/a.txt", "content": "héllo\n"}).json()
    assert set(entry) == ENTRY_FIELDS
    assert entry["path"] == "/data/notes/a.txt" and entry["type"] == "file" and entry["size"] == len("héllo\n".encode())
    assert entry["permissions"] == "rw-r--r--" and entry["owner"] == "user"
    assert datetime.fromisoformat(entry["modified_time"]).tzinfo is not None
    assert api.get(base, params={"path": "notes/a.txt"}).json()["content"] == "héllo\n"
    assert api.get(base, params={"path": "/data/notes/a.txt"}).json()["content"] == "héllo\n"
    listing = api.get(f"{base}/list", params={"path": "notes"}).json()["files"]
    assert [f["name"] for f in listing] == ["a.txt"]
    assert api.get(f"{base}/exists", params={"path": "notes/a.txt"}).json() == {"exists": True}
    assert api.get(f"{base}/info", params={"path": "notes"}).json()["type"] == "dir"
    moved = api.post(f"{base}/rename", json={"old_path": "notes/a.txt", "new_path": "moved/b.txt"}).json()
    assert moved["path"] == "/data/moved/b.txt"
    assert api.post(f"{base}/mkdir", json={"path": "deep/er/dir"}).json()["type"] == "dir"
    assert api.delete(base, params={"path": "moved"}).status_code == 200
    assert api.get(f"{base}/exists", params={"path": "moved/b.txt"}).json() == {"exists": False}


def test_listing_takes_a_depth(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    api.post(base, json={"path": "t/one/two/f.txt", "content": "x"})
    shallow = {f["path"] for f in api.get(f"{base}/list", params={"path": "t"}).json()["files"]}
    deep = {f["path"] for f in api.get(f"{base}/list", params={"path": "t", "depth": 3}).json()["files"]}
    assert shallow == {"/data/t/one"}
    assert deep == {"/data/t/one", "/data/t/one/two", "/data/t/one/two/f.txt"}


def test_missing_and_wrong_kind_are_404_and_400(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    response = api.get(base, params={"path": "nope.txt"})
    assert response.status_code == 404 and "nope.txt" in response.json()["error"]
    api.post(f"{base}/mkdir", json={"path": "adir"})
    assert api.get(base, params={"path": "adir"}).status_code == 400
    api.post(base, json={"path": "afile", "content": ""})
    assert api.get(f"{base}/list", params={"path": "afile"}).status_code == 400


def test_binary_content_round_trips_through_base64_and_raw(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    data = bytes(range(256)) * 4
    api.post(base, json={"path": "bin.dat", "content": base64.b64encode(data).decode(), "encoding": "base64"})
    body = api.get(base, params={"path": "bin.dat", "encoding": "base64"}).json()
    assert base64.b64decode(body["content"]) == data
    api.post(f"{base}/upload", params={"path": "raw.dat"}, content=data, headers={"content-type": "application/octet-stream"})
    response = api.get(f"{base}/download", params={"path": "raw.dat"})
    assert response.content == data and response.headers["content-length"] == str(len(data))


def test_a_100_mib_file_streams_both_ways(server, api, cells):
    cell_id = cells(disk_mb=512)["cell_id"]
    base = f"/v1/cells/{cell_id}/files"
    chunk = os.urandom(1024 * 1024)
    sent = hashlib.sha256()

    def body():
        for _ in range(100):
            sent.update(chunk)
            yield chunk

    response = api.post(f"{base}/upload", params={"path": "big.bin"}, content=body())
    assert response.status_code == 200 and response.json()["size"] == 100 * 1024 * 1024
    received = hashlib.sha256()
    with api.stream("GET", f"{base}/download", params={"path": "big.bin"}) as download:
        assert download.headers["content-length"] == str(100 * 1024 * 1024)
        for part in download.iter_bytes():
            received.update(part)
    assert received.hexdigest() == sent.hexdigest()
    assert sh(api, cell_id, "sha256sum big.bin")["stdout"].split()[0] == sent.hexdigest()


def test_paths_resolve_inside_the_cell_never_on_the_host(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    passwd = api.get(base, params={"path": "/etc/passwd"}).json()["content"]
    assert "user:x:1000" in passwd and passwd != open("/etc/passwd").read()
    traversal = api.get(base, params={"path": "../../../../etc/hostname"}).json()["content"]
    assert traversal.strip() == cell["cell_id"]
    sh(api, cell["cell_id"], "ln -s /proc/self/root/etc/hostname link; ln -s / rootlink")
    assert api.get(base, params={"path": "link"}).json()["content"].strip() == cell["cell_id"]
    assert api.get(base, params={"path": "rootlink/root/.bashrc"}).status_code == 404
    assert api.post(base, json={"path": "/usr/bin/evil", "content": "x"}).status_code >= 400
    assert not os.path.exists("/usr/bin/evil")


def test_a_full_disk_is_a_clear_error_and_the_cell_keeps_working(api, cells):
    cell_id = cells(disk_mb=64)["cell_id"]
    base = f"/v1/cells/{cell_id}/files"
    response = api.post(f"{base}/upload", params={"path": "huge"}, content=b"\0" * (100 * 1024 * 1024))
    assert response.status_code in (507, 413) and "disk" in response.json()["error"]
    assert api.post(base, json={"path": "small.txt", "content": "ok"}).status_code == 200
    assert sh(api, cell_id, "cat small.txt")["stdout"] == "ok"


def test_watch_streams_changes(server, api, cell):
    cell_id = cell["cell_id"]
    api.post(f"/v1/cells/{cell_id}/files/mkdir", json={"path": "watched"})
    events = []
    ready = threading.Event()

    def follow():
        with server.client() as client:
            with client.stream("GET", f"/v1/cells/{cell_id}/files/watch", params={"path": "watched"}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        events.append(event)
                        if event["type"] == "ready":
                            ready.set()
                        if event["type"] == "deleted":
                            return

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    assert ready.wait(10)
    sh(api, cell_id, "echo 1 > watched/f; echo 2 >> watched/f; rm watched/f")
    watcher.join(10)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ready" and "created" in kinds and "deleted" in kinds


def test_bad_file_requests_are_400(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    assert api.post(base, json={"path": "x"}).status_code == 400
    assert api.post(base, json={"path": "x", "content": "!!", "encoding": "base64"}).status_code == 400
    assert api.get(base).status_code == 400


def test_published_client_file_calls(server):
    cell = Cell(api_url=server.url, api_key=server.key)
    try:
        cell.write_file("dir/x.txt", "content")
        assert cell.read_file("dir/x.txt") == "content"
        assert [e.name for e in cell.list_files("dir")] == ["x.txt"]
        assert cell.file_exists("dir/x.txt") and cell.file_info("dir/x.txt").size == 7
        assert cell.rename_file("dir/x.txt", "dir/y.txt").name == "y.txt"
        cell.make_dir("other")
        cell.remove_file("dir")
        assert not cell.file_exists("dir")
    finally:
        cell.kill()


def test_reading_a_binary_file_as_text_is_refused_with_the_way_to_read_it(api, cell):
    base = f"/v1/cells/{cell['cell_id']}/files"
    api.post(base, json={"path": "b.bin", "content": base64.b64encode(b"\xff\xfe\x00").decode(), "encoding": "base64"})
    response = api.get(base, params={"path": "b.bin"})
    assert response.status_code == 400 and "base64" in response.json()["error"]
