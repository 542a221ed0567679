import base64
import errno
import hashlib
import json
import os
import time
from datetime import datetime

import pytest

from cellbox.agent import files
from cellbox.agent.http import HTTPError


def _pid(agent) -> int:
    return agent.get("/health").json()["pid"]


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


# ─── Reading and writing ─────────────────────────────────────


def test_written_text_reads_back_as_utf8(agent):
    agent.post("/files", json={"path": "notes/hello.txt", "content": "héllo\n"}).raise_for_status()
    assert (agent.workdir / "notes" / "hello.txt").read_text() == "héllo\n"
    body = agent.get("/files", params={"path": "notes/hello.txt"}).json()
    assert body == {"content": "héllo\n", "encoding": "utf-8"}


def test_absolute_paths_are_used_as_given(agent):
    target = agent.workdir / "abs.txt"
    agent.post("/files", json={"path": str(target), "content": "x"}).raise_for_status()
    assert agent.get("/files", params={"path": str(target)}).json()["content"] == "x"


def test_all_byte_values_round_trip_through_base64(agent):
    data = bytes(range(256))
    written = agent.post(
        "/files", json={"path": "bin", "content": base64.b64encode(data).decode(), "encoding": "base64"}
    )
    assert written.json()["size"] == 256
    assert (agent.workdir / "bin").read_bytes() == data
    body = agent.get("/files", params={"path": "bin"}).json()
    assert body["encoding"] == "base64"  # not UTF-8, so never mangled into text
    assert base64.b64decode(body["content"]) == data


def test_base64_can_be_asked_for_a_text_file(agent):
    (agent.workdir / "t.txt").write_text("abc")
    body = agent.get("/files", params={"path": "t.txt", "encoding": "base64"}).json()
    assert body == {"content": base64.b64encode(b"abc").decode(), "encoding": "base64"}


def test_asking_utf8_of_a_binary_file_is_a_400(agent):
    (agent.workdir / "b").write_bytes(b"\xff\xfe")
    response = agent.get("/files", params={"path": "b", "encoding": "utf-8"})
    assert response.status_code == 400
    assert "base64" in response.json()["error"]


def test_all_byte_values_round_trip_raw(agent):
    data = bytes(range(256)) * 3
    agent.put("/files/raw", params={"path": "raw/bin"}, content=data).raise_for_status()
    response = agent.get("/files/raw", params={"path": "raw/bin"})
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in response.headers


def test_write_sets_the_requested_mode(agent):
    info = agent.post("/files", json={"path": "run.sh", "content": "#!/bin/sh\n", "mode": 0o755}).json()
    assert info["mode"] == 0o755 and info["permissions"] == "rwxr-xr-x"
    assert os.stat(agent.workdir / "run.sh").st_mode & 0o777 == 0o755


def test_overwrite_keeps_the_existing_mode_and_leaves_no_temporary_file(agent):
    path = agent.workdir / "keep.sh"
    path.write_text("old")
    path.chmod(0o700)
    agent.post("/files", json={"path": "keep.sh", "content": "new"}).raise_for_status()
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in agent.workdir.iterdir()) == ["keep.sh"]


def test_writing_through_a_symlink_updates_its_target(agent):
    (agent.workdir / "real.txt").write_text("old")
    (agent.workdir / "link.txt").symlink_to("real.txt")
    agent.post("/files", json={"path": "link.txt", "content": "new"}).raise_for_status()
    assert (agent.workdir / "link.txt").is_symlink()
    assert (agent.workdir / "real.txt").read_text() == "new"


def test_reading_a_missing_file_is_a_404_naming_it(agent):
    response = agent.get("/files", params={"path": "nope/missing.txt"})
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"
    assert "nope/missing.txt" in response.json()["error"]


def test_reading_a_directory_is_a_400(agent):
    (agent.workdir / "d").mkdir()
    for endpoint in ("/files", "/files/raw"):
        response = agent.get(endpoint, params={"path": "d"})
        assert response.status_code == 400
        assert response.json()["error_type"] == "is_a_directory"


def test_writing_over_a_directory_is_a_400(agent):
    (agent.workdir / "d").mkdir()
    response = agent.post("/files", json={"path": "d", "content": "x"})
    assert response.status_code == 400


def test_bad_base64_is_a_400(agent):
    response = agent.post("/files", json={"path": "x", "content": "***", "encoding": "base64"})
    assert response.status_code == 400
    assert not (agent.workdir / "x").exists()


