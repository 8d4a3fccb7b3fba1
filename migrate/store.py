"""Where the migration's output goes: the real root, or a recorder for dry runs.

The engine never writes a file itself; it hands every output to a :class:`Target`. The real
target writes each file atomically (temporary file in the same directory, fsync, rename, fsync of
the directory) with an exact mode whatever the umask, and leaves a file alone when it already
holds the same bytes, so a second run changes nothing. The dry-run target records what would be
written and answers reads from that record first, so the same engine code plans and audits.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from migrate.errors import TargetError
from migrate.faults import checkpoint

DIR_MODE = 0o700
_COPY_CHUNK = 1 << 20

# What an interrupted run can leave behind: the temporary of an atomic write (``.<name>.`` plus
# mkstemp's eight characters and ``.tmp``), a regenerated tar-split being written
# (``regenerated-<id>.json.gz.<pid>.tmp``) and a layer being staged (``layer-<id>``).
_TEMPORARY = re.compile(r"\A\.(?P<base>.+)\.[a-z0-9_]{8}\.tmp\Z")
_REGENERATING = re.compile(r"\Aregenerated-[0-9a-f]{64}\.json\.gz\.[0-9]+\.tmp\Z")
_STAGING = re.compile(r"\Alayer-[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """A file a dry run would have written."""

    path: str
    size: int
    sha256: str
    mode: int


class Target(Protocol):
    """The destination of every file the migration writes, relative to the Docker root."""

    def read(self, path: str) -> bytes | None:
        """Current content of ``path``, or None when there is none."""

    def write(self, path: str, data: bytes, mode: int) -> None:
        """Make ``path`` hold exactly ``data`` with permission bits ``mode``."""

    def copy(self, path: str, source: str, mode: int) -> None:
        """Make ``path`` a byte copy of the file ``source`` (an absolute path)."""

    def makedirs(self, path: str, mode: int) -> None:
        """Create the directory ``path`` and any missing parents with ``mode``."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (as written by this run or found on disk)."""

    def stream(self, path: str, mode: int) -> AbstractContextManager[BinaryIO]:
        """A file to write ``path`` through; it appears under its name only when complete."""

    def local_path(self, path: str) -> str:
        """Where the content written for ``path`` can be read back from on this machine."""

    def remove(self, path: str) -> None:
        """Remove the file ``path`` if this run wrote it (or it exists)."""

    def remove_tree(self, path: str) -> None:
        """Remove the directory ``path`` and everything below it, if it exists."""

    def rename_dir(self, source: str, dest: str) -> None:
        """Move the complete directory ``source`` to ``dest`` in one atomic step."""

    def discard_leftovers(self, path: str, *, bases: tuple[str, ...] | None = None) -> list[str]:
        """Remove what an interrupted run left in the directory ``path``; return those paths.

        Without ``bases`` every temporary below ``path`` goes (the tree must be the tool's own);
        with ``bases`` only the temporaries of those file names directly in ``path``.
        """


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file_bytes(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as existing:
            return existing.read(len(data) + 1) == data
    except FileNotFoundError:
        return False


class RealTarget:
    """Writes into a Docker root, atomically and idempotently."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path)

    def read(self, path: str) -> bytes | None:
        try:
            with open(self._abs(path), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._abs(path))

    def makedirs(self, path: str, mode: int) -> None:
        full = self._abs(path)
        if os.path.isdir(full):
            return
        self.makedirs(os.path.dirname(path), mode) if os.path.dirname(path) else None
        try:
            os.mkdir(full, mode)
            os.chmod(full, mode)  # mkdir is subject to the umask; the layout's modes are not
        except FileExistsError:
            pass
        except OSError as exc:
            raise TargetError(path, exc.strerror or str(exc)) from exc

    def write(self, path: str, data: bytes, mode: int) -> None:
        full = self._abs(path)
        if _same_file_bytes(full, data) and (os.stat(full).st_mode & 0o7777) == mode:
            return
        with self._temporary(path, mode) as tmp:
            tmp.write(data)

    def copy(self, path: str, source: str, mode: int) -> None:
        full = self._abs(path)
        if os.path.exists(full) and _files_equal(full, source):
            return
        with self._temporary(path, mode) as tmp, open(source, "rb") as src:
            shutil.copyfileobj(src, tmp, _COPY_CHUNK)

    @contextmanager
    def _temporary(self, path: str, mode: int) -> Iterator[BinaryIO]:
        """A temporary file beside ``path`` that replaces it on success, atomically.

        Raises:
            TargetError: the file could not be written (a full disk, a read-only file system);
                nothing is left under ``path``'s name or beside it.
        """
        try:
            with self._temporary_file(path, mode) as tmp:
                yield tmp
        except OSError as exc:
            raise TargetError(path, exc.strerror or str(exc)) from exc

    @contextmanager
    def _temporary_file(self, path: str, mode: int) -> Iterator[BinaryIO]:
        full = self._abs(path)
        directory, base = os.path.split(full)
        fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as tmp:
                yield tmp
                tmp.flush()
                os.fchmod(tmp.fileno(), mode)
                os.fsync(tmp.fileno())
            checkpoint("before-rename")
            os.rename(tmp_path, full)
        except BaseException:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(directory)
        checkpoint("after-rename")

    def stream(self, path: str, mode: int) -> AbstractContextManager[BinaryIO]:
        return self._temporary(path, mode)

    def local_path(self, path: str) -> str:
        return self._abs(path)

    def remove(self, path: str) -> None:
        try:
            os.unlink(self._abs(path))
        except FileNotFoundError:
            pass

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(self._abs(path), ignore_errors=True)

    def rename_dir(self, source: str, dest: str) -> None:
        try:
            os.rename(self._abs(source), self._abs(dest))
            fsync_dir(os.path.dirname(self._abs(dest)))
        except OSError as exc:
            raise TargetError(dest, exc.strerror or str(exc)) from exc

    def discard_leftovers(self, path: str, *, bases: tuple[str, ...] | None = None) -> list[str]:
        removed: list[str] = []
        full = self._abs(path)
        if bases is not None:
            for name in _names(full):
                match = _TEMPORARY.match(name)
                if match and match["base"] in bases:
                    self.remove(os.path.join(path, name))
                    removed.append(os.path.join(path, name))
            return removed
        for directory, dirs, files in os.walk(full):
            relative = os.path.relpath(directory, self.root)
            for name in [d for d in dirs if _STAGING.match(d)]:
                dirs.remove(name)
                self.remove_tree(os.path.join(relative, name))
                removed.append(os.path.join(relative, name))
            for name in files:
                if _TEMPORARY.match(name) or _REGENERATING.match(name):
                    self.remove(os.path.join(relative, name))
                    removed.append(os.path.join(relative, name))
        return removed


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _files_equal(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk_a, chunk_b = fa.read(_COPY_CHUNK), fb.read(_COPY_CHUNK)
            if chunk_a != chunk_b:
                return False
            if not chunk_a:
                return True


def _fields(planned: PlannedFile) -> tuple[int, str, int]:
    return planned.size, planned.sha256, planned.mode


class DryRunTarget:
    """Records what a run would write; writes nothing under the root.

    With ``see_root`` false, files already under the root (from an earlier migration in place)
    are ignored: the run plans as if the root held legacy data only.
    """

    def __init__(self, root: str, *, see_root: bool = True) -> None:
        self.root = root
        self.see_root = see_root
        self.planned: dict[str, PlannedFile] = {}
        self._contents: dict[str, bytes] = {}
        self._dirs: set[str] = set()
        self._local: dict[str, str] = {}
        self._scratch: str | None = None

    def read(self, path: str) -> bytes | None:
        if path in self._contents or not self.see_root:
            return self._contents.get(path)
        try:
            with open(os.path.join(self.root, path), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        if path in self.planned or path in self._dirs:
            return True
        return self.see_root and os.path.lexists(os.path.join(self.root, path))

    def makedirs(self, path: str, mode: int) -> None:
        self._dirs.add(path)

    def write(self, path: str, data: bytes, mode: int) -> None:
        self._contents[path] = data
        digest = hashlib.sha256(data).hexdigest()
        self.planned[path] = PlannedFile(path, len(data), digest, mode)

    def copy(self, path: str, source: str, mode: int) -> None:
        digest = hashlib.sha256()
        size = 0
        with open(source, "rb") as src:
            while chunk := src.read(_COPY_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        self.planned[path] = PlannedFile(path, size, digest.hexdigest(), mode)

    @contextmanager
    def stream(self, path: str, mode: int) -> Iterator[BinaryIO]:
        local = self.local_path(path)
        with open(local, "wb") as fh:
            yield fh
        self._local[path] = local
        self.copy(path, local, mode)

    def local_path(self, path: str) -> str:
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="graph-migrate-dry-run.")
        return self._local.get(path) or os.path.join(
            self._scratch, hashlib.sha256(path.encode()).hexdigest()
        )

    def remove(self, path: str) -> None:
        self.planned.pop(path, None)
        self._contents.pop(path, None)

    def remove_tree(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        for name in [p for p in self.planned if p.startswith(prefix)]:
            self.remove(name)
        self._dirs = {d for d in self._dirs if d != path and not d.startswith(prefix)}

    def rename_dir(self, source: str, dest: str) -> None:
        prefix = source.rstrip("/") + "/"
        for name in [p for p in self.planned if p.startswith(prefix)]:
            moved = dest + "/" + name[len(prefix) :]
            self.planned[moved] = PlannedFile(moved, *_fields(self.planned.pop(name)))
            if name in self._contents:
                self._contents[moved] = self._contents.pop(name)
        self._dirs.discard(source)
        self._dirs.add(dest)

    def discard_leftovers(self, path: str, *, bases: tuple[str, ...] | None = None) -> list[str]:
        return []  # a dry run removes nothing, and leaves nothing behind to remove

    def close(self) -> None:
        """Delete the scratch files a dry run produced outside the root."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
