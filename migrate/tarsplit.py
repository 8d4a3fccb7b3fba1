"""Tar-split streams: reading them, replaying them against a layer's files, and recording them.

A tar-split stream (``tar-data.json.gz`` in a legacy graph, ``tar-split.json.gz`` in the 1.10
layer store) keeps everything of a layer tar except the file bodies: header and padding bytes as
*segments*, and one *file entry* per tar header carrying the entry name, its size and the CRC-64
of its body. Replaying the stream against the layer's files rebuilds the original tar byte for
byte, which is how a layer's diff ID is computed without regenerating the tar
(tarsplit-and-drivers.md §B, docker-1.10-migration.md §3.3).
"""

from __future__ import annotations

import binascii
import codecs
import functools
import hashlib
import itertools
import json
import os
import posixpath
import queue
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, runtime_checkable

import fastcrc

from migrate.digest import DiffID
from migrate.errors import IntegrityCheckError, TarSplitError
from migrate.faults import checkpoint

FILE_ENTRY = 1
SEGMENT_ENTRY = 2

_CHUNK = 1 << 20
_INT64_MAX = (1 << 63) - 1

# NOTE: one JSON entry may not exceed this many characters. Real entries are a few hundred bytes;
# the largest are segments holding PAX headers or the bytes after the end of the archive.
_MAX_ENTRY_CHARS = 32 << 20

_GO_ISO: Callable[[bytes | bytearray | memoryview, int], int] = fastcrc.crc64.go_iso

Write = Callable[[bytes], object]  # receives tar bytes, in order


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The CRC-64/GO-ISO of ``data``, continuing from ``crc`` (the CRC of the bytes before it)."""
    return _GO_ISO(data, crc)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tar-split stream, as stored."""

    type: int
    """FILE_ENTRY or SEGMENT_ENTRY."""
    name: bytes
    """Raw entry name (``name_raw`` if present, else ``name`` as UTF-8); b"" for segments."""
    size: int
    """The tar header's size field for a file entry; normally 0 for a segment."""
    payload: bytes | None
    """Segment: the raw tar bytes. File: the 8-byte big-endian CRC, or None when size is 0."""


@dataclass(frozen=True, slots=True)
class Assembly:
    """What replaying or recording a layer tar established about it."""

    diff_id: DiffID
    """sha256 of the whole tar stream."""
    size: int
    """Sum of the entries' ``size`` fields: Docker's layer size (migration spec §3.3 step 3)."""
    length: int
    """Number of tar bytes."""


def quote_name(name: bytes) -> str:
    """An entry name for a one-line message: double-quoted, control bytes and bad UTF-8 escaped."""
    return '"' + name.decode("utf-8", "backslashreplace").translate(_QUOTE_ESCAPES) + '"'


_QUOTE_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]} | {
    ord('"'): '\\"',
    ord("\n"): "\\n",
    ord("\t"): "\\t",
}


def clean_name(name: bytes) -> bytes:
    """``name`` as Go's ``filepath.Clean`` renders it: the key under which duplicates collide."""
    if name and b"//" not in name and b"/." not in name and name[:1] != b"." and name[-1:] != b"/":
        return name
    cleaned = posixpath.normpath(name)
    if cleaned.startswith(b"//"):
        # POSIX keeps a leading double slash; Go's Clean folds it like any other run of slashes.
        cleaned = cleaned[1:]
    return cleaned


# --- reading ------------------------------------------------------------------------------------


def read_entries(compressed: BinaryIO) -> Iterator[Entry]:
    """The entries of the gzip'd tar-split stream ``compressed``, in stream order.

    Accepts every variant Docker 1.8.0 to 1.10 wrote (spec §B.1): segments with ``"name":""`` and
    ``"size":0``, payloads ``null`` or ``""``, ``name_raw`` and a trailing empty segment.

    Raises:
        TarSplitError: the stream is not gzip, not a sequence of JSON objects, or an entry has a
            field of the wrong type, an unknown type, bad base64, a file CRC that is not 8 bytes
            or a negative size. Entries before the fault have been yielded by then.
    """
    for kind, name, size, payload in _records(compressed):
        yield Entry(kind, name, size, payload)


