"""Files in the cell: read, write, list, move, delete, and watch for changes.

Paths resolve with ``resolve_path`` (relative ones under the working directory).
Writes go to a temporary file beside the target and are renamed over it, so a
reader sees the old content or the new one, never half of it, and a full disk
leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import errno
import grp
import os
import posixpath
import pwd
import select
import shutil
import stat
import struct
import tempfile
from contextlib import contextmanager
from typing import Iterable, Iterator

from .environment import iso_time, resolve_path
from .http import MAX_JSON_BODY, HTTPError, Request, Response, Router, json_response, ndjson_line

router = Router()

# The JSON form holds the whole file in memory (twice, as base64); bigger files
# go through /files/raw, which streams.
MAX_JSON_FILE = MAX_JSON_BODY // 2
_CHUNK = 256 * 1024


def _read_umask() -> int:
    # os.umask() can only be read by setting it, which races with other threads.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _read_umask()


# ─── Errors ───────────────────────────────────────────────────


@contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """Turn what the filesystem says into an API error that names the path."""
    try:
        yield
    except FileNotFoundError:
        raise HTTPError(404, f"no such file or directory in the cell: {path}", "not_found") from None
    except NotADirectoryError:
        raise HTTPError(400, f"{path}, or one of its parents, is not a directory", "not_a_directory") from None
    except IsADirectoryError:
        raise HTTPError(400, f"{path} is a directory, not a file", "is_a_directory") from None
    except FileExistsError:
        raise HTTPError(409, f"{path} already exists and is not a directory", "already_exists") from None
    except PermissionError:
        raise HTTPError(403, f"permission denied: {path}", "permission_denied") from None
    except ConnectionError as exc:
        raise HTTPError(400, f"the upload of {path} was cut off: {exc}", "upload_incomplete") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HTTPError(
                507, f"the cell's disk is full: could not write {path}; delete files and retry", "disk_full"
            ) from None
        if exc.errno == errno.EROFS:
            raise HTTPError(403, f"{path} is on a read-only filesystem", "read_only") from None
        if exc.errno == errno.ENOTEMPTY:
            raise HTTPError(409, f"directory {path} is not empty", "not_empty") from None
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EXDEV):
            raise HTTPError(400, f"{path}: {exc.strerror}", "invalid_path") from None
        raise HTTPError(500, f"could not access {path}: {exc.strerror or exc}", "io_error") from None


def _query_path(request: Request, name: str = "path", default: str | None = None) -> str:
    value = request.query.get(name, default)
    if value is None:
        raise HTTPError(400, f"the {name!r} query parameter is required", "invalid_request")
    return resolve_path(value)


def _body_path(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"{name!r} must be a non-empty string", "invalid_request")
    return resolve_path(value)


def _mode(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        mode = int(value, 8) if isinstance(value, str) else value
    except ValueError:
        mode = None
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise HTTPError(400, "'mode' must be permission bits, e.g. 420 (0o644)", "invalid_request")
    return mode


# ─── EntryInfo ───────────────────────────────────────────────


class _Names:
    """uid/gid → name, looked up once per request (a listing repeats them)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = str(uid)
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = str(gid)
        return self._groups[gid]


def entry_info(path: str, names: _Names | None = None) -> dict:
    """EntryInfo of ``path``; a symlink shows its target's type and metadata."""
    names = names or _Names()
    st = os.lstat(path)
    symlink_target = None
    if stat.S_ISLNK(st.st_mode):
        symlink_target = posixpath.normpath(posixpath.join(posixpath.dirname(path), os.readlink(path)))
        try:
            st = os.stat(path)
        except OSError:
            pass  # dangling: describe the link itself
    return {
        "name": posixpath.basename(path) or "/",
        "type": "dir" if stat.S_ISDIR(st.st_mode) else "file",
        "path": path,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "permissions": stat.filemode(st.st_mode)[1:],
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "modified_time": iso_time(st.st_mtime),
        "symlink_target": symlink_target,
    }


