"""One run at a time per root: an advisory lock file held for the whole run.

The lock is ``fcntl.flock`` on ``<root>/.graph-migrate.lock``: the kernel releases it when its
holder dies, even by SIGKILL, so a stale lock is never a problem to take over. The file names its
holder (host and PID) so the refused run can say who has it. It is removed when the run ends.
"""

from __future__ import annotations

import fcntl
import os
import socket
from types import TracebackType

from migrate.errors import MigrateError

LOCK_NAME = ".graph-migrate.lock"


class LockedError(MigrateError):
    """Another run holds the root's lock."""


class RootLock:
    """Exclusive lock on a Docker root for the duration of a ``with`` block."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, LOCK_NAME)
        self._fd: int | None = None

    def __enter__(self) -> RootLock:
        try:
            return self._take()
        except OSError as exc:
            # A read-only or full root: say so in one line, before anything else is written.
            raise MigrateError(f"{self.path}: cannot take the lock: {exc.strerror}") from exc

    def _take(self) -> RootLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise LockedError(
                    f"{self.path} is held by another graph-migrate run ({holder})"
                ) from None
            # The previous holder may have removed the file between our open and our lock;
            # then we hold a lock on a name nobody else will see, so start over.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def is_held(root: str) -> bool:
    """Whether a live run holds ``root``'s lock; creates nothing when none does."""
    try:
        fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the shared lock, if we got it
    return False


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