def _records(compressed: BinaryIO) -> Iterator[tuple[int, bytes, int, bytes | None]]:
    """The entries of ``compressed`` as plain tuples: the replay loop's cheaper diet.

    Lines in the exact forms tar-split writes are decoded by one regular expression each
    (:data:`_PLAIN_ENTRY`); from the first line that is not, everything left goes through the
    general JSON decoder, which gives the same result for every line the fast path accepts.
    """
    chunks = _inflate(compressed)
    match = _PLAIN_ENTRY.match
    a2b = binascii.a2b_base64
    index = 0
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        view = memoryview(data)
        end = data.rfind(b"\n") + 1
        position = 0
        while position < end:
            newline = data.index(b"\n", position)
            if data.startswith(_SEGMENT_START, position):
                # Most bytes are segment payloads: find their end instead of matching them.
                quote = data.find(b'"', position + len(_SEGMENT_START), newline)
                if not _plain_position(data, quote, newline):
                    break
                try:
                    payload = a2b(view[position + len(_SEGMENT_START) : quote], strict_mode=True)
                except binascii.Error:
                    break  # the general decoder names the fault
                yield SEGMENT_ENTRY, b"", 0, payload
                index += 1
                position = newline + 1
                continue

            found = match(data, position, newline + 1)
            record = None if found is None else _plain_record(index, *found.groups())
            if record is None:
                break
            yield record
            index += 1
            position = newline + 1
        if position < end:
            # Each line the fast path took held one entry: ``index`` lines are behind us.
            yield from _decoded_records(itertools.chain((data[position:],), chunks), index, index)
            return
        rest = data[end:]
        if len(rest) > _MAX_ENTRY_CHARS:
            raise TarSplitError(f"tar-split entry exceeds {_MAX_ENTRY_CHARS} characters")
    if rest:
        yield from _decoded_records(iter((rest,)), index, index)


# One entry as tar-split writes it (Go's encoding/json, fields in struct order, one per line):
# a name without escapes or control characters, a decimal size, a base64 or null payload.
_PLAIN_ENTRY = re.compile(
    rb'\{"type":([12])(?:,"name":"([^"\\\x00-\x1f]*)")?(?:,"size":(0|[1-9][0-9]{0,18}))?'
    rb',"payload":(?:"([A-Za-z0-9+/]*={0,2})"|null),"position":(?:0|[1-9][0-9]{0,18})\}\n'
)


def _plain_record(
    index: int, kind: bytes, name: bytes | None, size_text: bytes | None, crc_text: bytes | None
) -> tuple[int, bytes, int, bytes | None] | None:
    """The entry of a line that matched _PLAIN_ENTRY; None if the general decoder must judge."""
    size = int(size_text) if size_text else 0
    if size > _INT64_MAX:
        return None
    try:
        payload = binascii.a2b_base64(crc_text, strict_mode=True) if crc_text else crc_text
    except binascii.Error:
        return None
    if kind == b"2":
        return SEGMENT_ENTRY, b"", size, payload or b""
    if name is None or name.isascii() or _is_utf8(name):
        return FILE_ENTRY, name or b"", size, _file_crc(index, size, payload)
    return None


_SEGMENT_START = b'{"type":2,"payload":"'
_POSITION = b'","position":'


def _plain_position(data: bytes, quote: int, newline: int) -> bool:
    """Whether ``data[quote:newline]`` is ``","position":<decimal>}`` as Go writes it."""
    digits = data[quote + len(_POSITION) : newline - 1]
    return (
        quote > 0
        and data.startswith(_POSITION, quote)
        and data[newline - 1] == ord("}")
        and digits.isdigit()
        and (digits[:1] != b"0" or digits == b"0")
    )


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode()
    except UnicodeDecodeError:
        return False
    return True


def _decoded_records(
    chunks: Iterator[bytes], index: int, line: int = 0
) -> Iterator[tuple[int, bytes, int, bytes | None]]:
    """The entries in ``chunks`` (decompressed), decoded as JSON values one after another.

    Values are decoded the way Go's decoder reads them, so neither the newline after each
    value nor its absence matters; ``index`` numbers the first entry, and ``line`` counts the
    stream's lines before ``chunks`` so that faults name their line in the whole stream.
    """
    # Go's decoder turns invalid UTF-8 inside strings into U+FFFD; so does "replace".
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = ""
    final = False
    while not final:
        chunk = next(chunks, None)
        final = chunk is None
        text += decoder.decode(chunk or b"", final)
        start = _skip_space(text, 0)
        while start < len(text):
            try:
                value, end = _scan_json(text, start)
            except json.JSONDecodeError as error:
                if final or not _may_continue(error, len(text)):
                    raise TarSplitError(_json_fault(error, line)) from None
                break
            except RecursionError:
                raise TarSplitError("tar-split stream nests JSON values too deeply") from None
            yield _record(index, value)
            index += 1
            start = end + 1 if text.startswith("\n", end) else end
            if text.startswith(_JSON_SPACE_CHARS, start):
                start = _skip_space(text, start)
        line += text.count("\n", 0, start)
        text = text[start:]
        if len(text) > _MAX_ENTRY_CHARS:
            raise TarSplitError(f"tar-split entry exceeds {_MAX_ENTRY_CHARS} characters")


