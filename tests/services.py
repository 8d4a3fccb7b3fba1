"""Real third-party services for integration tests, started in temporary directories.

Each service runs on a unix socket or loopback port of its own and is stopped by PID when the
test ends. None of them is mocked.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
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


@contextmanager
def _serving(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, run_dir: Path
) -> Iterator[None]:
    """Wait up to a minute for ``process`` to answer ``ready``; stop it and remove ``run_dir``
    when the block ends."""
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                name = os.path.basename(str(process.args[0]))  # type: ignore[index]
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        _stop(process)
        shutil.rmtree(run_dir, ignore_errors=True)


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
    with _serving(process, lambda: docker("version", check=False).returncode == 0, log, run_dir):
        yield docker


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
    with _serving(process, lambda: client("version", check=False).returncode == 0, log, run_dir):
        yield client


@dataclass
class Postgres:
    """A running PostgreSQL server of a throwaway cluster, on a unix socket directory only."""

    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", **options: str) -> str:
        """A ``--ledger`` URL for ``database``; extra libpq ``options`` go in the query."""
        query = "".join(f"&{key}={value}" for key, value in options.items())
        return f"postgresql+psycopg://gm@/{database}?host={self.socket_dir}{query}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement in autocommit mode; its rows, if it returns any."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), user="gm", dbname=database, autocommit=True
        ) as connection:
            cursor = connection.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    def start(self) -> None:
        """Start the server (again) on the same data directory; return once it accepts."""
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        command += ["-k", str(self.socket_dir), "-c", "listen_addresses=", "-F"]
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(
                _as_postgres(command), stdout=log_file, stderr=subprocess.STDOUT
            )
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", str(self.socket_dir)]
        deadline = time.monotonic() + 60
        while subprocess.run(ready, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def crash(self) -> None:
        """Kill the server as a crash would: immediate shutdown, no checkpoint."""
        self._signal(signal.SIGQUIT)

    def stop(self) -> None:
        """Fast shutdown: disconnect every client, then stop."""
        self._signal(signal.SIGINT)

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        process.send_signal(signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` user when we are root (the server refuses root).

    setpriv execs the command, so the PID of the child is the server's own.
    """
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *command]


def _postgres_bin() -> Path:
    """The newest Debian PostgreSQL ``bin`` directory, else the one holding ``initdb`` on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    initdb = str(found[-1]) if found else "initdb"
    return Path(require_tool(initdb, "postgresql")).resolve().parent


@contextmanager
def postgresql() -> Iterator[Postgres]:
    """A throwaway cluster (superuser ``gm``, trust auth) made by initdb, stopped by PID."""
    bin_dir = _postgres_bin()
    # Socket paths are limited to 108 bytes: the directory plus "/.s.PGSQL.5432".
    base = Path(tempfile.mkdtemp(prefix="gmpg.", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(base, pwd.getpwnam("postgres").pw_uid, -1)
    server = Postgres(bin_dir, base / "data", base, base / "postgres.log")
    initdb = [str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", "gm", "-A", "trust"]
    initdb += ["-E", "UTF8", "--no-sync", "--no-instructions"]
    try:
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=120)
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
