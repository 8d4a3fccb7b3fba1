"""Regenerating a layer's tar from its files when its recorded tar-split cannot be replayed.

Docker 1.10 falls back to the graph driver's ``Diff`` when a layer has no usable tar-split
(layers made before Docker 1.8, a CRC mismatch, a missing file): the tar is generated again from
the layer's files, hashed for the diff ID and recorded as a fresh tar-split in the same pass
(docker-1.10-migration.md §3.3 step 2). This module does the same for both kinds of driver:
:func:`regenerate_aufs` archives an aufs branch directory without aufs' own meta files
(tarsplit-and-drivers.md C.1), :func:`regenerate_naive` archives a whole layer, or its changes
against the parent layer's tree, the way Docker's naive differ does (C.7).

The bytes follow Docker's ``pkg/archive`` on Go 1.5's ``archive/tar`` (C.8): a pre-order walk
with names sorted bytewise per directory, the root itself left out, directories named with a
trailing ``/``, S_IF type bits in the mode, empty user and group names, mtimes cut to whole
seconds, old-style device numbers, ``security.capability`` as the only extended attribute, hard
links for every non-directory with more than one link, ustar prefix splits or PAX records for
long names, base-256 numbers with sticky GNU magic, and exactly 1024 zero bytes at the end.

Docker's own regenerated tars cannot be reproduced, not even by Docker (C.9), so no tool can
match them byte for byte; what matters is that the recorded tar-split reassembles to exactly the
hashed bytes. Where Docker is not deterministic, or not safe, this module departs from it on
purpose:

* PAX extended headers are named with the fixed string ``PaxHeaders.0`` instead of the PID.
* PAX records are written sorted by key instead of in Go's random map order.
* A naive-diff whiteout carries the whole-second mtime of the deleted path's parent directory in
  the layer tree instead of the time of export, so a resumed run writes identical bytes.
* Hard links are matched by device and inode instead of by inode alone, so files on two devices
  beneath one layer (nested btrfs subvolumes) are never joined.
* Once a base-256 number has switched the archive to GNU magic, a long ASCII name goes to a PAX
  record instead of the ustar prefix field, which GNU tar ignores under GNU magic.
* A file that vanishes or changes while it is archived, and a missing layer directory, stop the
  regeneration with :class:`LayerContentError`; Docker logs such errors and writes on.
* Symbolic links beneath the given directories are never followed: every file is opened
  beneath a pinned directory descriptor, so a layer that changes while it is read cannot make
  this module read outside it. The given directories themselves may not be symlinks; the
  directories above them are trusted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO, NamedTuple

from migrate import tarsplit
from migrate.digest import DiffID
from migrate.errors import LayerContentError

log = logging.getLogger(__name__)

Writer = Callable[[bytes], object]
_RecorderCall = tuple[bytes | None, bytes, int, int | None]  # a segment, or a file entry

_BLOCK = 512
_CHUNK = 1 << 20
_END_OF_ARCHIVE = bytes(2 * _BLOCK)
_USTAR_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_NAME_SIZE = 100
_PREFIX_SIZE = 155
_MAX_MTIME_NS = ((1 << 33) - 1) * 1_000_000_000  # 11 octal digits of seconds (C.8)
_PAX_DIRECTORY = b"PaxHeaders.0"
_NON_ASCII = bytes(range(0x80, 0x100))
_NO_OWNER_NAMES = bytes(64)  # uname and gname: Go 1.5 leaves them empty
_CAPABILITY = "security.capability"
_CAPABILITY_RECORD = b"SCHILY.xattr.security.capability"
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)

_AUFS_META_PREFIX = b".wh..wh."
_AUFS_OPAQUE = b".wh..wh..opq"
_WHITEOUT_PREFIX = b".wh."

_TYPEFLAGS = {
    stat.S_IFREG: b"0",
    stat.S_IFLNK: b"2",
    stat.S_IFCHR: b"3",
    stat.S_IFBLK: b"4",
    stat.S_IFDIR: b"5",
    stat.S_IFIFO: b"6",
    stat.S_IFSOCK: b"\x00",  # Go leaves a socket's typeflag at its zero value (C.8)
}
_REGULAR = b"0"
_HARD_LINK = b"1"
_WHITEOUT = b"\x00"  # a naive-diff whiteout is a header with every unset field zero (C.7)
_PAX = b"x"

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# NOTE: O_NONBLOCK and O_NOCTTY keep a file swapped for a fifo or a terminal from blocking or
# becoming our terminal before fstat shows it is no longer the regular file that was listed.
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def regenerate_aufs(
    diff_dir: bytes | str, tar_split_out: BinaryIO, write: Writer | None = None
) -> tarsplit.Assembly:
    """Regenerate an aufs layer's tar from its branch directory ``aufs/diff/<id>``.

    Like Docker 1.9/1.10's aufs ``Diff`` (C.1), this archives the branch without any top-level
    entry named ``.wh..wh.*`` (the whiteout base file, the pseudo-link and orphan directories,
    with everything beneath them) except ``.wh..wh..opq``. Whiteouts stay ordinary entries, so
    whiteouts that aufs made as hard links of one base file appear as hard links to the first.

    The tar is hashed, passed to ``write`` if given, and recorded as a gzip'd tar-split on
    ``tar_split_out`` (left open) in one pass; the recording reassembles to exactly the hashed
    bytes. Raises LayerContentError when the directory is missing or changes while it is read.
    """
    root = os.fsencode(diff_dir)
    with _RootDirectory(root) as root_fd, _TarSink(tar_split_out, write) as sink:
        _archive_tree(_Archiver(root, sink), root_fd, _is_aufs_meta)
        return sink.close(root)


def regenerate_naive(
    layer_dir: bytes | str,
    parent_dir: bytes | str | None,
    tar_split_out: BinaryIO,
    write: Writer | None = None,
) -> tarsplit.Assembly:
    """Regenerate a layer's tar the way Docker's naive differ does (C.7).

    Without ``parent_dir`` the tar holds every entry beneath ``layer_dir``. With it, the tar
    holds the changes between the parent's tree and the layer's tree, in full-path byte order:
    added and modified entries in full, a deleted path as a bare ``.wh.<name>`` header (once,
    however much was beneath it), and every unchanged directory that has changes beneath it.

    Hashing, ``write`` and the tar-split recording work as in :func:`regenerate_aufs`. Raises
    LayerContentError when a directory is missing or a tree changes while it is read.
    """
    root = os.fsencode(layer_dir)
    with _RootDirectory(root) as root_fd, _TarSink(tar_split_out, write) as sink:
        archiver = _Archiver(root, sink)
        if parent_dir is None:
            _archive_tree(archiver, root_fd, None)
            return sink.close(root)

        parent = os.fsencode(parent_dir)
        with _RootDirectory(parent) as parent_fd:
            changes = _Differ(parent, root).changes(parent_fd, root_fd)
        _export_changes(archiver, root_fd, changes)
        return sink.close(root)


def _is_aufs_meta(name: bytes) -> bool:
    """Whether a top-level name is excluded by the aufs patterns ``.wh..wh.*``, ``!.wh..wh..opq``.

    Docker matches the patterns against a path's first component only (C.1), so the same test
    on a top-level directory's name excludes everything beneath it.
    """
    return name.startswith(_AUFS_META_PREFIX) and name != _AUFS_OPAQUE


class _RootDirectory:
    """An open descriptor of a layer directory, closed when the ``with`` block ends."""

    def __init__(self, path: bytes) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> int:
        try:
            self._fd = os.open(self._path, _OPEN_DIR)
        except OSError as exc:
            shown = _shown(self._path)
            raise LayerContentError(f"layer directory {shown}: {exc.strerror}") from exc
        return self._fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)


# --- header encoding -----------------------------------------------------------------------


class _Header(NamedTuple):
    """The fields of one tar entry, before encoding."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0


