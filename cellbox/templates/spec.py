"""What a template is made of, and the checks a spec passes before anything is built.

Pydantic settles the types; the rules that need a sentence naming the offending
entry (package specifiers, file paths, the user, the working directory) are
here as plain functions, so the API and the tests share them.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..errors import bad_request

StringMap = dict[StrictStr, StrictStr]

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
BUILTIN = {"python3": "python3", "javascript": "javascript"}
RUNTIME_ALIASES = {"python3": "python3", "python": "python3", "javascript": "javascript", "js": "javascript",
                   "node": "javascript", "nodejs": "javascript"}
# Where a cell can write: files and the working directory must be under one of these.
WRITABLE_ROOTS = ("/data", "/home/user", "/tmp")
DEFAULT_USER = "user"
# The transpiler of the published client names the user "sandbox" unless the Dockerfile says USER.
_USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SYSTEM_USERS = {"root", "nobody", "daemon", "bin", "sys", "sync", "games", "man", "mail", "www-data"}

MAX_PACKAGES = 200
MAX_FILES = 1000

# PEP 508 without direct references: a name, extras, version specifiers, a marker.
_PY_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PY_VERSION = r"\s*(?:===|~=|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_PY_SPEC = re.compile(
    rf"^{_PY_NAME}(?:\s*\[\s*{_PY_NAME}(?:\s*,\s*{_PY_NAME})*\s*\])?"
    rf"(?:\s*\(?{_PY_VERSION}(?:\s*,{_PY_VERSION})*\s*\)?)?"
    r"(?:\s*;\s*[A-Za-z0-9_.'\"<>=!~ ()-]+)?\s*$"
)
# npm: [@scope/]name[@version-or-range-or-tag]; no URLs, git, paths, file: or aliases.
_NPM_SPEC = re.compile(
    r"^(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(?:@[A-Za-z0-9.*^~<>=|x+ _-]+)?$"
)


class TemplateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(min_length=1, description="Absolute under /data, /home/user or /tmp; relative means under /data.")
    content: StrictStr
    encoding: Literal["utf-8", "base64"] = "utf-8"
    mode: int | StrictStr | None = Field(None, description="Permission bits: 420 or \"0644\".")


class TemplateFields(BaseModel):
    """The fields a spec may set; every one optional, so PATCH uses this as is."""

    model_config = ConfigDict(extra="forbid")
    runtime: StrictStr | None = Field(None, description="python3 or javascript.")
    packages: list[StrictStr] | None = Field(None, description="pip requirement specifiers (python3) or npm name@version (javascript).")
    # Checked by check_files, so that a Dockerfile COPY ({src, dest}) or a client path gets a sentence, not a type error.
    files: list[Any] | None = Field(None, description="Each {path, content, encoding?, mode?}.")
    envs: StringMap | None = None
    start_command: StrictStr | None = Field(None, description="Started as a background process in each new cell.")
    ready_command: StrictStr | None = Field(None, description="Run until it succeeds before a new cell is handed over.")
    working_directory: StrictStr | None = None
    user: StrictStr | None = Field(None, description="Name of the cell's unprivileged user (uid 1000); default 'user'.")
    cpu_count: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, ge=32)
    disk_mb: int | None = Field(None, ge=64)
    pids: int | None = Field(None, ge=16)
    timeout_ms: int | None = Field(None, ge=1000, le=86_400_000)
    metadata: StringMap | None = None
    # Labels the published client sends (cell.yaml, Dockerfile transpiler); kept, not interpreted.
    version: StrictStr | None = None
    description: StrictStr | None = None
    author: StrictStr | None = None
    # Left by the client's Dockerfile transpiler for `npm ci`; refused with a sentence by refuse_lockfile.
    lockfile_install: bool | None = Field(None, alias="_lockfile_install", exclude=True)


class TemplateRequest(TemplateFields):
    name: StrictStr = Field(pattern=NAME_PATTERN)


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, normalized
    data: bytes
    mode: int | None


def refuse_lockfile(fields: TemplateFields) -> None:
    """The Dockerfile transpiler's mark for packages that are in a lockfile we cannot see."""
    if fields.lockfile_install:
        raise bad_request(
            "the Dockerfile installs packages from a lockfile (npm ci / yarn install), which the server cannot "
            "read: list the packages in the Dockerfile's install line or in 'packages'"
        )


def runtime_of(value: str) -> str:
    runtime = RUNTIME_ALIASES.get(value.lower())
    if runtime is None:
        raise bad_request(f"runtime {value!r} is not available; use 'python3' or 'javascript'")
    return runtime


