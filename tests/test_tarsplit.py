"""Tests for migrate.tarsplit.

Expected values come from outside the module: the CRC vectors of spec §B.4, tar-split streams
written by hand in the forms Docker 1.8 to 1.10 stored, Python's tarfile and GNU tar as
independent tar readers and writers, and Debian's ``tar-split`` CLI as the reference
disassembler and assembler.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate.confine import ConfinedRoot
from migrate.digest import EMPTY_TAR_DIFF_ID, DiffID
from migrate.errors import TarSplitError
from migrate.tarsplit import (
    FILE_ENTRY,
    SEGMENT_ENTRY,
    Assembly,
    Entry,
    Recorder,
    assemble,
    clean_name,
    crc64,
    disassemble,
    quote_name,
    read_entries,
)
from tests.conftest import require_tool

# The one-file layer of spec §B.3: "a.txt" holding "hi\n", CRC-64 YUmYEAAAAAA=.
HI_CRC_B64 = "YUmYEAAAAAA="


def _sha256(data: bytes) -> DiffID:
    return DiffID("sha256", hashlib.sha256(data).hexdigest())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _gzip(text: str | bytes) -> io.BytesIO:
    """A tar-split stream compressed by Python's gzip, independent of the Recorder."""
    data = text.encode() if isinstance(text, str) else text
    return io.BytesIO(gzip.compress(data))