class _HeaderEncoder:
    """Encodes headers as Go 1.5's archive/tar writer does, remembering its GNU magic (C.8)."""

    def __init__(self) -> None:
        self._gnu = False

    def encode(self, header: _Header, capability: bytes | None = None) -> bytes:
        """The 512-byte block of ``header``, preceded by its PAX extended header if it needs one.

        ``capability`` is the raw ``security.capability`` attribute, carried as a PAX record.
        """
        records: dict[bytes, bytes] = {}
        name = _name_field(header.name, b"path", records)
        linkname = _name_field(header.linkname, b"linkpath", records)
        numbers = self._numbers(header)
        magic = _GNU_MAGIC if self._gnu else _USTAR_MAGIC
        devices = b"%07o\x00%07o\x00" % (header.devmajor, header.devminor)

        # Go tries the ustar split only when the name is the one field that did not fit.
        prefix = b""
        if records and records.keys() == {b"path"} and not self._gnu:
            split = _split_long_name(header.name)
            if split is not None:
                prefix, name = split
                del records[b"path"]

        # The checksum counts its own field as eight spaces; zero padding adds nothing.
        fields = (name, numbers, header.typeflag, linkname, magic, devices, prefix)
        checksum = sum(b"".join(fields)) + 8 * 0x20
        block = b"".join(
            (
                name.ljust(_NAME_SIZE, b"\x00"),
                numbers,
                b"%06o\x00 " % checksum,
                header.typeflag,
                linkname.ljust(_NAME_SIZE, b"\x00"),
                magic,
                _NO_OWNER_NAMES,
                devices,
                prefix.ljust(_PREFIX_SIZE + 12, b"\x00"),
            )
        )

        if capability is not None:
            records[_CAPABILITY_RECORD] = capability
        if not records:
            return block
        return self._pax_header(header, records) + block

    def _numbers(self, header: _Header) -> bytes:
        """The mode, uid, gid, size and mtime fields, bytes 100 to 148."""
        if header.uid < 8**7 and header.gid < 8**7 and header.size < 8**11:
            values = (header.mode, header.uid, header.gid, header.size, header.mtime)
            return b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00" % values
        return b"%07o\x00%b%b%b%011o\x00" % (
            header.mode,
            self._number(header.uid, 8),
            self._number(header.gid, 8),
            self._number(header.size, 12),
            header.mtime,
        )

    def _number(self, value: int, width: int) -> bytes:
        """``value`` in octal if it fits, else base-256, which switches to GNU magic for good."""
        if value < 8 ** (width - 1):
            return b"%0*o\x00" % (width - 1, value)
        self._gnu = True
        number = bytearray(value.to_bytes(width, "big"))
        number[0] |= 0x80
        return bytes(number)

    def _pax_header(self, header: _Header, records: dict[bytes, bytes]) -> bytes:
        """The ``x`` header and padded records that carry what the ustar header cannot."""
        body = b"".join(_pax_record(key, records[key]) for key in sorted(records))
        extended = _Header(_pax_name(header.name), 0, 0, 0, len(body), header.mtime, _PAX)
        return self.encode(extended) + body + bytes(-len(body) % _BLOCK)