def test_a_full_disk_is_a_507_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    real_write = os.write

    def write(fd, data):
        if len(data) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", write)
    with pytest.raises(HTTPError) as raised:
        with files._os_errors(str(tmp_path / "big")):
            files.atomic_write(str(tmp_path / "big"), [b"abc", b"defghij"])
    assert raised.value.status == 507
    assert raised.value.error_type == "disk_full"
    assert "disk is full" in raised.value.error
    assert list(tmp_path.iterdir()) == []


def test_large_raw_upload_and_download_stream_without_holding_the_file(agent):
    size = 100 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    sent = hashlib.sha256()

    def body():
        for _ in range(size // len(chunk)):
            sent.update(chunk)
            yield chunk

    info = agent.put("/files/raw", params={"path": "big.bin"}, content=body()).json()
    assert info["size"] == size
    received = hashlib.sha256()
    with agent.stream("GET", "/files/raw", params={"path": "big.bin"}) as response:
        assert response.headers["content-length"] == str(size)
        for part in response.iter_bytes():
            received.update(part)
    assert received.hexdigest() == sent.hexdigest()
    assert _peak_rss_kib(_pid(agent)) < 60 * 1024


# ─── EntryInfo and the tree ──────────────────────────────────


def test_info_describes_a_file(agent):
    path = agent.workdir / "a.txt"
    path.write_text("hello")
    path.chmod(0o640)
    info = agent.get("/files/info", params={"path": "a.txt"}).json()
    assert info["name"] == "a.txt"
    assert info["type"] == "file"
    assert info["path"] == str(path)
    assert info["size"] == 5
    assert info["mode"] == 0o640
    assert info["permissions"] == "rw-r-----"
    assert info["owner"] and info["group"]
    modified = datetime.fromisoformat(info["modified_time"])
    assert modified.utcoffset() is not None
    assert abs(modified.timestamp() - path.stat().st_mtime) < 1
    assert info["symlink_target"] is None


def test_info_of_a_symlink_shows_the_target_type_and_path(agent):
    (agent.workdir / "dir").mkdir()
    (agent.workdir / "to-dir").symlink_to("dir")
    info = agent.get("/files/info", params={"path": "to-dir"}).json()
    assert info["type"] == "dir"
    assert info["symlink_target"] == str(agent.workdir / "dir")


def test_info_of_a_missing_path_is_a_404(agent):
    assert agent.get("/files/info", params={"path": "ghost"}).status_code == 404


def test_list_shows_the_entries_of_a_directory(agent):
    (agent.workdir / "sub").mkdir()
    (agent.workdir / "sub" / "deep.txt").write_text("x")
    (agent.workdir / "top.txt").write_text("x")
    files_ = agent.get("/files/list", params={"path": ""}).json()["files"]
    assert [(f["name"], f["type"]) for f in files_] == [("sub", "dir"), ("top.txt", "file")]


def test_list_depth_descends_into_subdirectories(agent):
    (agent.workdir / "sub").mkdir()
    (agent.workdir / "sub" / "deep.txt").write_text("x")
    files_ = agent.get("/files/list", params={"path": str(agent.workdir), "depth": 2}).json()["files"]
    assert [f["path"] for f in files_] == [str(agent.workdir / "sub"), str(agent.workdir / "sub" / "deep.txt")]


def test_listing_a_file_is_a_400(agent):
    (agent.workdir / "f").write_text("x")
    assert agent.get("/files/list", params={"path": "f"}).status_code == 400


def test_exists_answers_true_and_false(agent):
    (agent.workdir / "here").write_text("x")
    assert agent.get("/files/exists", params={"path": "here"}).json() == {"exists": True}
    assert agent.get("/files/exists", params={"path": "gone"}).json() == {"exists": False}


def test_mkdir_creates_parents_and_accepts_an_existing_directory(agent):
    first = agent.post("/files/mkdir", json={"path": "a/b/c"})
    assert first.json()["type"] == "dir"
    assert (agent.workdir / "a" / "b" / "c").is_dir()
    assert agent.post("/files/mkdir", json={"path": "a/b/c"}).status_code < 400


def test_mkdir_over_a_file_is_a_409(agent):
    (agent.workdir / "f").write_text("x")
    assert agent.post("/files/mkdir", json={"path": "f"}).status_code == 409


def test_rename_moves_and_answers_the_new_entry(agent):
    (agent.workdir / "old.txt").write_text("x")
    info = agent.post("/files/rename", json={"old_path": "old.txt", "new_path": "moved/new.txt"}).json()
    assert info["path"] == str(agent.workdir / "moved" / "new.txt")
    assert info["name"] == "new.txt"
    assert not (agent.workdir / "old.txt").exists()


def test_renaming_a_missing_path_is_a_404(agent):
    response = agent.post("/files/rename", json={"old_path": "ghost", "new_path": "x"})
    assert response.status_code == 404
    assert "ghost" in response.json()["error"]


def test_delete_removes_a_file(agent):
    (agent.workdir / "f").write_text("x")
    assert agent.delete("/files", params={"path": "f"}).status_code == 200
    assert not (agent.workdir / "f").exists()


def test_delete_removes_a_whole_tree(agent):
    (agent.workdir / "t" / "u").mkdir(parents=True)
    (agent.workdir / "t" / "u" / "f").write_text("x")
    agent.delete("/files", params={"path": "t"}).raise_for_status()
    assert not (agent.workdir / "t").exists()


def test_delete_of_a_symlink_to_a_directory_keeps_the_directory(agent):
    (agent.workdir / "dir").mkdir()
    (agent.workdir / "dir" / "f").write_text("x")
    (agent.workdir / "link").symlink_to("dir")
    agent.delete("/files", params={"path": "link"}).raise_for_status()
    assert (agent.workdir / "dir" / "f").exists()


def test_deleting_a_missing_path_is_a_404(agent):
    assert agent.delete("/files", params={"path": "ghost"}).status_code == 404


def test_a_missing_path_parameter_is_a_400(agent):
    assert agent.get("/files").status_code == 400


# ─── Watching ────────────────────────────────────────────────


class _Watch:
    """A watch stream, read on demand: the test changes files between reads."""

    def __init__(self, agent, path, recursive=False):
        self.events = []
        self._stream = agent.stream(
            "GET", "/files/watch", params={"path": path, "recursive": str(recursive).lower()}, timeout=5
        )
        self._lines = self._stream.__enter__().iter_lines()
        assert json.loads(next(self._lines))["type"] == "ready"

    def wait_for(self, predicate):
        """Read events until one matches (httpx's read timeout fails the test)."""
        for line in self._lines:
            self.events.append(json.loads(line))
            if predicate(self.events[-1]):
                return True
        return False

    def close(self):
        self._stream.__exit__(None, None, None)


def _watch_fds(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass
    return count


def test_watch_sees_create_modify_and_delete(agent):
    watch = _Watch(agent, "")
    try:
        path = agent.workdir / "w.txt"
        path.write_text("one")
        assert watch.wait_for(lambda e: e["type"] == "created" and e["path"] == str(path))
        with open(path, "a") as f:
            f.write("two")
        assert watch.wait_for(lambda e: e["type"] == "modified" and e["name"] == "w.txt")
        path.unlink()
        assert watch.wait_for(lambda e: e["type"] == "deleted" and e["path"] == str(path))
    finally:
        watch.close()


def test_watch_reports_a_rename_with_the_old_path(agent):
    (agent.workdir / "a").write_text("x")
    watch = _Watch(agent, "")
    try:
        os.rename(agent.workdir / "a", agent.workdir / "b")
        assert watch.wait_for(
            lambda e: e["type"] == "renamed"
            and e["path"] == str(agent.workdir / "b")
            and e["old_path"] == str(agent.workdir / "a")
        )
    finally:
        watch.close()


def test_recursive_watch_sees_changes_in_new_subdirectories(agent):
    watch = _Watch(agent, "", recursive=True)
    try:
        nested = agent.workdir / "x" / "y"
        nested.mkdir(parents=True)
        (nested / "f.txt").write_text("x")
        assert watch.wait_for(lambda e: e["type"] == "created" and e["name"] == "x/y/f.txt")
    finally:
        watch.close()


def test_watching_a_missing_path_is_a_404(agent):
    assert agent.get("/files/watch", params={"path": "ghost"}).status_code == 404


def test_watch_closes_its_inotify_when_the_client_leaves(agent):
    pid = _pid(agent)
    watch = _Watch(agent, "")
    assert _watch_fds(pid) == 1
    watch.close()
    deadline = time.monotonic() + 5
    while _watch_fds(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _watch_fds(pid) == 0