def _one_file_tar(body: bytes = b"hi\n", name: str = "a.txt") -> bytes:
    """A ustar tar of one regular file, written by Python's tarfile."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _hand_stream(tar: bytes, *, old_style: bool) -> io.BytesIO:
    """The spec §B.3 stream for ``_one_file_tar()``: header, file entry, the rest."""
    extra = '"name":"","size":0,' if old_style else ""
    lines = [
        f'{{"type":2,{extra}"payload":"{_b64(tar[:512])}","position":0}}',
        f'{{"type":1,"name":"a.txt","size":3,"payload":"{HI_CRC_B64}","position":1}}',
        f'{{"type":2,{extra}"payload":"{_b64(tar[515:])}","position":2}}',
    ]
    if old_style:  # v0.9.4 always ended with an empty segment
        lines.append('{"type":2,"name":"","size":0,"payload":"","position":3}')
    return _gzip("\n".join(lines) + "\n")


class DictFiles:
    """Layer files held in memory, for streams that need no real tree."""

    def __init__(self, files: dict[bytes, bytes]) -> None:
        self.files = files
        self.opened: list[bytes] = []

    def open(self, name: bytes) -> io.BytesIO:
        self.opened.append(name)
        if name not in self.files:
            raise TarSplitError(f"layer file {quote_name(name)} is missing")
        return io.BytesIO(self.files[name])


# --- CRC-64 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"123456789", 0xB90956C775A41001, id="check-value"),
        pytest.param(b"hi\n", 0x6149981000000000, id="hi"),
        pytest.param(
            b"imma hurr til I derp", bytes([2, 116, 164, 177, 171, 236, 107, 78]), id="hurr"
        ),
        pytest.param(
            "café con leche, por favor".encode(),
            bytes([126, 72, 89, 239, 230, 252, 160, 187]),
            id="cafe",
        ),
        pytest.param(b"", 0, id="empty"),
    ],
)
def test_crc64_matches_the_go_iso_vectors(data: bytes, expected: int | bytes) -> None:
    value = crc64(data)
    if isinstance(expected, bytes):
        assert value.to_bytes(8, "big") == expected
    else:
        assert value == expected


def test_crc64_chains_over_pieces() -> None:
    assert crc64(b"6789", crc64(memoryview(b"12345"))) == 0xB90956C775A41001
    assert base64.b64encode(crc64(b"hi\n").to_bytes(8, "big")).decode() == HI_CRC_B64


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        (b"", b"."),
        (b".", b"."),
        (b"abc", b"abc"),
        (b"abc/def/..", b"abc"),
        (b"a//b", b"a/b"),
        (b"a/./b", b"a/b"),
        (b"a/", b"a"),
        (b"./a", b"a"),
        (b"../a", b"../a"),
        (b"a/../..", b".."),
        (b"/../a", b"/a"),
        (b"//a", b"/a"),
        (b"/", b"/"),
        (b".hidden/x", b".hidden/x"),
    ],
)
def test_clean_name_follows_go_filepath_clean(name: bytes, cleaned: bytes) -> None:
    assert clean_name(name) == cleaned


def test_quote_name_keeps_messages_on_one_line() -> None:
    assert quote_name(b'a\n"b"\xff') == '"a\\n\\"b\\"\\xff"'


# --- reading ------------------------------------------------------------------------------------


def test_read_entries_accepts_the_v0_9_4_form() -> None:
    tar = _one_file_tar()
    entries = list(read_entries(_hand_stream(tar, old_style=True)))
    assert entries == [
        Entry(SEGMENT_ENTRY, b"", 0, tar[:512]),
        Entry(FILE_ENTRY, b"a.txt", 3, base64.b64decode(HI_CRC_B64)),
        Entry(SEGMENT_ENTRY, b"", 0, tar[515:]),
        Entry(SEGMENT_ENTRY, b"", 0, b""),
    ]


def test_read_entries_accepts_the_v0_9_10_form() -> None:
    lines = [
        '{"type":2,"payload":"YWJj","position":0}',
        '{"type":1,"name":"d/","payload":null,"position":1}',
        '{"type":1,"name_raw":"Y2Fm6Q==","payload":null,"position":2}',
        '{"type":1,"name":"\\u003cx\\u0026y\\u003e","payload":null,"position":3}',
        '{"type":2,"payload":null,"position":4}',
        '{"type":1,"name":"","name_raw":"","payload":"","position":5}',
    ]
    entries = list(read_entries(_gzip("\n".join(lines) + "\n")))
    assert entries == [
        Entry(SEGMENT_ENTRY, b"", 0, b"abc"),
        Entry(FILE_ENTRY, b"d/", 0, None),
        Entry(FILE_ENTRY, b"caf\xe9", 0, None),
        Entry(FILE_ENTRY, b"<x&y>", 0, None),
        Entry(SEGMENT_ENTRY, b"", 0, b""),
        Entry(FILE_ENTRY, b"", 0, None),
    ]


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda a, b: a + b, id="no-newlines"),
        pytest.param(lambda a, b: a + "\r\n\t " + b + "\n\n", id="mixed-whitespace"),
        pytest.param(lambda a, b: a.replace(",", ",\n  ") + "\n" + b, id="multi-line"),
    ],
)
def test_read_entries_decodes_values_in_sequence(layout: Callable[[str, str], str]) -> None:
    first = '{"type":2,"payload":"YWJj","position":0}'
    second = f'{{"type":1,"name":"a.txt","size":3,"payload":"{HI_CRC_B64}","position":1}}'
    entries = list(read_entries(_gzip(layout(first, second))))
    assert [entry.type for entry in entries] == [SEGMENT_ENTRY, FILE_ENTRY]
    assert entries[1].name == b"a.txt"


def test_read_entries_reads_concatenated_gzip_members() -> None:
    one = gzip.compress(b'{"type":2,"payload":"YWJj","position":0}\n')
    two = gzip.compress(b'{"type":2,"payload":"ZGVm","position":1}\n')
    payloads = [entry.payload for entry in read_entries(io.BytesIO(one + two))]
    assert payloads == [b"abc", b"def"]


def test_read_entries_handles_values_across_chunk_boundaries() -> None:
    big = bytes(range(256)) * 6000  # a 1.5 MB segment: its JSON spans several 1 MiB chunks
    lines = [f'{{"type":2,"payload":"{_b64(big)}","position":0}}']
    lines += [f'{{"type":1,"name":"f{i}","payload":null,"position":{i}}}' for i in range(1, 30000)]
    entries = list(read_entries(_gzip("\n".join(lines))))
    assert entries[0].payload == big
    assert len(entries) == 30000
    assert entries[-1].name == b"f29999"


MALFORMED = {
    "empty-input": b"",
    "not-gzip": b"this is not gzip",
    "truncated-gzip": gzip.compress(b'{"type":2,"payload":"YWJj","position":0}\n')[:-6],
    "junk-after-gzip": gzip.compress(b'{"type":2,"payload":"YWJj"}\n') + b"junk",
    "bad-json": gzip.compress(b'{"type":2,,"payload":"YWJj"}\n{"type":2}\n'),
    "unterminated": gzip.compress(b'{"type":2,"payload":"YWJj'),
    "array": gzip.compress(b"[1,2]"),
    "null": gzip.compress(b"null"),
    "number": gzip.compress(b"12"),
    "unknown-type": gzip.compress(b'{"type":3,"payload":null}'),
    "missing-type": gzip.compress(b'{"payload":null}'),
    "string-type": gzip.compress(b'{"type":"1","payload":null}'),
    "bool-type": gzip.compress(b'{"type":true,"payload":null}'),
    "float-type": gzip.compress(b'{"type":2.0,"payload":null}'),
    "negative-size": gzip.compress(b'{"type":1,"name":"a","size":-1,"payload":null}'),
    "float-size": gzip.compress(b'{"type":1,"name":"a","size":1.5,"payload":null}'),
    "string-size": gzip.compress(b'{"type":1,"name":"a","size":"3","payload":null}'),
    "huge-size": gzip.compress(b'{"type":1,"name":"a","size":9223372036854775808}'),
    "payload-number": gzip.compress(b'{"type":2,"payload":123}'),
    "payload-bad-base64": gzip.compress(b'{"type":2,"payload":"@@@@"}'),
    "payload-bad-padding": gzip.compress(b'{"type":2,"payload":"YWJ"}'),
    "crc-3-bytes": gzip.compress(b'{"type":1,"name":"a","size":3,"payload":"YWJj"}'),
    "crc-missing": gzip.compress(b'{"type":1,"name":"a","size":3,"payload":null}'),
    "name-number": gzip.compress(b'{"type":1,"name":5,"payload":null}'),
    "name-raw-bad": gzip.compress(b'{"type":1,"name_raw":"###","payload":null}'),
    "position-string": gzip.compress(b'{"type":2,"payload":null,"position":"x"}'),
    "deep-nesting": gzip.compress(b"[" * 200_000),
    "bad-utf8-outside-strings": gzip.compress(b'\xff{"type":2}'),
    "nan-size": gzip.compress(b'{"type":1,"name":"a","size":NaN}'),
}


@pytest.mark.parametrize("stream", MALFORMED.values(), ids=MALFORMED.keys())
def test_read_entries_refuses_malformed_streams(stream: bytes) -> None:
    with pytest.raises(TarSplitError) as caught:
        list(read_entries(io.BytesIO(stream)))
    assert "\n" not in str(caught.value)


def test_read_entries_takes_lone_surrogates_as_go_does() -> None:
    stream = _gzip('{"type":1,"name":"a\\ud800b","payload":null}')
    assert [entry.name for entry in read_entries(stream)] == ["a\ufffdb".encode()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_read_entries_raises_only_tar_split_errors(data: bytes, compress: bool) -> None:
    stream = io.BytesIO(gzip.compress(data) if compress else data)
    try:
        list(read_entries(stream))
    except TarSplitError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=4))
def test_read_entries_survives_corrupted_json(cut: int, junk: bytes) -> None:
    text = (
        f'{{"type":2,"payload":"YWJj","position":0}}\n'
        f'{{"type":1,"name":"a<b>","size":3,"payload":"{HI_CRC_B64}","position":1}}\n'
        f'{{"type":1,"name_raw":"Y2Fm6Q==","payload":null,"position":2}}\n'
    ).encode()
    cut %= len(text)
    try:
        list(read_entries(_gzip(text[:cut] + junk + text[cut:])))
    except TarSplitError:
        pass


def _json_reference(lines: list[str]) -> list[Entry]:
    """Entries decoded line by line by the json module: a decoder independent of read_entries."""
    entries = []
    for line in lines:
        value = json.loads(line)
        raw = value.get("payload")
        payload = base64.b64decode(raw, validate=True) if raw is not None else None
        if value["type"] == SEGMENT_ENTRY:
            entries.append(Entry(SEGMENT_ENTRY, b"", value.get("size") or 0, payload or b""))
            continue
        name = base64.b64decode(value["name_raw"]) if value.get("name_raw") else None
        if name is None:
            name = value.get("name", "").encode("utf-8", "surrogatepass")
        size = value.get("size") or 0
        entries.append(Entry(FILE_ENTRY, name, size, payload if size else payload or None))
    return entries


_NAMES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30
) | st.sampled_from(["a.txt", 'quote"d', "back\\slash", "<tag>&", "tab\there", "caf\u00e9"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=2000).map(lambda data: ("segment", data)),
            st.tuples(_NAMES, st.integers(0, 1 << 40), st.integers(0, (1 << 64) - 1)).map(
                lambda entry: ("file", entry)
            ),
        ),
        max_size=40,
    ),
    st.integers(0, 39),
    st.booleans(),
)
def test_read_entries_matches_json_line_by_line(
    entries: list[tuple[str, object]], odd_at: int, old_style: bool
) -> None:
    # Lines as Recorder (Go's form) writes them; one line may be respaced or, in the v0.9.4
    # form, carry name and size, which the fast path leaves to the general decoder.
    out = io.BytesIO()
    recorder = Recorder(out)
    seen: set[bytes] = set()
    for kind, value in entries:
        if kind == "segment":
            assert isinstance(value, bytes)
            recorder.segment(value)
        else:
            name, size, crc = value  # type: ignore[misc]
            if clean_name(name.encode()) not in seen:
                seen.add(clean_name(name.encode()))
                recorder.file(name.encode(), size, crc if size else None)
    recorder.close()
    lines = gzip.decompress(out.getvalue()).decode().split("\n")[:-1]
    if lines and old_style:
        index = odd_at % len(lines)
        lines[index] = lines[index].replace(
            '{"type":2,"payload"', '{"type":2,"name":"","size":0,"payload"'
        )
        lines[index] = lines[index].replace(',"position"', ' , "position"', 1)

    entries_read = list(read_entries(_gzip("".join(line + "\n" for line in lines))))

    assert entries_read == _json_reference(lines)


# --- assembling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("old_style", [True, False], ids=["v0.9.4", "v0.9.10"])
def test_assemble_rebuilds_the_spec_example(old_style: bool) -> None:
    tar = _one_file_tar()
    written: list[bytes] = []
    files = DictFiles({b"a.txt": b"hi\n"})

    assembly = assemble(_hand_stream(tar, old_style=old_style), files, written.append)

    assert assembly == Assembly(_sha256(tar), 3, len(tar))
    assert b"".join(written) == tar
    assert all(type(piece) is bytes for piece in written)


def test_assemble_of_the_empty_tar_gives_the_pinned_diff_id() -> None:
    stream = _gzip(f'{{"type":2,"payload":"{_b64(bytes(1024))}","position":0}}\n')
    assert assemble(stream, DictFiles({})) == Assembly(EMPTY_TAR_DIFF_ID, 0, 1024)


def test_assemble_detects_a_crc_mismatch() -> None:
    files = DictFiles({b"a.txt": b"ho\n"})
    with pytest.raises(TarSplitError, match=r'^file integrity checksum failed for "a.txt"$'):
        assemble(_hand_stream(_one_file_tar(), old_style=False), files)


def test_assemble_streams_the_whole_file_not_size_bytes() -> None:
    files = DictFiles({b"a.txt": b"hi\nmore"})  # grown since it was recorded
    with pytest.raises(TarSplitError, match="checksum failed"):
        assemble(_hand_stream(_one_file_tar(), old_style=False), files)


def test_assemble_reports_a_missing_file() -> None:
    with pytest.raises(TarSplitError, match=r'"a.txt" is missing'):
        assemble(_hand_stream(_one_file_tar(), old_style=False), DictFiles({}))


def test_assemble_opens_only_files_with_a_body() -> None:
    lines = [
        '{"type":1,"name":"dir/","payload":null,"position":0}',
        '{"type":1,"name":"link","payload":null,"position":1}',
        f'{{"type":1,"name":"dir/a","size":3,"payload":"{HI_CRC_B64}","position":2}}',
    ]
    files = DictFiles({b"dir/a": b"hi\n"})
    assembly = assemble(_gzip("\n".join(lines)), files)
    assert files.opened == [b"dir/a"]
    assert assembly == Assembly(_sha256(b"hi\n"), 3, 3)


@pytest.mark.parametrize(
    ("first", "second"),
    [("foo", "foo/"), ("foo", "./foo"), ("a/b", "a//b"), ("a/../b", "b"), ("x/", "x/.")],
)
def test_assemble_refuses_duplicate_paths(first: str, second: str) -> None:
    lines = [
        f'{{"type":1,"name":"{first}","payload":null,"position":0}}',
        f'{{"type":1,"name":"{second}","payload":null,"position":1}}',
    ]
    with pytest.raises(TarSplitError, match=f'^duplicate path "{second}" in tar-split stream$'):
        assemble(_gzip("\n".join(lines)), DictFiles({}))


def test_assemble_keeps_rooted_and_relative_names_apart() -> None:
    lines = [
        '{"type":1,"name":"/foo","payload":null,"position":0}',
        '{"type":1,"name":"foo","payload":null,"position":1}',
    ]
    assert assemble(_gzip("\n".join(lines)), DictFiles({})).length == 0


# --- recording ----------------------------------------------------------------------------------


def test_recorder_writes_go_json_lines() -> None:
    out = io.BytesIO()
    recorder = Recorder(out)
    recorder.segment(b"abc")
    recorder.segment(b"")
    recorder.file(b"d/", 0, None)
    recorder.file('a<b>&c\u2028\x08\x0c\n"\\\x01'.encode(), 3, 0x6149981000000000)
    recorder.file(b"caf\xe9", 0, None)
    recorder.file(b"", 0, None)
    recorder.close()

    # Written by hand from Go's encoder rules (spec §B.2, §B.3); Go 1.5 escapes \b and \f as \u.
    expected = (
        '{"type":2,"payload":"YWJj","position":0}\n'
        '{"type":1,"name":"d/","payload":null,"position":1}\n'
        '{"type":1,"name":"a\\u003cb\\u003e\\u0026c\\u2028\\u0008\\u000c\\n\\"\\\\\\u0001",'
        '"size":3,"payload":"YUmYEAAAAAA=","position":2}\n'
        '{"type":1,"name_raw":"Y2Fm6Q==","payload":null,"position":3}\n'
        '{"type":1,"payload":null,"position":4}\n'
    )
    assert gzip.decompress(out.getvalue()).decode() == expected
    assert out.getvalue()[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_recorder_always_finishes_the_gzip_stream() -> None:
    out = io.BytesIO()
    recorder = Recorder(out)
    recorder.close()
    recorder.close()
    assert not out.closed
    assert gzip.decompress(out.getvalue()) == b""


def test_recorder_output_reads_back() -> None:
    out = io.BytesIO()
    recorder = Recorder(out)
    for index in range(5000):  # enough lines to flush the buffer several times
        recorder.segment(index.to_bytes(4, "big"))
        recorder.file(f"dir/file{index}".encode(), index, crc64(b"x") if index else None)
    recorder.close()
    entries = list(read_entries(io.BytesIO(out.getvalue())))
    assert entries[-1] == Entry(FILE_ENTRY, b"dir/file4999", 4999, crc64(b"x").to_bytes(8, "big"))
    assert len(entries) == 10000


def test_recorder_refuses_a_duplicate_path() -> None:
    recorder = Recorder(io.BytesIO())
    recorder.file(b"etc/", 0, None)
    with pytest.raises(TarSplitError, match="duplicate path"):
        recorder.file(b"./etc", 0, None)


# --- disassembling without the CLI --------------------------------------------------------------


def _disassemble(tar: bytes) -> tuple[Assembly, list[Entry], bytes]:
    out = io.BytesIO()
    tee: list[bytes] = []
    assembly = disassemble(io.BytesIO(tar), out, tee.append)
    return assembly, list(read_entries(io.BytesIO(out.getvalue()))), b"".join(tee)


def _merged(entries: Iterator[Entry] | list[Entry]) -> list[Entry]:
    """Entries with adjacent segments joined and empty ones dropped: how they replay."""
    merged: list[Entry] = []
    for entry in entries:
        if entry.type == SEGMENT_ENTRY and not entry.payload:
            continue
        if entry.type == SEGMENT_ENTRY and merged and merged[-1].type == SEGMENT_ENTRY:
            joined = (merged.pop().payload or b"") + (entry.payload or b"")
            merged.append(Entry(SEGMENT_ENTRY, b"", 0, joined))
        else:
            merged.append(entry)
    return merged


def test_disassemble_of_the_empty_tar() -> None:
    assembly, entries, tee = _disassemble(bytes(1024))
    assert assembly == Assembly(EMPTY_TAR_DIFF_ID, 0, 1024)
    assert _merged(entries) == [Entry(SEGMENT_ENTRY, b"", 0, bytes(1024))]
    assert tee == bytes(1024)


def test_disassemble_splits_the_spec_example() -> None:
    tar = _one_file_tar()
    assembly, entries, tee = _disassemble(tar)
    assert assembly == Assembly(_sha256(tar), 3, len(tar))
    assert tee == tar
    assert _merged(entries) == [
        Entry(SEGMENT_ENTRY, b"", 0, tar[:512]),
        Entry(FILE_ENTRY, b"a.txt", 3, base64.b64decode(HI_CRC_B64)),
        Entry(SEGMENT_ENTRY, b"", 0, tar[515:]),
    ]


def _patched_header(tar: bytes, field: slice, value: bytes) -> bytes:
    """``tar`` with the first header's ``field`` replaced and its checksum recomputed."""
    header = bytearray(tar[:512])
    header[field] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header) + tar[512:]