def _name_field(value: bytes, key: bytes, records: dict[bytes, bytes]) -> bytes:
    """What a 100-byte name field holds: ``value``, or nothing when it goes to PAX (C.8).

    Go's writer moves a value to PAX when it is too long or not ASCII, invalid UTF-8 included.
    """
    if len(value) > _NAME_SIZE or not value.isascii():
        records[key] = value
        return b""
    return value


def _split_long_name(name: bytes) -> tuple[bytes, bytes] | None:
    """A long ASCII name as ustar prefix and name fields, or None when it cannot be split."""
    if len(name) <= _NAME_SIZE or not name.isascii():
        return None
    end = len(name)
    if end > _PREFIX_SIZE + 1:
        end = _PREFIX_SIZE + 1
    elif name.endswith(b"/"):
        end -= 1  # a directory's own trailing slash is not a split point
    cut = name.rfind(b"/", 0, end)
    suffix_size = len(name) - cut - 1
    if cut <= 0 or not 0 < suffix_size <= _NAME_SIZE or cut > _PREFIX_SIZE:
        return None
    return name[:cut], name[cut + 1 :]


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``<length> <key>=<value>\\n`` record, the length counting its own digits."""
    text = key + b"=" + value
    length = len(text) + 2
    length += len(str(length))
    record = b"%d %s\n" % (length, text)
    if len(record) != length:  # the digits themselves pushed the length over a power of ten
        record = b"%d %s\n" % (len(record), text)
    return record


def _pax_name(name: bytes) -> bytes:
    """The ``x`` header's name: ``<dir>/PaxHeaders.0/<base>``, ASCII only, at most 100 bytes."""
    head, _, base = name.rpartition(b"/")  # a directory's base is empty, as Go splits it
    joined = b"/".join(part for part in (head, _PAX_DIRECTORY, base) if part)
    return joined.translate(None, _NON_ASCII)[:_NAME_SIZE]


def _mtime(mtime_ns: int) -> int:
    """Whole seconds of an mtime, or 0 outside what 11 octal digits can hold (C.8)."""
    if 0 <= mtime_ns <= _MAX_MTIME_NS:
        return mtime_ns // 1_000_000_000
    return 0


def _device_numbers(rdev: int) -> tuple[int, int]:
    """Major and minor numbers in the old encoding Docker's archive package uses (C.8)."""
    return (rdev >> 8) & 0xFFF, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


# --- the stream ----------------------------------------------------------------------------