def _inflate(compressed: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member of ``compressed``, in chunks of at most 1 MiB."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    member_open = empty = True
    while data := compressed.read(_CHUNK):
        empty = False
        member_open = True
        while True:
            try:
                out = inflater.decompress(data, _CHUNK)
            except zlib.error as error:
                raise TarSplitError(f"tar-split stream is not valid gzip: {error}") from None
            if out:
                yield out
            if inflater.eof:
                # Go's gzip reader continues with the next member, as does this loop.
                data = inflater.unused_data
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
                member_open = bool(data)
            else:
                data = inflater.unconsumed_tail
            if not data and len(out) < _CHUNK:
                break
    if empty:
        raise TarSplitError("tar-split stream is empty (not even a gzip header)")
    if member_open:
        raise TarSplitError("tar-split stream is truncated (gzip stream not finished)")


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_SPACE_CHARS = (" ", "\t", "\n", "\r")
_scan_json = json.JSONDecoder().raw_decode


def _skip_space(text: str, start: int) -> int:
    """The index of the first character at or after ``start`` that is not JSON whitespace."""
    match = _JSON_SPACE.match(text, start)
    return start if match is None else match.end()


def _may_continue(error: json.JSONDecodeError, length: int) -> bool:
    """Whether ``error`` may only mean that the value goes on in the next chunk."""
    # A string cut by the chunk end reports where the string starts; a cut escape such as \u00
    # reports within six characters of the end; everything else reports the end itself.
    return error.msg.startswith("Unterminated string") or error.pos >= length - 6


def _json_fault(error: json.JSONDecodeError, line: int) -> str:
    # Some of Python's messages end in " at", expecting the position to follow.
    message = error.msg.removesuffix(" at")
    return f"tar-split stream is not valid JSON: {message} at line {line + error.lineno}"


def _record(index: int, value: Any) -> tuple[int, bytes, int, bytes | None]:
    """Validate one decoded JSON value as a tar-split entry; see read_entries for the rules."""
    if type(value) is not dict:
        raise TarSplitError(f"tar-split entry {index} is not a JSON object")
    get = value.get
    kind = get("type")
    size = get("size")
    if type(size) is not int or not 0 <= size <= _INT64_MAX:
        size = _odd_size(index, size)
    position = get("position")
    if position is not None and type(position) is not int:
        raise TarSplitError(f"tar-split entry {index}: position {position!r} is not an integer")
    payload = get("payload")
    if payload is not None:
        payload = _base64(index, "payload", payload)

    if kind == SEGMENT_ENTRY and type(kind) is int:
        return SEGMENT_ENTRY, b"", size, payload or b""
    if kind == FILE_ENTRY and type(kind) is int:
        return FILE_ENTRY, _entry_name(index, value), size, _file_crc(index, size, payload)
    raise TarSplitError(f"tar-split entry {index}: unknown entry type {kind!r}")


def _odd_size(index: int, size: object) -> int:
    """The size of an entry whose size field is absent or null (0); refuse anything else."""
    if size is None:
        return 0
    raise TarSplitError(f"tar-split entry {index}: size {size!r} is not a valid size")


def _base64(index: int, key: str, field: object) -> bytes:
    if type(field) is not str:
        raise TarSplitError(f"tar-split entry {index}: {key} is not a base64 string")
    try:
        return binascii.a2b_base64(field, strict_mode=True)
    except ValueError:
        raise TarSplitError(f"tar-split entry {index}: {key} is not valid base64") from None


def _entry_name(index: int, value: dict[str, Any]) -> bytes:
    """The raw name of a file entry: ``name_raw`` when present and non-empty, else ``name``."""
    raw = value.get("name_raw")
    if raw is not None and (raw := _base64(index, "name_raw", raw)):
        return raw
    name = value.get("name")
    if name is None:
        return b""
    if type(name) is not str:
        raise TarSplitError(f"tar-split entry {index}: name is not a string")
    try:
        return name.encode()
    except UnicodeEncodeError:
        # A lone surrogate escape ("\ud800"): Go's decoder substitutes U+FFFD for it.
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name).encode()


def _file_crc(index: int, size: int, payload: bytes | None) -> bytes | None:
    if payload and len(payload) == 8:
        return payload
    if not payload and size == 0:
        return None
    raise TarSplitError(
        f"tar-split entry {index}: file CRC is {len(payload or b'')} bytes, expected 8"
    )