def test_disassemble_reads_base_256_sizes() -> None:
    tar = _patched_header(_one_file_tar(), slice(124, 136), b"\x80" + (3).to_bytes(11, "big"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as reference:  # an independent reader agrees
        assert reference.getmember("a.txt").size == 3

    assembly, entries, _ = _disassemble(tar)
    assert entries[1] == Entry(FILE_ENTRY, b"a.txt", 3, base64.b64decode(HI_CRC_B64))
    assert assembly.diff_id == _sha256(tar)
    rebuilt = io.BytesIO()
    recorded = io.BytesIO()
    disassemble(io.BytesIO(tar), recorded)
    assemble(io.BytesIO(recorded.getvalue()), DictFiles({b"a.txt": b"hi\n"}), rebuilt.write)
    assert rebuilt.getvalue() == tar


def test_disassemble_keeps_bytes_after_the_end_of_the_archive() -> None:
    tar = _one_file_tar() + b"trailing junk" * 1000
    assembly, entries, _ = _disassemble(tar)
    assert assembly == Assembly(_sha256(tar), 3, len(tar))
    assert _merged(entries)[-1].payload == tar[515:]


def test_disassemble_accepts_a_tar_without_end_blocks() -> None:
    tar = _one_file_tar()[:1024]
    assembly, entries, _ = _disassemble(tar)
    assert assembly == Assembly(_sha256(tar), 3, 1024)
    assert _merged(entries)[-1].payload == tar[515:]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda tar: tar[:700], "ends inside the body", id="truncated-body"),
        pytest.param(lambda tar: tar[:300], "ends inside a header", id="truncated-header"),
        pytest.param(lambda tar: b"x" + tar[1:], "bad checksum", id="bad-checksum"),
        pytest.param(
            lambda tar: bytes(512) + tar[:-512], "lone zero block", id="zero-block-then-header"
        ),
        pytest.param(
            lambda tar: _patched_header(tar, slice(124, 136), b"0000000001x\x00"),
            "bad number",
            id="bad-octal",
        ),
    ],
)
def test_disassemble_refuses_malformed_tars(damage: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(TarSplitError, match=message):
        disassemble(io.BytesIO(damage(_one_file_tar(b"x" * 1000))), io.BytesIO())


def test_disassemble_refuses_duplicate_paths() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("twice")
            tar.addfile(info, io.BytesIO())
    with pytest.raises(TarSplitError, match='duplicate path "twice"'):
        disassemble(io.BytesIO(out.getvalue()), io.BytesIO())


# --- interop with the real tar-split CLI --------------------------------------------------------


@dataclass(frozen=True)
class TarCase:
    name: str
    tar: Path
    tree: Path  # the tar extracted by GNU tar

    def size(self) -> int:
        """Sum of the regular files' sizes, as Python's tarfile reads the tar."""
        with tarfile.open(self.tar) as reference:
            return sum(member.size for member in reference if member.isreg())


def _make_source_tree(root: Path) -> Path:
    """A tree with every kind of entry a layer may hold and names that stress the formats."""
    tree = root / "tree"
    sub = tree / ("d" * 60) / ("e" * 60)
    sub.mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"hi\n")
    (tree / "empty").write_bytes(b"")
    (tree / "block512").write_bytes(b"b" * 512)
    (tree / "big.bin").write_bytes(hashlib.sha512(b"seed").digest() * 24_000)  # 1.5 MB
    (sub / ("long-name-" + "x" * 76 + ".txt")).write_bytes(b"long\n")
    os.link(tree / "a.txt", tree / "hard")
    os.symlink("a.txt", tree / "link")
    os.symlink("t" * 120, tree / "long-link")
    os.mkfifo(tree / "pipe")
    not_utf8 = os.fsencode(tree) + b"/caf\xe9"
    os.mkdir(not_utf8)
    with open(not_utf8 + b"/\xff\xfe.bin", "wb") as out:
        out.write(b"not utf-8\n")
    for name in ['a<b>&c "q" \\', "new\nline", "sep\u2028x", "tab\there", "ünïcödé"]:
        (tree / name).write_text(name)
    return tree