class _Recording:
    """Hashes the generated tar and records its tar-split on a helper thread (issue 7).

    The caller's thread copies tar bytes into one of two fixed batches and notes the recorder
    calls that go with them; each full batch goes to the helper thread, which hashes it and
    then makes the recorder calls. Hashing and deflating run without the GIL there, so they
    overlap with reading files. An error on the helper thread is raised on the caller's thread
    at the next hand-over or by finish(). stop() must be called in every case, also after an
    error; it may be called again.
    """

    _BATCH = 2 << 20

    def __init__(self, tar_split_out: BinaryIO) -> None:
        # Level 1 deflates these JSON lines about twice as fast as Go's default 6, for a stream
        # about a fifth larger; any level reads back the same (issue 7).
        self._recorder = tarsplit.Recorder(tar_split_out, level=1)
        self._sha256 = hashlib.sha256()
        self._error: BaseException | None = None
        self._full: queue.Queue[tuple[bytearray, int, list[_RecorderCall]] | None] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._free.put(bytearray(self._BATCH))
        self._batch = bytearray(self._BATCH)
        self._used = 0
        self._calls: list[_RecorderCall] = []
        self._thread = threading.Thread(target=self._run, name="tar-recording", daemon=True)
        self._thread.start()

    def segment(self, data: bytes) -> None:
        """Hash raw tar bytes and record them as a tar-split segment."""
        self.update(data)
        self._calls.append((data, b"", 0, None))

    def file(self, name: bytes, size: int, crc: int | None) -> None:
        """Record a tar-split file entry; its body goes through update()."""
        self._calls.append((None, name, size, crc))

    def update(self, data: bytes | memoryview) -> None:
        """Hash tar bytes; the caller may reuse ``data`` as soon as this returns."""
        end = self._used + len(data)
        if end <= self._BATCH:
            self._batch[self._used : end] = data
            self._used = end
            return
        view = memoryview(data)
        while view:
            if self._used == self._BATCH:
                self._hand_over()
            piece = view[: self._BATCH - self._used]
            self._batch[self._used : self._used + len(piece)] = piece
            self._used += len(piece)
            view = view[len(piece) :]

    def finish(self) -> str:
        """Finish the tar-split stream; return the hex sha256 of every byte hashed."""
        self._hand_over()
        self.stop()
        if self._error is not None:
            raise self._error
        self._recorder.close()
        return self._sha256.hexdigest()

    def stop(self) -> None:
        """Let the helper thread finish its work and wait for it."""
        if self._thread.is_alive():
            self._full.put(None)
            self._thread.join()

    def _hand_over(self) -> None:
        if self._error is not None:
            raise self._error
        self._full.put((self._batch, self._used, self._calls))
        self._batch = self._free.get()
        self._used = 0
        self._calls = []

    def _run(self) -> None:
        while (work := self._full.get()) is not None:
            batch, used, calls = work
            try:
                if self._error is None:
                    self._sha256.update(memoryview(batch)[:used])
                    self._replay(calls)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._free.put(batch)

    def _replay(self, calls: list[_RecorderCall]) -> None:
        for segment, name, size, crc in calls:
            if segment is not None:
                self._recorder.segment(segment)
            else:
                self._recorder.file(name, size, crc)


class _TarSink:
    """Sends the generated tar to sha256, the caller's writer and a tar-split recorder at once.

    Header bytes, together with the padding owed by the previous body, become one tar-split
    segment; a body is hashed and checksummed but recorded only as a file entry, the way
    tar-split's disassembler records a tar. Use it as a context manager and call close() to
    get the result.
    """

    def __init__(self, tar_split_out: BinaryIO, write: Writer | None) -> None:
        self._recording = _Recording(tar_split_out)
        self._write = write
        self._length = 0
        self._size = 0
        self._entries = 0
        self._padding = 0

    def __enter__(self) -> _TarSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._recording.stop()

    def add(
        self, raw_header: bytes, name: bytes, size: int = 0, body: Iterable[memoryview] = ()
    ) -> None:
        """Add one entry: its encoded header, then ``size`` bytes of ``body``."""
        self._segment(raw_header)
        crc = 0
        for chunk in body:
            self._recording.update(chunk)
            crc = tarsplit.crc64(chunk, crc)
            if self._write is not None:
                self._write(bytes(chunk))
        self._recording.file(name, size, crc if size else None)
        self._length += size
        self._size += size
        self._entries += 1
        self._padding = -size % _BLOCK

    def close(self, root: bytes) -> tarsplit.Assembly:
        """End the archive and the tar-split stream; return what was hashed."""
        self._segment(_END_OF_ARCHIVE)
        diff_id = DiffID("sha256", self._recording.finish())
        log.debug(
            "regenerated %d entries, %d bytes as %s from %s",
            self._entries,
            self._length,
            diff_id,
            _shown(root),
        )
        return tarsplit.Assembly(diff_id, self._size, self._length)

    def _segment(self, data: bytes) -> None:
        if self._padding:
            data = bytes(self._padding) + data
            self._padding = 0
        self._recording.segment(data)
        if self._write is not None:
            self._write(data)
        self._length += len(data)