# --- replaying ----------------------------------------------------------------------------------


class LayerFiles(Protocol):
    """The regular files of one layer, by entry name."""

    def open(self, name: bytes) -> BinaryIO:
        """The layer's regular file ``name``, opened for reading."""
        ...


@runtime_checkable
class LayerFileDescriptors(LayerFiles, Protocol):
    """Layer files that can also be had as bare descriptors, which replay reads most cheaply."""

    def open_fd(self, name: bytes) -> int:
        """A descriptor of the regular file ``name`` for reading; the caller closes it."""
        ...


class TarDigest:
    """The sha256 of a tar, fed in order, hashed in large batches on a helper thread (issue 7).

    The caller copies bytes in with :meth:`add` or reads them straight into :meth:`space` and
    then calls :meth:`advance`; each full batch goes to the helper thread, where hashing runs
    without the GIL while the caller opens and reads the next files. Memory is a few fixed
    batches. Call :meth:`hexdigest` once at the end, or :meth:`close` to abandon the digest;
    both may be called after an error.
    """

    _BATCH = 1 << 20
    _BATCHES = 3

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._batch = bytearray(self._BATCH)
        self._view = memoryview(self._batch)
        self._used = 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the tar; the caller may reuse it as soon as this returns."""
        end = self._used + len(data)
        if end < self._BATCH:
            self._batch[self._used : end] = data
            self._used = end
            return
        view = memoryview(data)
        while view:
            space = self.space()
            count = min(len(space), len(view))
            space[:count] = view[:count]
            self.advance(count)
            view = view[count:]

    def space(self) -> memoryview:
        """Room for the next bytes of the tar: fill a prefix of it, then call advance()."""
        return self._view[self._used :]

    def advance(self, count: int) -> None:
        """Take the first ``count`` bytes of the last space() into the tar."""
        self._used += count
        if self._used == self._BATCH:
            self._hand_over()

    def hexdigest(self) -> str:
        """The sha256 of every byte added, in hex."""
        self.close()
        self._sha256.update(self._view[: self._used])
        self._used = 0
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Wait until the helper thread has hashed every batch handed to it, and stop it."""
        if self._thread is not None:
            self._full.put(None)
            self._thread.join()
            self._thread = None

    def _hand_over(self) -> None:
        if self._thread is None:
            for _ in range(self._BATCHES - 1):
                self._free.put(bytearray(self._BATCH))
            self._thread = threading.Thread(target=self._run, name="tar-sha256", daemon=True)
            self._thread.start()
        self._full.put((self._batch, self._used))
        self._batch = self._free.get()
        self._view = memoryview(self._batch)
        self._used = 0

    def _run(self) -> None:
        update = self._sha256.update
        while (work := self._full.get()) is not None:
            batch, used = work
            update(memoryview(batch)[:used])
            self._free.put(batch)


def assemble(tar_split: BinaryIO, files: LayerFiles, write: Write | None = None) -> Assembly:
    """Rebuild the layer tar described by ``tar_split`` from ``files`` and measure it.

    Segments are emitted verbatim; every file entry with a size above zero contributes the whole
    file ``files.open(name)``, whose CRC-64 must match the entry (spec §B.6). Memory stays
    constant whatever the layer size.

    Args:
        tar_split: the gzip'd tar-split stream.
        files: where file bodies come from (a ConfinedRoot for a real layer).
        write: if given, receives every tar byte in order, as bytes valid beyond the call.

    Raises:
        TarSplitError: the stream is malformed, a file is missing or cannot be read, a CRC does
            not match, or two file entries share a cleaned name. Bytes already passed to
            ``write`` then belong to a broken tar and must be thrown away.
    """
    digest = TarDigest()
    try:
        size, length = _replay(tar_split, files, digest, write)
        return Assembly(DiffID("sha256", digest.hexdigest()), size, length)
    finally:
        digest.close()


