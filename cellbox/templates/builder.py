"""Builds a template's read-only layer without running package code as root on the host.

Python: the host downloads wheels only (``pip download --only-binary=:all:``):
resolving from wheel metadata runs no package code, and a package published only
as a source distribution fails with a line saying so. The wheels are then
installed by ``pip install --no-index --target`` inside a container with a cell's
isolation and no network, writing the layer as the cell's unprivileged user.

JavaScript: ``npm install --ignore-scripts`` on the host, so no install script runs.

The layer of a build (``<builds>/<template id>/<version>/layer``)::

    python/          pip --target (PYTHONPATH), console scripts in python/bin
    node_modules/    npm (NODE_PATH), commands in node_modules/.bin
    files/           the template's files, under their path in the cell
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..runtime import Limits, bundle
from ..runtime.oci import OciRuntime, run
from .isolation import cell_owner, run_isolated

# Where the pieces of a build appear inside the install container.
_LAYER_MOUNT = bundle.TEMPLATE_MOUNT
_BUILD_MOUNT = bundle.TEMPLATE_BUILD_MOUNT

WHEELS_ONLY_HINT = (
    "templates install wheels only (pip download --only-binary=:all:), so that no package code runs "
    "while building. A package published only as a source distribution (sdist) cannot be installed: pick a "
    "version that has a wheel for Python {python} on this platform, or build the wheel yourself and ask the "
    "operator to add it to the server's package index / find-links."
)


@dataclass
class BuildSettings:
    pip_args: list[str]
    npm_args: list[str]
    timeout_s: float
    limits: Limits


class BuildFailed(Exception):
    """The build failed; the message is the reason shown on the template (the log has the rest)."""


def _chown_tree(top: Path, uid: int) -> None:
    for path in [top, *top.rglob("*")]:
        os.lchown(path, uid, uid)


def _seal(top: Path) -> None:
    """Make a finished layer root's and read-only for everybody else."""
    for path in [top, *top.rglob("*")]:
        os.lchown(path, 0, 0)
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod((mode | 0o444 | (0o111 if path.is_dir() else 0)) & ~0o022 & 0o7777)


class Builder:
    def __init__(self, runtime: OciRuntime, settings: BuildSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.cell_python = "3"

    async def check(self) -> None:
        """Learn the cells' Python version, so downloaded wheels fit it."""
        code, out = await run(
            self.runtime.agent_python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])", check=False
        )
        self.cell_python = out.strip() if code == 0 else "%d.%d" % sys.version_info[:2]

    async def build(self, runtime: str, packages: list[str], version_dir: Path, log_path: Path) -> None:
        """Fill ``version_dir/layer`` (whose files/ is already written); raise BuildFailed."""
        work = version_dir / "build"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        layer = version_dir / "layer"
        for leftover in ("python", "node_modules"):  # of a build the server did not finish
            shutil.rmtree(layer / leftover, ignore_errors=True)
        try:
            if packages and runtime == "python3":
                await self._python(packages, layer, work, log_path)
            elif packages:
                await self._javascript(packages, layer, work, log_path)
            else:
                note(log_path, "no packages to install")
            await asyncio.to_thread(_seal, layer)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _step(self, log_path: Path, argv: list[str], env: dict[str, str] | None = None) -> int:
        note(log_path, "$ " + shlex.join(argv))
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
            )
            try:
                return await asyncio.wait_for(proc.wait(), self.settings.timeout_s)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                raise BuildFailed(f"the package download did not finish within {self.settings.timeout_s:g} s")

    async def _python(self, packages: list[str], layer: Path, work: Path, log_path: Path) -> None:
        wheels = work / "wheels"
        wheels.mkdir()
        download = [
            sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(wheels),
            "--no-input", "--progress-bar", "off", "--disable-pip-version-check",
        ]
        if self.cell_python != "%d.%d" % sys.version_info[:2]:
            download += ["--python-version", self.cell_python]
        code = await self._step(log_path, [*download, *self.settings.pip_args, "--", *packages])
        if code != 0:
            note(log_path, WHEELS_ONLY_HINT.format(python=self.cell_python))
            raise BuildFailed(f"downloading the packages failed (pip exit code {code}); see the build log")
        for path in [wheels, *wheels.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)

        # The server's own pip (pure Python) installs, so the cells' interpreter needs none.
        import pip

        mounts = work / "mnt"  # /opt/build: only mount points for pip and the wheels
        for name in ("pip", "wheels"):
            (mounts / name).mkdir(parents=True)
        target = layer / "python"
        layer.chmod(0o755)
        _chown_tree(layer, cell_owner(self.runtime))
        argv = [
            self.runtime.agent_python, "-m", "pip", "install", "--no-index", "--find-links", f"{_BUILD_MOUNT}/wheels",
            "--target", f"{_LAYER_MOUNT}/python", "--no-cache-dir", "--no-input", "--progress-bar", "off",
            "--disable-pip-version-check", "--no-warn-script-location", "--", *packages,
        ]
        note(log_path, "installing inside an isolated container (no network, unprivileged user):")
        note(log_path, "$ " + shlex.join(argv))
        try:
            code = await run_isolated(
                self.runtime, work, argv,
                binds=[
                    (_LAYER_MOUNT, layer, True),
                    (_BUILD_MOUNT, mounts, False),
                    (f"{_BUILD_MOUNT}/pip", Path(pip.__file__).parent, False),
                    (f"{_BUILD_MOUNT}/wheels", wheels, False),
                ],
                env={"PYTHONPATH": _BUILD_MOUNT, "PIP_CONFIG_FILE": os.devnull, "TMPDIR": "/tmp"},
                limits=self.settings.limits,
                log_path=log_path,
                timeout=self.settings.timeout_s,
            )
        except TimeoutError as exc:
            raise BuildFailed(str(exc)) from None
        if code != 0 or not target.is_dir():
            raise BuildFailed(f"installing the packages failed (pip exit code {code}); see the build log")

    async def _javascript(self, packages: list[str], layer: Path, work: Path, log_path: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise BuildFailed("npm is not installed on the server (on Debian: apt-get install npm)")
        # The server's own secrets (CELLBOX_API_KEY...) are none of npm's business.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELLBOX_")}
        env["npm_config_update_notifier"] = "false"
        argv = [
            npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-save",
            "--prefix", str(layer), "--cache", str(work / "npm-cache"), *self.settings.npm_args, "--", *packages,
        ]
        code = await self._step(log_path, argv, env)
        if code != 0:
            raise BuildFailed(f"installing the packages failed (npm exit code {code}); see the build log")
        for leftover in ("package.json", "package-lock.json"):
            (layer / leftover).unlink(missing_ok=True)


def note(path: Path, line: str) -> None:
    """A line of the build log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"[{time.strftime('%H:%M:%S')}] cellbox: {line}\n")