# --- entries from files --------------------------------------------------------------------


class _Archiver:
    """Writes files beneath a layer directory as tar entries, as Docker's ``addTarFile`` does."""

    def __init__(self, root: bytes, sink: _TarSink) -> None:
        if not Path("/proc/self/fd").is_dir():
            # Extended attributes of entries we do not open are read through /proc/self/fd.
            raise LayerContentError(f"regenerating {_shown(root)}: /proc is not mounted")
        self.root = root
        self._sink = sink
        self._encoder = _HeaderEncoder()
        self._first_names: dict[tuple[int, int], bytes] = {}
        self._buffer = memoryview(bytearray(_CHUNK))

    def add_named(self, dir_fd: int, name: bytes, tar_name: bytes) -> int | None:
        """Write the entry ``name`` of ``dir_fd``; return an open descriptor if it is a directory.

        The caller closes the returned descriptor.
        """
        status = _lstat(dir_fd, name, self.root, tar_name)
        if not stat.S_ISDIR(status.st_mode):
            self._add(dir_fd, name, tar_name, status, None)
            return None
        child = _open_directory(dir_fd, name, status, self.root, tar_name)
        try:
            self._add(dir_fd, name, tar_name, status, child)
        except BaseException:
            os.close(child)
            raise
        return child

    def add_whiteout(self, name: bytes, mtime: int) -> None:
        """Write a bare naive-diff whiteout header for the tar name ``name``."""
        header = _Header(name, 0, 0, 0, 0, mtime, _WHITEOUT)
        self._sink.add(self._encoder.encode(header), name)

    def names(self, dir_fd: int, tar_prefix: bytes) -> list[bytes]:
        """The names in the directory ``dir_fd``, whose entries are named ``tar_prefix<name>``."""
        try:
            return sorted(map(os.fsencode, os.listdir(dir_fd)))
        except OSError as exc:
            raise LayerContentError(f"{self._shown(tar_prefix)}: {exc.strerror}") from exc

    def _add(
        self, dir_fd: int, name: bytes, tar_name: bytes, status: os.stat_result, fd: int | None
    ) -> None:
        header = self._header(dir_fd, name, tar_name, status)
        if header.typeflag != _REGULAR or header.size == 0:
            target: int | bytes = _proc_path(dir_fd, name) if fd is None else fd
            capability = _capability(target, self.root, tar_name)
            self._sink.add(self._encoder.encode(header, capability), header.name)
            return

        fd = _open_regular(dir_fd, name, status, self.root, tar_name)
        try:
            raw_header = self._encoder.encode(header, _capability(fd, self.root, tar_name))
            body = self._read(fd, header.size, tar_name)
            self._sink.add(raw_header, header.name, header.size, body)
        finally:
            os.close(fd)

    def _header(self, dir_fd: int, name: bytes, tar_name: bytes, status: os.stat_result) -> _Header:
        """The header fields Go's FileInfoHeader and Docker's tweaks give this entry (C.8)."""
        kind = stat.S_IFMT(status.st_mode)
        typeflag = _TYPEFLAGS.get(kind)
        if typeflag is None:
            raise LayerContentError(f"{self._shown(tar_name)}: unsupported file type {kind:o}")
        linkname = b""
        if kind == stat.S_IFDIR:
            tar_name += b"/"
        elif kind == stat.S_IFLNK:
            linkname = _readlink(dir_fd, name, self.root, tar_name)
        size = status.st_size if kind == stat.S_IFREG else 0
        major, minor = 0, 0
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            major, minor = _device_numbers(status.st_rdev)

        # Docker 1.10 links every non-directory with several links to its first name (C.8).
        if kind != stat.S_IFDIR and status.st_nlink > 1:
            key = (status.st_dev, status.st_ino)
            first = self._first_names.get(key)
            if first is None:
                self._first_names[key] = tar_name
            else:
                typeflag, linkname, size = _HARD_LINK, first, 0

        mtime = _mtime(status.st_mtime_ns)
        owner = (status.st_uid, status.st_gid)
        return _Header(
            tar_name, status.st_mode, *owner, size, mtime, typeflag, linkname, major, minor
        )

    def _read(self, fd: int, size: int, tar_name: bytes) -> Iterator[memoryview]:
        """Yield exactly ``size`` bytes of ``fd`` in chunks of one reused buffer.

        Raises LayerContentError if the file turns out shorter or longer than listed.
        """
        remaining = size
        probed = False
        while remaining:
            # Asking for one byte more than is left shows a grown file without another read.
            want = min(remaining + 1, _CHUNK)
            probed = want > remaining
            count = _read_into(fd, self._buffer[:want], self.root, tar_name)
            if count == 0 or count > remaining:
                raise LayerContentError(f"{self._shown(tar_name)}: size changed while read")
            remaining -= count
            yield self._buffer[:count]
        if not probed and _read_into(fd, self._buffer[:1], self.root, tar_name):
            raise LayerContentError(f"{self._shown(tar_name)}: size changed while read")

    def _shown(self, tar_name: bytes) -> str:
        return _shown(self.root, tar_name)