def _replay(
    tar_split: BinaryIO, files: LayerFiles, digest: TarDigest, write: Write | None
) -> tuple[int, int]:
    """Feed the whole tar to ``digest`` (and ``write``); return its entry sizes and length."""
    read_file: Callable[[bytes, TarDigest, Write | None], tuple[int, int]]
    if isinstance(files, LayerFileDescriptors):
        read_file = functools.partial(_read_fd, files.open_fd)
    else:
        read_file = functools.partial(_read_file_object, files.open)
    # TODO(#7): the cleaned names kept to refuse duplicates grow with the entry count (about
    # 150 bytes each), so a layer of millions of entries costs hundreds of MB; a compact set
    # of name digests would bound it.
    seen: set[bytes] = set()
    size = length = 0
    for kind, name, entry_size, payload in _records(tar_split):
        size += entry_size
        if kind == SEGMENT_ENTRY:
            if payload:
                digest.add(payload)
                if write is not None:
                    write(payload)
                length += len(payload)
            continue

        cleaned = clean_name(name)
        if cleaned in seen:
            raise TarSplitError(f"duplicate path {quote_name(name)} in tar-split stream")
        seen.add(cleaned)
        if entry_size > 0:
            crc, count = read_file(name, digest, write)
            if crc.to_bytes(8, "big") != payload:
                raise IntegrityCheckError(f"file integrity checksum failed for {quote_name(name)}")
            checkpoint("layer-file-hashed")
            length += count
    return size, length


def _read_fd(
    open_fd: Callable[[bytes], int], name: bytes, digest: TarDigest, write: Write | None
) -> tuple[int, int]:
    """Read the whole file ``name`` straight into ``digest``; its CRC-64 and length."""
    try:
        fd = open_fd(name)
    except OSError as error:
        raise TarSplitError(f"opening layer file {quote_name(name)}: {error}") from None
    readv = os.readv
    crc = length = 0
    try:
        while True:
            space = digest.space()
            try:
                count = readv(fd, (space,))
            except OSError as error:
                raise TarSplitError(f"reading layer file {quote_name(name)}: {error}") from None
            if not count:
                return crc, length
            chunk = space[:count]
            crc = _GO_ISO(chunk, crc)
            if write is not None:
                write(bytes(chunk))
            digest.advance(count)
            length += count
    finally:
        os.close(fd)


def _read_file_object(
    open_file: Callable[[bytes], BinaryIO], name: bytes, digest: TarDigest, write: Write | None
) -> tuple[int, int]:
    """Read the whole file ``name``, opened as a file object, into ``digest``."""
    try:
        body = open_file(name)
    except OSError as error:
        raise TarSplitError(f"opening layer file {quote_name(name)}: {error}") from None
    crc = length = 0
    with body:
        while True:
            try:
                chunk = body.read(_CHUNK)
            except OSError as error:
                raise TarSplitError(f"reading layer file {quote_name(name)}: {error}") from None
            if not chunk:
                return crc, length
            crc = _GO_ISO(chunk, crc)
            digest.add(chunk)
            if write is not None:
                write(chunk)
            length += len(chunk)


# --- recording ----------------------------------------------------------------------------------

# Go's gzip writer: no name, mtime 0, no extra flags at the default level, OS "unknown".
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FLUSH_AT = 64 << 10

# Go's JSON encoder escapes these in strings (spec §B.2); Go 1.5, which built Docker 1.10, writes
# \b and \f as \u0008 and \u000c.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in range(0x20)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


class Recorder:
    """Writes a tar-split stream (gzip'd JSON lines in the tar-split v0.9.10+ form).

    Entries are numbered in write order. Call close() to finish the gzip stream; without it the
    stream is unreadable (Docker 1.10.0 and 1.10.1 shipped exactly that defect, spec §3.3).
    ``level`` is the deflate level; 6 is what Go's gzip writer uses by default.
    """

    def __init__(self, out: BinaryIO, level: int = 6) -> None:
        self._out = out
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc32 = 0
        self._length = 0
        self._position = 0
        self._lines: list[bytes] = []
        self._buffered = 0
        self._seen: set[bytes] = set()
        self._started = False
        self._closed = False

    def segment(self, data: bytes) -> None:
        """Record raw tar bytes; empty data is not recorded."""
        if data:
            self._add(b'{"type":2,"payload":"%b",' % binascii.b2a_base64(data, newline=False))

    def file(self, name: bytes, size: int, crc: int | None) -> None:
        """Record a tar header's entry: its name, size field and body CRC (None without body).

        Raises:
            TarSplitError: an entry with the same cleaned name was recorded before; tar-split
                cannot represent such a tar (spec §B.5).
        """
        if size < 0:
            raise ValueError(f"negative size {size} for {quote_name(name)}")
        cleaned = clean_name(name)
        if cleaned in self._seen:
            raise TarSplitError(f"duplicate path {quote_name(name)}: tar-split records a path once")
        self._seen.add(cleaned)

        fields = [b'{"type":1']
        if name:
            fields.append(_json_name(name))
        if size:
            fields.append(b'"size":%d' % size)
        if crc is None:
            fields.append(b'"payload":null')
        else:
            fields.append(
                b'"payload":"%b"' % binascii.b2a_base64(crc.to_bytes(8, "big"), newline=False)
            )
        self._add(b",".join(fields) + b",")

    def close(self) -> None:
        """Finish the gzip stream; ``out`` stays open. Calling it again does nothing."""
        if self._closed:
            return
        self._flush()
        trailer = struct.pack("<II", self._crc32, self._length & 0xFFFFFFFF)
        self._emit(self._deflate.flush() + trailer)
        self._closed = True

    def _add(self, start: bytes) -> None:
        if self._closed:
            raise ValueError("tar-split recorder is closed")
        line = b'%b"position":%d}\n' % (start, self._position)
        self._position += 1
        self._lines.append(line)
        self._buffered += len(line)
        if self._buffered >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._lines)
        self._lines.clear()
        self._buffered = 0
        self._crc32 = zlib.crc32(data, self._crc32)
        self._length += len(data)
        self._emit(self._deflate.compress(data))

    def _emit(self, data: bytes) -> None:
        if not self._started:
            self._out.write(_GZIP_HEADER)
            self._started = True
        if data:
            self._out.write(data)