def _tarfile_pax(path: Path) -> None:
    """A PAX tar by Python's tarfile: a global header and long non-ASCII names."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}) as tar:
        for index, name in enumerate(["ü" * 120 + ".txt", "dir/" + "ñ" * 90, "plain.txt"]):
            info = tarfile.TarInfo(name)
            body = f"body {index}\n".encode() * (index + 1)
            info.size = len(body)
            info.uid = 2**30  # beyond octal fields: PAX "uid" record
            tar.addfile(info, io.BytesIO(body))


def _tarfile_gnu(path: Path) -> None:
    """An old-GNU tar by Python's tarfile: base-256 ids, long names, non-UTF-8 names."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for name in ["n" * 150, "caf\udce9.txt", "short"]:
            info = tarfile.TarInfo(name)
            info.size = 7
            info.uid = info.gid = 2**30
            tar.addfile(info, io.BytesIO(b"content"))


def _gnu_tar(*args: str) -> None:
    result = subprocess.run(["tar", *args], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"tar {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")


@pytest.fixture(scope="session")
def tar_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TarCase]:
    root = tmp_path_factory.mktemp("tars")
    tree = _make_source_tree(root)
    tars: dict[str, Callable[[Path], None]] = {
        "gnu": lambda p: _gnu_tar("--format=gnu", "-cf", str(p), "-C", str(root), "tree"),
        "posix": lambda p: _gnu_tar("--format=posix", "-cf", str(p), "-C", str(root), "tree"),
        "ustar-record-512": lambda p: _gnu_tar(
            "--format=ustar", "-b", "1", "-cf", str(p), "-C", str(tree), "a.txt", "d" * 60
        ),
        "v7": lambda p: _gnu_tar("--format=v7", "-cf", str(p), "-C", str(tree), "a.txt", "hard"),
        "tarfile-pax": _tarfile_pax,
        "tarfile-gnu": _tarfile_gnu,
        "empty": lambda p: p.write_bytes(bytes(1024)),
        "trailing-junk": lambda p: p.write_bytes(_one_file_tar() + b"junk" * 3000),
        "usr-include": lambda p: _gnu_tar(
            "-cf", str(p), "-C", "/", "usr/include/linux", "usr/include/x86_64-linux-gnu"
        ),
    }
    cases = {}
    for name, make in tars.items():
        tar = root / f"{name}.tar"
        make(tar)
        extracted = root / f"{name}.tree"
        extracted.mkdir()
        _gnu_tar("-xf", str(tar), "-C", str(extracted))
        cases[name] = TarCase(name, tar, extracted)
    return cases