def _archive_tree(
    archiver: _Archiver, root_fd: int, excluded: Callable[[bytes], bool] | None
) -> None:
    """Write every entry beneath ``root_fd`` in filepath.Walk order (C.8).

    Pre-order, names sorted bytewise in each directory, the root itself left out; ``excluded``
    drops top-level names together with everything beneath them.
    """
    # TODO(#6): one descriptor stays open per directory level (two while diffing), so a tree
    # nested deeper than the open-file limit fails with EMFILE where Docker's path walk would not.
    stack = [(root_fd, b"", iter(archiver.names(root_fd, b"")))]
    try:
        while stack:
            dir_fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                if dir_fd != root_fd:
                    os.close(dir_fd)
                continue
            if not prefix and excluded is not None and excluded(name):
                continue
            child = archiver.add_named(dir_fd, name, prefix + name)
            if child is not None:
                child_prefix = prefix + name + b"/"
                try:
                    child_names = archiver.names(child, child_prefix)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, child_prefix, iter(child_names)))
    finally:
        for dir_fd, _, _ in stack:
            if dir_fd != root_fd:
                os.close(dir_fd)


# --- the naive differ ----------------------------------------------------------------------


class _Kind(Enum):
    ADD = "A"
    MODIFY = "C"
    DELETE = "D"


class _Change(NamedTuple):
    """One change of the layer against its parent; ``path`` starts with ``/``."""

    path: bytes
    kind: _Kind
    whiteout_mtime: int = 0


@dataclass(slots=True)
class _DirectoryPair:
    """A directory of the layer's tree being compared with the same path in the parent's tree."""

    path: bytes
    new_fd: int
    new: os.stat_result
    old_fd: int | None
    old: os.stat_result | None
    reported: bool  # already an Add or Modify of its own
    first_change: int
    names: Iterator[bytes] = field(default_factory=lambda: iter(()))