# Bytes of a name that Go's encoder would escape, or that may start a non-ASCII character.
_NAME_NEEDS_CARE = re.compile(rb'[\x00-\x1f"\\<>&\x80-\xff]')


def _json_name(name: bytes) -> bytes:
    """The name member of a file entry: ``name`` if valid UTF-8, else base64 ``name_raw``."""
    if _NAME_NEEDS_CARE.search(name) is None:
        return b'"name":"%b"' % name
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return b'"name_raw":"%b"' % binascii.b2a_base64(name, newline=False)
    return b'"name":"%b"' % text.translate(_JSON_ESCAPES).encode()


# --- disassembling ------------------------------------------------------------------------------

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_META = 1 << 20  # largest PAX or GNU long-name body accepted, as in Go's archive/tar
_HEADER_ONLY = frozenset(b"123456")  # hard link, symlink, char, block, directory, fifo
_PAX_TYPES = frozenset(b"xg")
_GNU_LONG_TYPES = frozenset(b"LK")
_DECIMAL = re.compile(rb"[+-]?[0-9]+\Z")


def disassemble(tar: BinaryIO, out: BinaryIO, write: Write | None = None) -> Assembly:
    """Record the tar-split stream of the tar ``tar`` into ``out`` and measure the tar.

    Parses ustar, GNU (long names, old GNU, base-256 numbers) and PAX tars the way tar-split's
    input stream does (spec §B.5): before each entry one segment holds every byte that is not a
    body (the previous padding, then the entry's header blocks), each header gets a file entry
    named as the tar reader resolves it, and everything after the last entry (end blocks,
    record padding, trailing bytes) becomes the final segments. Memory stays constant.

    Args:
        tar: the tar stream, read to its end.
        out: receives the gzip'd tar-split stream; it is finished but not closed.
        write: if given, receives every tar byte in order.

    Raises:
        TarSplitError: the tar is malformed or truncated, holds a GNU sparse file (tar-split
            would record its expanded body and could not rebuild the tar) or repeats a path.
            ``out`` then holds an unfinished stream to throw away.
    """
    source = _TarSource(tar, write)
    recorder = Recorder(out)
    size = _Disassembly(source, recorder).run()
    recorder.close()
    return Assembly(DiffID("sha256", source.digest.hexdigest()), size, source.length)


class _TarSource:
    """The tar being disassembled: hands out its bytes; hashes and tees every byte read."""

    def __init__(self, tar: BinaryIO, write: Write | None) -> None:
        self.digest = hashlib.sha256()
        self.length = 0
        self._tar = tar
        self._write = write
        self._chunk = b""
        self._offset = 0

    @property
    def offset(self) -> int:
        """Number of tar bytes handed out so far."""
        return self.length - len(self._chunk) + self._offset

    def take(self, count: int) -> bytes:
        """The next ``count`` bytes; fewer only at the end of the tar."""
        start = self._offset
        if start + count <= len(self._chunk):
            self._offset = start + count
            return self._chunk[start : start + count]
        parts = []
        while count and (piece := self.piece(count)):
            parts.append(piece)
            count -= len(piece)
        return b"".join(parts)

    def piece(self, limit: int) -> memoryview:
        """Between 1 and ``limit`` next bytes, or none at the end of the tar."""
        if self._offset == len(self._chunk) and not self._refill():
            return memoryview(b"")
        start = self._offset
        self._offset = min(start + limit, len(self._chunk))
        return memoryview(self._chunk)[start : self._offset]

    def _refill(self) -> bool:
        chunk = self._tar.read(_CHUNK)
        if not chunk:
            return False
        self.digest.update(chunk)
        self.length += len(chunk)
        if self._write is not None:
            self._write(chunk)
        self._chunk = chunk
        self._offset = 0
        return True