CASES = [
    "gnu",
    "posix",
    "ustar-record-512",
    "v7",
    "tarfile-pax",
    "tarfile-gnu",
    "empty",
    "trailing-junk",
    "usr-include",
]


def _cli_disasm(cli: str, tar: Path, out: Path) -> None:
    subprocess.run(
        [cli, "disasm", "--no-stdout", "--output", str(out), str(tar)],
        check=True,
        capture_output=True,
    )


@pytest.mark.integration
@pytest.mark.parametrize("case_name", CASES)
def test_our_assemble_replays_cli_disasm(
    tar_cases: dict[str, TarCase], case_name: str, tmp_path: Path
) -> None:
    cli = require_tool("tar-split", "tar-split")
    case = tar_cases[case_name]
    _cli_disasm(cli, case.tar, tmp_path / "cli.json.gz")
    original = case.tar.read_bytes()
    rebuilt = io.BytesIO()

    with (tmp_path / "cli.json.gz").open("rb") as stream, ConfinedRoot(case.tree) as files:
        assembly = assemble(stream, files, rebuilt.write)

    assert assembly == Assembly(_sha256(original), case.size(), len(original))
    assert rebuilt.getvalue() == original


@pytest.mark.integration
@pytest.mark.parametrize("case_name", CASES)
def test_cli_asm_replays_our_disassemble(
    tar_cases: dict[str, TarCase], case_name: str, tmp_path: Path
) -> None:
    cli = require_tool("tar-split", "tar-split")
    case = tar_cases[case_name]
    original = case.tar.read_bytes()
    tee: list[bytes] = []

    with case.tar.open("rb") as tar, (tmp_path / "ours.json.gz").open("wb") as out:
        assembly = disassemble(tar, out, tee.append)
    rebuilt = tmp_path / "rebuilt.tar"
    ours = str(tmp_path / "ours.json.gz")
    command = [cli, "asm", "--input", ours, "--path", str(case.tree), "--output", str(rebuilt)]
    subprocess.run(command, check=True, capture_output=True)

    assert assembly == Assembly(_sha256(original), case.size(), len(original))
    assert b"".join(tee) == original
    assert rebuilt.read_bytes() == original