class _Differ:
    """Docker's ChangesDirs on Linux: the changes from the parent's tree to the layer's (C.7)."""

    def __init__(self, old_root: bytes, new_root: bytes) -> None:
        self._old_root = old_root
        self._new_root = new_root
        self._changes: list[_Change] = []

    def changes(self, old_fd: int, new_fd: int) -> list[_Change]:
        """Every change, in no particular order; directories are walked in parallel."""
        root = _DirectoryPair(b"", new_fd, os.fstat(new_fd), old_fd, os.fstat(old_fd), True, 0)
        stack = [root]
        self._enter(root)
        try:
            while stack:
                pair = stack[-1]
                name = next(pair.names, None)
                if name is None:
                    self._leave(stack.pop(), root)
                    continue
                child = self._compare(pair, name)
                if child is not None:
                    stack.append(child)  # on the stack first, so its descriptors get closed
                    self._enter(child)
        finally:
            for pair in stack:
                if pair is not root:
                    _close_pair(pair)
        return self._changes

    def _enter(self, pair: _DirectoryPair) -> None:
        """List both sides of ``pair``, leaving out names with one inode on one device."""
        new = _entries(pair.new_fd, self._new_root, pair.path)
        old = {} if pair.old_fd is None else _entries(pair.old_fd, self._old_root, pair.path)
        same_device = pair.old is not None and pair.old.st_dev == pair.new.st_dev
        names = sorted(new.keys() | old.keys())
        if same_device:
            # Overlay's layers share unchanged files as hard links: nothing to compare (C.7).
            names = [name for name in names if name not in old or old[name] != new.get(name)]
        pair.names = iter(names)
        pair.first_change = len(self._changes)

    def _compare(self, pair: _DirectoryPair, name: bytes) -> _DirectoryPair | None:
        """Record the change of one name, if any; return the next pair of directories to walk."""
        path = pair.path + b"/" + name
        new = _lstat_if_present(pair.new_fd, name, self._new_root, path)
        old = None
        if pair.old_fd is not None:
            old = _lstat_if_present(pair.old_fd, name, self._old_root, path)
        if new is None:
            if old is not None:
                mtime = _mtime(pair.new.st_mtime_ns)
                self._changes.append(_Change(path, _Kind.DELETE, mtime))
            return None

        reported = True
        if old is None:
            self._changes.append(_Change(path, _Kind.ADD))
        elif self._differs(pair, name, old, new):
            self._changes.append(_Change(path, _Kind.MODIFY))
        else:
            reported = False
        if not stat.S_ISDIR(new.st_mode):
            return None
        return self._child_pair(pair, name, old, new, reported)

    def _child_pair(
        self,
        pair: _DirectoryPair,
        name: bytes,
        old: os.stat_result | None,
        new: os.stat_result,
        reported: bool,
    ) -> _DirectoryPair:
        """The pair of directories ``name`` beneath ``pair``, opened for the walk."""
        path = pair.path + b"/" + name
        new_fd = _open_directory(pair.new_fd, name, new, self._new_root, path[1:])
        old_fd = None
        try:
            if old is not None and stat.S_ISDIR(old.st_mode) and pair.old_fd is not None:
                old_fd = _open_directory(pair.old_fd, name, old, self._old_root, path[1:])
        except BaseException:
            os.close(new_fd)
            raise
        if old_fd is None:
            old = None  # a file replaced by a directory has no children to compare with
        return _DirectoryPair(path, new_fd, new, old_fd, old, reported, len(self._changes))

    def _leave(self, pair: _DirectoryPair, root: _DirectoryPair) -> None:
        """Report a directory whose own metadata is unchanged when something beneath changed."""
        if pair is root:
            return
        _close_pair(pair)
        if not pair.reported and len(self._changes) > pair.first_change:
            self._changes.append(_Change(pair.path, _Kind.MODIFY))

    def _differs(
        self, pair: _DirectoryPair, name: bytes, old: os.stat_result, new: os.stat_result
    ) -> bool:
        """Whether the metadata Docker compares differs; file contents are never compared."""
        if _stat_differs(old, new):
            return True
        assert pair.old_fd is not None
        path = pair.path[1:] + b"/" + name if pair.path else name
        old_capability = _capability(_proc_path(pair.old_fd, name), self._old_root, path)
        new_capability = _capability(_proc_path(pair.new_fd, name), self._new_root, path)
        return old_capability != new_capability


def _stat_differs(old: os.stat_result, new: os.stat_result) -> bool:
    """Docker's statDifferent: type and mode, owner, device, and size and mtime of non-dirs."""
    if (old.st_mode, old.st_uid, old.st_gid, old.st_rdev) != (
        new.st_mode,
        new.st_uid,
        new.st_gid,
        new.st_rdev,
    ):
        return True
    # NOTE: Docker tests the S_IFDIR bit alone, so block devices and sockets skip this too.
    if old.st_mode & stat.S_IFDIR:
        return False
    return old.st_size != new.st_size or not _same_mtime(old.st_mtime_ns, new.st_mtime_ns)


def _same_mtime(old_ns: int, new_ns: int) -> bool:
    """Same second, and same nanoseconds unless either side has none (a tar extraction)."""
    old_s, old_frac = divmod(old_ns, 1_000_000_000)
    new_s, new_frac = divmod(new_ns, 1_000_000_000)
    return old_s == new_s and (old_frac == new_frac or 0 in (old_frac, new_frac))


def _close_pair(pair: _DirectoryPair) -> None:
    os.close(pair.new_fd)
    if pair.old_fd is not None:
        os.close(pair.old_fd)


def _entries(dir_fd: int, root: bytes, path: bytes) -> dict[bytes, int]:
    """Names of a directory with their inode numbers as the directory lists them."""
    try:
        with os.scandir(dir_fd) as listing:
            return {os.fsencode(entry.name): entry.inode() for entry in listing}
    except OSError as exc:
        raise LayerContentError(f"{_shown(root, path[1:])}: {exc.strerror}") from exc


def _export_changes(archiver: _Archiver, root_fd: int, changes: list[_Change]) -> None:
    """Write ``changes`` in full-path byte order, as Docker's ExportChanges does (C.7)."""
    changes.sort(key=lambda change: change.path)
    directories = _DirectoryCursor(root_fd, archiver.root)
    try:
        for change in changes:
            parent, _, base = change.path.rpartition(b"/")
            if change.kind is _Kind.DELETE:
                whiteout = parent + b"/" + _WHITEOUT_PREFIX + base
                archiver.add_whiteout(whiteout[1:], change.whiteout_mtime)
                continue
            child = archiver.add_named(directories.open(parent), base, change.path[1:])
            if child is not None:
                os.close(child)
    finally:
        directories.close()