def _info_response(path: str) -> Response:
    with _os_errors(path):
        return json_response(entry_info(path))


# ─── Reading and writing ─────────────────────────────────────


def _open_regular(path: str) -> tuple[int, int]:
    """An fd open for reading and the size; a directory or a FIFO is a 400."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        raise HTTPError(400, f"{path} is not a regular file", "not_a_file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return fd, os.fstat(fd).st_size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: str, chunks: Iterable[bytes], mode: int | None = None) -> None:
    """Write ``chunks`` to ``path`` via a temporary file renamed over it."""
    # Writing through a symlink updates its target instead of replacing the link.
    target = os.path.realpath(path) if os.path.islink(path) else path
    directory = posixpath.dirname(target) or "/"
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(target):
        raise IsADirectoryError(target)
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
    fd, temporary = tempfile.mkstemp(prefix=".cellbox-", suffix=".tmp", dir=directory)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
        os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        os.rename(temporary, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@router.route("GET", "/files")
def read_file(request: Request) -> Response:
    path = _query_path(request)
    encoding = request.query.get("encoding") or ""
    if encoding not in ("", "utf-8", "base64"):
        raise HTTPError(400, "'encoding' must be 'utf-8' or 'base64'", "invalid_request")
    with _os_errors(path):
        fd, size = _open_regular(path)
        try:
            if size > MAX_JSON_FILE:
                raise HTTPError(
                    413, f"{path} is {size} bytes; read files over {MAX_JSON_FILE} bytes raw", "file_too_large"
                )
            data = b"".join(iter(lambda: os.read(fd, _CHUNK), b""))
        finally:
            os.close(fd)
    if encoding != "base64":
        try:
            return json_response({"content": data.decode("utf-8"), "encoding": "utf-8"})
        except UnicodeDecodeError:
            if encoding == "utf-8":
                raise HTTPError(
                    400, f"{path} is not valid UTF-8 text; read it with encoding=base64, or download its bytes",
                    "not_text"
                ) from None
    return json_response({"content": base64.b64encode(data).decode("ascii"), "encoding": "base64"})


@router.route("POST", "/files")
def write_file(request: Request) -> Response:
    body = request.json()
    path = _body_path(body, "path")
    content = body.get("content", "")
    encoding = body.get("encoding") or "utf-8"
    if not isinstance(content, str):
        raise HTTPError(400, "'content' must be a string", "invalid_request")
    if encoding == "utf-8":
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(400, "'content' is not valid Unicode text; send it as base64", "invalid_request") from None
    elif encoding == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPError(400, "'content' is not valid base64", "invalid_request") from None
    else:
        raise HTTPError(400, "'encoding' must be 'utf-8' or 'base64'", "invalid_request")
    mode = _mode(body.get("mode"))
    with _os_errors(path):
        atomic_write(path, [data], mode)
    return _info_response(path)


@router.route("PUT", "/files/raw")
def upload_file(request: Request) -> Response:
    path = _query_path(request)
    mode = _mode(request.query.get("mode"))
    chunks = request.iter_body()
    try:
        with _os_errors(path):
            atomic_write(path, chunks, mode)
    except HTTPError:
        for _ in chunks:  # read the rest, so the client gets the answer, not a reset
            pass
        raise
    return _info_response(path)


@router.route("GET", "/files/raw")
def download_file(request: Request) -> Response:
    path = _query_path(request)
    with _os_errors(path):
        fd, size = _open_regular(path)

    def chunks() -> Iterator[bytes]:
        # Exactly ``size`` bytes: the length is promised in the header already.
        remaining = size
        while remaining > 0:
            chunk = os.read(fd, min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def close() -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    return Response(
        body=chunks(),
        content_type="application/octet-stream",
        headers={"content-length": str(size)},
        on_close=close,
    )


# ─── The tree ────────────────────────────────────────────────


@router.route("DELETE", "/files")
def delete(request: Request) -> Response:
    path = _query_path(request)
    if path == "/":
        raise HTTPError(400, "refusing to delete the cell's root directory", "invalid_request")
    with _os_errors(path):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return json_response({"path": path, "deleted": True})


def _list(directory: str, depth: int, names: _Names) -> Iterator[dict]:
    with os.scandir(directory) as entries:
        found = sorted(entries, key=lambda entry: entry.name)
    for entry in found:
        try:
            info = entry_info(entry.path, names)
        except OSError:
            continue  # removed while we looked
        yield info
        if depth > 1 and entry.is_dir(follow_symlinks=False):
            try:
                yield from _list(entry.path, depth - 1, names)
            except OSError:
                continue


@router.route("GET", "/files/list")
def list_directory(request: Request) -> Response:
    path = _query_path(request, default="")
    try:
        depth = int(request.query.get("depth") or 1)
    except ValueError:
        depth = 0
    if depth < 1:
        raise HTTPError(400, "'depth' must be a positive integer", "invalid_request")
    with _os_errors(path):
        return json_response({"files": list(_list(path, depth, _Names()))})


@router.route("GET", "/files/exists")
def exists(request: Request) -> Response:
    return json_response({"exists": os.path.lexists(_query_path(request))})


@router.route("GET", "/files/info")
def info(request: Request) -> Response:
    return _info_response(_query_path(request))


@router.route("POST", "/files/mkdir")
def make_directory(request: Request) -> Response:
    path = _body_path(request.json(), "path")
    with _os_errors(path):
        os.makedirs(path, exist_ok=True)
    return _info_response(path)


@router.route("POST", "/files/rename")
def rename(request: Request) -> Response:
    body = request.json()
    old_path, new_path = _body_path(body, "old_path"), _body_path(body, "new_path")
    if not os.path.lexists(old_path):
        raise HTTPError(404, f"no such file or directory in the cell: {old_path}", "not_found")
    with _os_errors(new_path):
        os.makedirs(posixpath.dirname(new_path) or "/", exist_ok=True)
        os.rename(old_path, new_path)
    return _info_response(new_path)


# ─── Watching ────────────────────────────────────────────────

_IN_MODIFY = 0x2
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ISDIR = 0x40000000
_WATCH_MASK = _IN_MODIFY | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF
_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Watcher:
    """An inotify watch on a file or a directory (and optionally its subtree)."""

    def __init__(self, root: str, recursive: bool) -> None:
        self.root = root
        self.recursive = recursive
        self.paths: dict[int, str] = {}
        self.root_gone = False
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            if ctypes.get_errno() in (errno.EMFILE, errno.ENFILE):
                raise HTTPError(503, "the cell has too many file watches open; close some", "watch_limit")
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        try:
            self.root_wd = self._add(root)
            if recursive and os.path.isdir(root):
                for directory, subdirectories, _ in os.walk(root):
                    for name in subdirectories:
                        self._try_add(posixpath.join(directory, name))
        except BaseException:
            self.close()
            raise

    def _add(self, path: str) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), _WATCH_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code == errno.ENOSPC:  # the inotify watch limit, not the disk
                raise HTTPError(503, "the cell has too many file watches open; close some", "watch_limit")
            raise OSError(code, os.strerror(code), path)
        self.paths[wd] = path
        return wd

    def _try_add(self, path: str) -> bool:
        try:
            self._add(path)
            return True
        except (OSError, HTTPError):
            return False  # vanished, unreadable, or over the limit: watch the rest

    def _forget(self, prefix: str) -> None:
        for wd, path in list(self.paths.items()):
            if path == prefix or path.startswith(prefix + "/"):
                _libc.inotify_rm_watch(self.fd, wd)
                self.paths.pop(wd, None)

    def _rebase(self, old: str, new: str) -> None:
        for wd, path in self.paths.items():
            if path == old or path.startswith(old + "/"):
                self.paths[wd] = new + path[len(old) :]

    def _event(self, kind: str, path: str, **extra: str) -> dict:
        name = posixpath.relpath(path, self.root) if path != self.root else posixpath.basename(path)
        return {"type": kind, "path": path, "name": name, **extra}

    def _created_directory(self, path: str) -> list[dict]:
        """Watch a new directory, and report what appeared in it before the watch."""
        events: list[dict] = []
        if not self._try_add(path):
            return events
        try:
            with os.scandir(path) as entries:
                found = list(entries)
        except OSError:
            return events
        for entry in found:
            events.append(self._event("created", entry.path))
            if entry.is_dir(follow_symlinks=False):
                events += self._created_directory(entry.path)
        return events

    def read(self) -> list[dict]:
        """Events from what inotify has queued (empty if nothing is)."""
        try:
            raw = os.read(self.fd, 256 * 1024)
        except BlockingIOError:
            return []
        events: list[dict] = []
        moved_from: dict[int, tuple[str, bool]] = {}
        offset = 0
        while offset + _EVENT_HEADER.size <= len(raw):
            wd, mask, cookie, length = _EVENT_HEADER.unpack_from(raw, offset)
            name = raw[offset + _EVENT_HEADER.size : offset + _EVENT_HEADER.size + length].rstrip(b"\0")
            offset += _EVENT_HEADER.size + length
            if mask & _IN_Q_OVERFLOW:
                events.append({"type": "overflow"})
                continue
            base = self.paths.get(wd)
            if base is None:
                continue
            if mask & _IN_IGNORED:
                self.paths.pop(wd, None)
                if wd == self.root_wd:
                    self.root_gone = True
                continue
            path = posixpath.join(base, os.fsdecode(name)) if name else base
            is_dir = bool(mask & _IN_ISDIR)
            if mask & _IN_CREATE:
                events.append(self._event("created", path))
                if is_dir and self.recursive:
                    events += self._created_directory(path)
            elif mask & _IN_MODIFY:
                event = self._event("modified", path)
                if not events or events[-1] != event:  # one write() often makes several
                    events.append(event)
            elif mask & _IN_DELETE:
                events.append(self._event("deleted", path))
            elif mask & _IN_DELETE_SELF:
                if wd == self.root_wd:
                    events.append(self._event("deleted", path))
            elif mask & _IN_MOVED_FROM:
                moved_from[cookie] = (path, is_dir)
            elif mask & _IN_MOVED_TO:
                if cookie in moved_from:
                    old_path, _ = moved_from.pop(cookie)
                    events.append(self._event("renamed", path, old_path=old_path))
                    if is_dir:
                        self._rebase(old_path, path)
                else:
                    events.append(self._event("created", path))
                    if is_dir and self.recursive:
                        events += self._created_directory(path)
        # Moved out of the watched tree: gone, as far as this watch can tell.
        for old_path, is_dir in moved_from.values():
            events.append(self._event("deleted", old_path))
            if is_dir:
                self._forget(old_path)
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@router.route("GET", "/files/watch")
def watch(request: Request) -> Response:
    path = _query_path(request)
    recursive = (request.query.get("recursive") or "").lower() in ("1", "true", "yes")
    with _os_errors(path):
        watcher = Watcher(path, recursive)

    def events() -> Iterator[bytes]:
        try:
            poller = select.poll()
            poller.register(watcher.fd, select.POLLIN)
            poller.register(request.socket, select.POLLIN)
            watching_client = True
            yield ndjson_line({"type": "ready", "path": path})
            while not watcher.root_gone:
                # The client only ever reads: its side turning readable means it left.
                for fd, _ in poller.poll(None if watching_client else 1000):
                    if fd == request.socket.fileno():
                        if request.client_gone():
                            return
                        poller.unregister(request.socket)  # it sent bytes; fall back to polling
                        watching_client = False
                if not watching_client and request.client_gone():
                    return
                batch = watcher.read()
                if batch:
                    yield b"".join(ndjson_line(event) for event in batch)
        finally:
            watcher.close()

    stream = events()

    def close() -> None:
        stream.close()
        watcher.close()  # also when the stream never started

    return Response(body=stream, content_type="application/x-ndjson", on_close=close)