@pytest.mark.integration
@pytest.mark.parametrize("case_name", CASES)
def test_our_entries_equal_cli_disasm_entries(
    tar_cases: dict[str, TarCase], case_name: str, tmp_path: Path
) -> None:
    cli = require_tool("tar-split", "tar-split")
    case = tar_cases[case_name]
    _cli_disasm(cli, case.tar, tmp_path / "cli.json.gz")
    with case.tar.open("rb") as tar, (tmp_path / "ours.json.gz").open("wb") as out:
        disassemble(tar, out)

    with (tmp_path / "cli.json.gz").open("rb") as theirs:
        expected = _merged(read_entries(theirs))
    with (tmp_path / "ours.json.gz").open("rb") as ours:
        assert _merged(read_entries(ours)) == expected
    assert len(expected) > 0


def _header_only_with_size(kind: str) -> tuple[bytes, bytes]:
    """A tar whose only header has no body although its size field says 5, and its name."""
    if kind == "symlink":
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "a.txt"
        field = (slice(124, 136), b"%011o\x00" % 5)
    else:  # a pre-POSIX regular type ("\0") whose trailing slash makes it a directory
        info = tarfile.TarInfo("olddir/")
        field = (slice(124, 157), b"%011o\x00" % 5 + bytes(20) + b"\x00")
    header = _patched_header(info.tobuf(tarfile.GNU_FORMAT), *field)
    return header + bytes(1024), info.name.encode()