class _DirectoryCursor:
    """Opens the layer's directories one component at a time, keeping the last path open."""

    def __init__(self, root_fd: int, root: bytes) -> None:
        self._root = root
        self._names: list[bytes] = []
        self._fds = [root_fd]

    def open(self, path: bytes) -> int:
        """A descriptor of the directory ``path`` (``b""`` for the root, else ``/a/b``)."""
        names = path.split(b"/")[1:]
        common = 0
        while common < min(len(names), len(self._names)) and names[common] == self._names[common]:
            common += 1
        while len(self._names) > common:
            self._names.pop()
            os.close(self._fds.pop())
        for name in names[common:]:
            self._fds.append(self._open(name, path))
            self._names.append(name)
        return self._fds[-1]

    def close(self) -> None:
        """Close every descriptor but the root's."""
        while len(self._fds) > 1:
            os.close(self._fds.pop())
        self._names.clear()

    def _open(self, name: bytes, path: bytes) -> int:
        try:
            return os.open(name, _OPEN_DIR, dir_fd=self._fds[-1])
        except OSError as exc:
            shown = _shown(self._root, path[1:])
            raise LayerContentError(f"{shown}: changed while archived: {exc.strerror}") from exc


# --- file system access that never follows a link ------------------------------------------


def _lstat(dir_fd: int, name: bytes, root: bytes, tar_name: bytes) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise LayerContentError(f"{_shown(root, tar_name)}: {exc.strerror}") from exc


def _lstat_if_present(dir_fd: int, name: bytes, root: bytes, path: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LayerContentError(f"{_shown(root, path[1:])}: {exc.strerror}") from exc


def _open_directory(
    dir_fd: int, name: bytes, listed: os.stat_result, root: bytes, tar_name: bytes
) -> int:
    """Open a directory beneath ``dir_fd``, checking it is still the one that was listed."""
    return _open_listed(dir_fd, name, _OPEN_DIR, listed, root, tar_name)


def _open_regular(
    dir_fd: int, name: bytes, listed: os.stat_result, root: bytes, tar_name: bytes
) -> int:
    """Open a regular file beneath ``dir_fd``, checking it is still the one that was listed."""
    return _open_listed(dir_fd, name, _OPEN_FILE, listed, root, tar_name)


def _open_listed(
    dir_fd: int, name: bytes, flags: int, listed: os.stat_result, root: bytes, tar_name: bytes
) -> int:
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise LayerContentError(f"{_shown(root, tar_name)}: {exc.strerror}") from exc
    _check_same(fd, listed, root, tar_name)
    return fd


def _check_same(fd: int, listed: os.stat_result, root: bytes, tar_name: bytes) -> None:
    """Close ``fd`` and raise unless it is the same file, of the same size, as listed."""
    now = os.fstat(fd)
    same_file = (now.st_dev, now.st_ino) == (listed.st_dev, listed.st_ino)
    if same_file and (now.st_size == listed.st_size or stat.S_ISDIR(now.st_mode)):
        return
    os.close(fd)
    raise LayerContentError(f"{_shown(root, tar_name)}: changed while archived")


def _read_into(fd: int, buffer: memoryview, root: bytes, tar_name: bytes) -> int:
    try:
        return os.readv(fd, [buffer])
    except OSError as exc:
        raise LayerContentError(f"{_shown(root, tar_name)}: {exc.strerror}") from exc


def _readlink(dir_fd: int, name: bytes, root: bytes, tar_name: bytes) -> bytes:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        raise LayerContentError(f"{_shown(root, tar_name)}: {exc.strerror}") from exc


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path to ``name`` through the pinned directory, for calls that take no directory fd."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _capability(target: int | bytes, root: bytes, tar_name: bytes) -> bytes | None:
    """The raw ``security.capability`` of an open file or of a path's last component, or None."""
    try:
        if isinstance(target, int):
            return os.getxattr(target, _CAPABILITY)
        return os.getxattr(target, _CAPABILITY, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise LayerContentError(f"{_shown(root, tar_name)}: {exc.strerror}") from exc


def _shown(root: bytes, tar_name: bytes = b"") -> str:
    """A path for messages: readable even when the name is not UTF-8."""
    path = root + b"/" + tar_name if tar_name else root
    return path.decode("utf-8", "backslashreplace")
