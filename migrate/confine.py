"""Opening a layer's files by tar entry name without ever leaving the layer's directory.

A tar-split stream names the files its replay reads. Docker joins those names to the layer
directory and follows symlinks on the way, so a crafted stream, or a layer holding a symlink,
could make a replay read ``/etc/shadow`` or another layer's files into a diff ID (spec
tarsplit-and-drivers.md §B.6, issue 6). Here every path component is opened relative to its
parent with ``O_NOFOLLOW``: nothing but real directories and a regular file beneath the root
is ever opened.
"""

from __future__ import annotations

import errno
import os
import stat
from types import TracebackType
from typing import BinaryIO

from migrate.errors import ConfinementError, TarSplitError
from migrate.tarsplit import clean_name, quote_name

# The root itself may not be a symlink either: a layer directory swapped for one is refused.
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)
# O_NONBLOCK: opening a fifo must not wait for a writer; fstat refuses it right after.
_LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ConfinedRoot:
    """A layer's payload root; opens regular files strictly beneath it (issue 6).

    Names are cleaned the way Go's ``filepath.Join(root, name)`` cleans them, so ``/a``, ``./a``
    and ``a`` open the same file. A name whose ``..`` components climb above the root, a
    symlink anywhere on the path and a leaf that is not a regular file are refused with
    ConfinementError; a missing file raises TarSplitError. Names are bytes, as in the tar.

    The directories leading to the last opened file stay open, each opened beneath the one
    before it, because tar order keeps a directory's files together and visits directories
    depth first: a file in a new directory costs one ``openat`` per new path component. Not
    safe for use by several threads at once; close() releases everything.

    NOTE: a device node as leaf is opened (non-blocking) before fstat refuses it, which runs
    the device driver's open; nothing is ever read from it.
    """

    def __init__(self, root: str | bytes) -> None:
        self._root = os.fsencode(root)
        try:
            self._root_fd = os.open(root, _ROOT_FLAGS)
        except OSError as error:
            shown = quote_name(self._root)
            raise TarSplitError(f"cannot open layer root {shown}: {error.strerror}") from None
        # The open directories from the root down to the last file's: (cleaned path, fd).
        self._chain: list[tuple[bytes, int]] = []
        self._dir_key = b""  # cleaned directory part of the last name; b"" is the root
        self._dir_fd = self._root_fd

    def open(self, name: bytes) -> BinaryIO:
        """The regular file ``name`` beneath the root, opened for reading (unbuffered).

        Raises:
            ConfinementError: ``name`` leads above the root or through a symlink, or is not a
                regular file.
            TarSplitError: the file or one of its directories is missing or cannot be opened.
        """
        fd = self.open_fd(name)
        try:
            return open(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def open_fd(self, name: bytes) -> int:
        """Like open(), but a bare descriptor, which the caller must close."""
        directory, _, leaf = _confined_path(name).rpartition(b"/")
        dir_fd = self._dir_fd if directory == self._dir_key else self._enter(directory, name)
        try:
            fd = os.open(leaf, _LEAF_FLAGS, dir_fd=dir_fd)
        except OSError as error:
            raise _refusal(error, dir_fd, leaf, name) from None

        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        if regular:
            return fd
        os.close(fd)
        raise ConfinementError(f"layer file {quote_name(name)} is not a regular file")

    def close(self) -> None:
        """Release the root and the cached directories; calling it again does nothing."""
        if self._root_fd < 0:
            return
        self._keep(0)
        os.close(self._root_fd)
        self._root_fd = self._dir_fd = -1

    def __enter__(self) -> ConfinedRoot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _enter(self, directory: bytes, name: bytes) -> int:
        """Open ``directory`` (cleaned, relative) from its deepest open ancestor; cache it."""
        kept = 0
        for key, _ in self._chain:
            if not directory.startswith(key) or directory[len(key) : len(key) + 1] not in (
                b"",
                b"/",
            ):
                break
            kept += 1
        self._keep(kept)
        fd = self._chain[-1][1] if self._chain else self._root_fd
        path = self._chain[-1][0] if self._chain else b""
        rest = directory[len(path) :].lstrip(b"/")
        for part in rest.split(b"/") if rest else ():
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                raise _refusal(error, fd, part, name) from None
            path = path + b"/" + part if path else part
            self._chain.append((path, fd))
        self._dir_key, self._dir_fd = directory, fd
        return fd

    def _keep(self, count: int) -> None:
        """Close the cached directories below the first ``count``."""
        while len(self._chain) > count:
            os.close(self._chain.pop()[1])
        self._dir_key, self._dir_fd = self._chain[-1] if self._chain else (b"", self._root_fd)


def _confined_path(name: bytes) -> bytes:
    """``name`` cleaned and made relative to the root; refuse one that leads above it."""
    path = clean_name(name.lstrip(b"/"))
    if path == b".." or path.startswith(b"../"):
        raise ConfinementError(f"layer file {quote_name(name)} lies outside the layer root")
    if path == b".":
        raise ConfinementError(f"layer file {quote_name(name)} is not a regular file")
    return path


def _refusal(error: OSError, dir_fd: int, part: bytes, name: bytes) -> TarSplitError:
    """The error for a failed open of the component ``part`` of ``name``."""
    if error.errno == errno.ENOENT:
        return TarSplitError(f"layer file {quote_name(name)} is missing")
    try:
        mode = os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return ConfinementError(
            f"layer file {quote_name(name)} leads through the symlink {quote_name(part)}"
        )
    if error.errno in (errno.ENXIO, errno.ELOOP, errno.EOPNOTSUPP) and mode:
        return ConfinementError(f"layer file {quote_name(name)} is not a regular file")
    return TarSplitError(f"cannot open layer file {quote_name(name)}: {error.strerror}")