@pytest.mark.parametrize("kind", ["symlink", "legacy-directory"])
def test_disassemble_reads_no_body_for_header_only_types(kind: str) -> None:
    tar, name = _header_only_with_size(kind)
    with tarfile.open(fileobj=io.BytesIO(tar)) as reference:  # an independent reader agrees
        assert not reference.getmember(name.decode().rstrip("/")).isreg()

    assembly, entries, _ = _disassemble(tar)
    assert _merged(entries) == [
        Entry(SEGMENT_ENTRY, b"", 0, tar[:512]),
        Entry(FILE_ENTRY, name, 5, bytes(8)),  # tar-split checksums the 0 bytes it read
        Entry(SEGMENT_ENTRY, b"", 0, bytes(1024)),
    ]
    assert assembly == Assembly(_sha256(tar), 5, 1536)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["symlink", "legacy-directory"])
def test_cli_agrees_on_header_only_entries_with_a_size(kind: str, tmp_path: Path) -> None:
    cli = require_tool("tar-split", "tar-split")
    tar, _ = _header_only_with_size(kind)
    (tmp_path / "odd.tar").write_bytes(tar)
    _cli_disasm(cli, tmp_path / "odd.tar", tmp_path / "cli.json.gz")

    _, ours, _ = _disassemble(tar)
    with (tmp_path / "cli.json.gz").open("rb") as theirs:
        assert _merged(ours) == _merged(read_entries(theirs))