@dataclass(slots=True)
class _Header:
    """A tar entry as the reader resolves it from its header blocks."""

    name: bytes
    size: int  # the size field (PAX "size" wins), recorded as the entry size
    body: int  # body bytes that follow in the tar: 0 for header-only types
    pad: int  # padding after the body (or after a global PAX header's records)


class _Disassembly:
    """One pass over a tar, mirroring Go's archive/tar reader with raw accounting."""

    def __init__(self, source: _TarSource, recorder: Recorder) -> None:
        self._source = source
        self._recorder = recorder
        self._raw = bytearray()  # bytes read since the last segment, none of them body bytes
        self._pad = 0  # padding still owed by the previous body
        self._size = 0

    def run(self) -> int:
        """Record the whole tar; return the sum of the recorded sizes."""
        while (header := self._next_header()) is not None:
            self._flush_raw()
            self._record_body(header)
        self._flush_raw()
        while piece := self._source.piece(_CHUNK):
            self._recorder.segment(bytes(piece))
        return self._size

    def _flush_raw(self) -> None:
        self._recorder.segment(bytes(self._raw))
        self._raw.clear()

    def _next_header(self) -> _Header | None:
        """Read header blocks up to the next entry; None at the end of the archive."""
        records: dict[bytes, bytes] = {}
        long_name = b""
        while True:
            padding = self._source.take(self._pad)
            self._raw += padding
            if len(padding) < self._pad:
                return None  # Go's reader takes an end inside the padding for the archive's end
            offset = self._source.offset
            block = self._read_block()
            if block is None:
                return None

            flag = block[156]
            size = _numeric(block[124:136], offset)
            if flag not in _PAX_TYPES and flag not in _GNU_LONG_TYPES:
                return _entry_header(block, size, records, long_name, offset)
            body = self._read_meta(size)
            self._pad = -size & (_BLOCK - 1)
            if flag == ord("g"):
                # Go's reader hands a global header out as an entry of its own, without a body.
                name = _block_name(block)
                return _Header(_parse_pax(body).get(b"path") or name, 0, 0, self._pad)
            if flag == ord("x"):
                records = _parse_pax(body)
            elif flag == ord("L"):
                long_name = _c_string(body)

    def _read_block(self) -> bytes | None:
        """The next header block; None at the end of the archive (zero blocks or end of input)."""
        offset = self._source.offset
        block = self._source.take(_BLOCK)
        self._raw += block
        if block == _ZERO_BLOCK:
            block = self._source.take(_BLOCK)
            self._raw += block
            if block and block != _ZERO_BLOCK:
                raise TarSplitError(f"tar has a lone zero block at offset {offset}")
        if len(block) not in (0, _BLOCK):
            raise TarSplitError(f"tar ends inside a header block at offset {offset}")
        if block in (b"", _ZERO_BLOCK):
            return None
        _check_block(block, offset)
        return block

    def _read_meta(self, size: int) -> bytes:
        """The body of a PAX or GNU long-name header, which counts as raw bytes."""
        offset = self._source.offset
        if not 0 <= size <= _MAX_META:
            raise TarSplitError(f"tar metadata entry at offset {offset} has size {size}")
        body = self._source.take(size)
        if len(body) < size:
            raise TarSplitError(f"tar ends inside a metadata entry at offset {offset}")
        self._raw += body
        if len(self._raw) >= _CHUNK:
            self._flush_raw()  # splitting a segment changes nothing on replay; memory stays flat
        return body

    def _record_body(self, header: _Header) -> None:
        """Checksum the entry's body and record its file entry."""
        crc = 0
        remaining = header.body
        while remaining:
            piece = self._source.piece(remaining)
            if not piece:
                raise TarSplitError(f"tar ends inside the body of {quote_name(header.name)}")
            crc = _GO_ISO(piece, crc)
            remaining -= len(piece)
        # tar-split checksums whatever size claims, even a header-only type's (0 bytes read).
        self._recorder.file(header.name, header.size, crc if header.size > 0 else None)
        self._size += header.size
        self._pad = header.pad


def _check_block(block: bytes, offset: int) -> None:
    """Refuse a header block whose checksum (unsigned or signed byte sum) does not match."""
    stored = _octal(block[148:156], offset)
    unsigned = sum(block) - sum(block[148:156]) + 8 * ord(" ")
    if stored == unsigned:
        return
    high = sum(1 for byte in block[:148] + block[156:] if byte >= 0x80)
    if stored != unsigned - 256 * high:
        raise TarSplitError(f"tar header at offset {offset} has a bad checksum")