def check_packages(runtime: str, packages: list[str]) -> list[str]:
    if len(packages) > MAX_PACKAGES:
        raise bad_request(f"packages: at most {MAX_PACKAGES} entries")
    checked = []
    for entry in packages:
        spec = entry.strip()
        if not spec or spec.startswith("-"):
            raise bad_request(
                f"packages: {entry!r} is an option, not a package; options such as -e, -r, --index-url are refused. "
                "List package names with versions, e.g. 'requests==2.32.3'"
            )
        if runtime == "python3":
            if "://" in spec or "@" in spec.split(";")[0] or not _PY_SPEC.match(spec):
                raise bad_request(
                    f"packages: {entry!r} is not a pip requirement specifier; give a name with optional extras, "
                    "version and marker (e.g. 'pandas>=2,<3'). URLs, paths and direct references are refused"
                )
        elif not _NPM_SPEC.match(spec) or "://" in spec:
            raise bad_request(
                f"packages: {entry!r} is not an npm package; give name@version (e.g. 'lodash@4.17.21' or "
                "'@scope/pkg@^1'). URLs, git repositories, paths and file: references are refused"
            )
        checked.append(spec)
    return checked


def cell_path(path: str, what: str) -> str:
    """An absolute, normalized path in the cell's writable trees (relative ones start at /data)."""
    if "\x00" in path:
        raise bad_request(f"{what}: {path!r} contains a NUL byte")
    resolved = posixpath.normpath(posixpath.join("/data", path))
    if not any(resolved == root or resolved.startswith(root + "/") for root in WRITABLE_ROOTS):
        raise bad_request(
            f"{what}: {path!r} is outside what a cell can write; use a path under /data, /home/user or /tmp "
            "(a relative path is taken under /data)"
        )
    return resolved


def _mode(value: int | str | None, path: str) -> int | None:
    if value is None:
        return None
    try:
        mode = int(value, 8) if isinstance(value, str) else value
    except ValueError:
        mode = -1
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise bad_request(f"files: mode of {path!r} must be permission bits, e.g. 420 or \"0644\"")
    return mode


def check_files(files: list[Any], max_bytes: int) -> list[FileEntry]:
    if len(files) > MAX_FILES:
        raise bad_request(f"files: at most {MAX_FILES} entries")
    entries: dict[str, FileEntry] = {}
    total = 0
    for raw in files:
        if isinstance(raw, str) or (isinstance(raw, dict) and "src" in raw):
            name = raw if isinstance(raw, str) else raw.get("src")
            raise bad_request(
                f"files: {name!r} names a file on your machine, which the server cannot read; send each file "
                "as {\"path\": \"<where in the cell>\", \"content\": \"<its text, or base64 with "
                "\\\"encoding\\\": \\\"base64\\\">\"}"
            )
        try:
            item = TemplateFile.model_validate(raw)
        except Exception as exc:  # pydantic's message, with the entry it was about
            raise bad_request(f"files: entry {str(raw)[:80]!r} is not {{path, content, encoding?, mode?}}: {exc}".splitlines()[0])
        path = cell_path(item.path, "files")
        if path in WRITABLE_ROOTS:
            raise bad_request(f"files: {item.path!r} is a directory; give a file path under it")
        if item.encoding == "base64":
            try:
                data = base64.b64decode(item.content, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"files: content of {item.path!r} is not valid base64")
        else:
            data = item.content.encode("utf-8", errors="surrogatepass")
        total += len(data)
        if total > max_bytes:
            raise bad_request(f"files: more than {max_bytes} bytes in all; put large data in the cell at run time")
        parts = path.strip("/").split("/")
        if len(parts) > 32 or any(len(part.encode()) > 255 for part in parts):
            raise bad_request(f"files: {item.path!r} is too deep or has a name over 255 bytes")
        entries[path] = FileEntry(path, data, _mode(item.mode, item.path))
    # A path cannot be a file and also the directory of another file.
    for path in entries:
        parent = path.rsplit("/", 1)[0]
        while parent and parent not in WRITABLE_ROOTS:
            if parent in entries:
                raise bad_request(f"files: {parent!r} is a file, so it cannot also hold {path!r}")
            parent = parent.rsplit("/", 1)[0]
    return list(entries.values())


def check_user(user: str | None) -> str:
    if user is None or user == DEFAULT_USER:
        return DEFAULT_USER
    if user in _SYSTEM_USERS or user.isdigit() or ":" in user or not _USER_PATTERN.match(user):
        raise bad_request(
            f"user {user!r} cannot be honoured: a cell's code runs as one unprivileged user (uid 1000), which "
            "a template may name (lower-case letters, digits, _ and -, not a system account such as root)"
        )
    return user


def check_working_directory(path: str | None) -> str:
    return "/data" if not path else cell_path(path, "working_directory")
