"""Real third-party services for integration tests, started in temporary directories.

Each service runs on a unix socket or loopback port of its own and is stopped by PID when the
test ends. None of them is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_tool


def _stop(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM ``pid``, wait for it to go, SIGKILL it if it will not."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


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
        _stop(process.pid)
        process.wait(timeout=60)