def _entry_header(
    block: bytes, size: int, records: dict[bytes, bytes], long_name: bytes, offset: int
) -> _Header:
    """Resolve an entry's header: PAX records, then a GNU long name, override the block's name."""
    flag = block[156]
    if flag == ord("S") or _is_sparse(records):
        raise TarSplitError(f"tar holds a GNU sparse file at offset {offset}")
    name = long_name or records.get(b"path") or _block_name(block)
    if records.get(b"size"):
        size = _pax_int(records[b"size"])

    if flag == 0 and name.endswith(b"/"):
        flag = ord("5")  # legacy archives mark directories by a trailing slash only
    if size < 0:
        raise TarSplitError(f"tar header for {quote_name(name)} has negative size {size}")
    body = 0 if flag in _HEADER_ONLY else size
    return _Header(name, size, body, -body & (_BLOCK - 1))


def _block_name(block: bytes) -> bytes:
    """The name a header block holds, joined with its prefix field where the format has one."""
    name = _c_string(block[0:100])
    magic = block[257:263]
    if magic == b"ustar\x00":
        star = block[508:512] == b"tar\x00"
        prefix = _c_string(block[345:476] if star else block[345:500])
    elif magic == b"ustar " and block[263:265] == b" \x00" and _gnu_times_parse(block):
        prefix = b""
    elif magic == b"ustar " and block[263:265] == b" \x00":
        # Go before 1.8 wrote a ustar prefix into GNU headers; readers take it when the GNU
        # time fields do not parse and the field is ASCII.
        prefix = _c_string(block[345:500])
        prefix = prefix if prefix.isascii() else b""
    else:
        prefix = b""
    return prefix + b"/" + name if prefix else name


def _gnu_times_parse(block: bytes) -> bool:
    for field in (block[345:357], block[357:369]):
        if field[0] != 0:
            try:
                _numeric(field, 0)
            except TarSplitError:
                return False
    return True


def _c_string(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _numeric(field: bytes, offset: int) -> int:
    """A tar number: base-256 when the top bit of the first byte is set, else octal text."""
    if field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] & 0x40:
            value -= 1 << (8 * len(field) - 1)  # two's complement over the field's 63+ bits
        if not -(1 << 63) <= value <= _INT64_MAX:
            raise TarSplitError(f"tar header at offset {offset} has an out-of-range number")
        return value
    return _octal(field, offset)


def _octal(field: bytes, offset: int) -> int:
    text = _c_string(field.strip(b" \x00"))
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise TarSplitError(f"tar header at offset {offset} has a bad number {text!r}")
    value = int(text, 8)
    if value > (1 << 64) - 1:
        raise TarSplitError(f"tar header at offset {offset} has an out-of-range number")
    return value - (1 << 64) if value > _INT64_MAX else value


def _parse_pax(body: bytes) -> dict[bytes, bytes]:
    """The records of a PAX header body ("<length> <key>=<value>\\n" each)."""
    records: dict[bytes, bytes] = {}
    while body:
        space = body.find(b" ")
        length = _pax_int(body[:space]) if space > 0 else -1
        if length < 5 or length > len(body) or space + 1 > length - 1 or body[length - 1] != 10:
            raise TarSplitError("tar holds a malformed PAX record")
        key, equals, value = body[space + 1 : length - 1].partition(b"=")
        if not equals or not key or b"\0" in key:
            raise TarSplitError("tar holds a malformed PAX record")
        if key in (b"path", b"linkpath", b"uname", b"gname") and b"\0" in value:
            raise TarSplitError("tar holds a PAX record with a NUL byte")
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            key = b"GNU.sparse.map"  # only its presence matters here: sparse files are refused
        records[key] = value
        body = body[length:]
    return records


def _pax_int(text: bytes) -> int:
    if _DECIMAL.match(text) is None or not -(1 << 63) <= int(text) <= _INT64_MAX:
        raise TarSplitError(f"tar holds a PAX number {text[:40]!r} that does not parse")
    return int(text)


def _is_sparse(records: dict[bytes, bytes]) -> bool:
    """Whether PAX records make the entry a GNU sparse file (formats 0.0, 0.1 and 1.0)."""
    version = (records.get(b"GNU.sparse.major", b""), records.get(b"GNU.sparse.minor", b""))
    if version != (b"", b""):
        return version in ((b"0", b"0"), (b"0", b"1"), (b"1", b"0"))
    return bool(records.get(b"GNU.sparse.map"))
