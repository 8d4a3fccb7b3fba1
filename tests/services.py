"""Real third-party services for integration tests, started in temporary directories.

Each service runs on a unix socket or loopback port of its own and is stopped by PID when the
test ends. None of them is mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_tool


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM ``process``, wait for it to go, SIGKILL it if it will not.

    Waiting on the child itself (not polling its PID) reaps it: an exited but unreaped child
    still answers signals, which made every stop wait for the whole timeout.
    """
    try:
        os.kill(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


@dataclass(frozen=True)
class Docker:
    """A running dockerd and the client command that talks to it."""

    socket: str
    data_root: Path
    log: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/docker", "-H", f"unix://{self.socket}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )


@contextmanager
def dockerd(data_root: Path, driver: str = "vfs") -> Iterator[Docker]:
    """Start Debian's dockerd on ``data_root`` with no network, and stop it by PID afterwards."""
    require_tool("dockerd", "docker.io")
    # Socket paths are limited to 108 bytes: keep the exec root short.
    run_dir = Path(tempfile.mkdtemp(prefix="gmd.", dir="/tmp"))
    socket = str(run_dir / "d.sock")
    log = run_dir / "dockerd.log"
    command = [
        "dockerd", "--storage-driver", driver, "--data-root", str(data_root),
        "--exec-root", str(run_dir / "x"), "--pidfile", str(run_dir / "d.pid"),
        "--iptables=false", "--ip6tables=false", "--bridge=none",
        "--host", f"unix://{socket}",
    ]  # fmt: skip
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    docker = Docker(socket, data_root, log)
    try:
        deadline = time.monotonic() + 60
        while docker("version", check=False).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield docker
    finally:
        _stop(process)


@dataclass(frozen=True)
class Containerd:
    """A running containerd and the ``ctr`` command that talks to it."""

    socket: str
    log: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", self.socket, "--namespace", "graph-migrate-test", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )


@contextmanager
def containerd() -> Iterator[Containerd]:
    """Start the containerd that comes with docker.io, with its own root, state and socket."""
    require_tool("containerd", "containerd")
    require_tool("ctr", "containerd")
    run_dir = Path(tempfile.mkdtemp(prefix="gmc.", dir="/tmp"))
    socket = str(run_dir / "c.sock")
    config = run_dir / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{run_dir / "root"}"\n'
        f'state = "{run_dir / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    log = run_dir / "containerd.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    client = Containerd(socket, log)
    try:
        deadline = time.monotonic() + 60
        while client("version", check=False).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield client
    finally:
        _stop(process)
        shutil.rmtree(run_dir, ignore_errors=True)