@pytest.mark.integration
def test_cli_and_disassemble_both_refuse_duplicate_paths(tmp_path: Path) -> None:
    cli = require_tool("tar-split", "tar-split")
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name in ["dir/", "dir"]:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    result = subprocess.run(
        [cli, "disasm", "--no-stdout", "--output", str(tmp_path / "x.json.gz"), str(path)],
        capture_output=True,
        check=False,
    )
    assert result.returncode != 0
    with pytest.raises(TarSplitError, match="duplicate path"), path.open("rb") as tar:
        disassemble(tar, io.BytesIO())


@pytest.mark.integration
def test_disassemble_refuses_gnu_sparse_files(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as out:
        out.truncate(4 << 20)
        out.seek(2 << 20)
        out.write(b"data")
    for tar_format in ["gnu", "posix"]:
        tar = tmp_path / f"{tar_format}.tar"
        _gnu_tar(
            f"--format={tar_format}", "--sparse", "-cf", str(tar), "-C", str(tmp_path), "sparse"
        )
        with pytest.raises(TarSplitError, match="sparse"), tar.open("rb") as stream:
            disassemble(stream, io.BytesIO())


def test_crc_mismatch_on_a_real_tree(tmp_path: Path) -> None:
    tar = _one_file_tar(name="d/a.txt")
    recorded = io.BytesIO()
    disassemble(io.BytesIO(tar), recorded)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"HI\n")
    with (
        ConfinedRoot(tmp_path) as files,
        pytest.raises(TarSplitError, match=r'^file integrity checksum failed for "d/a.txt"$'),
    ):
        assemble(io.BytesIO(recorded.getvalue()), files)
