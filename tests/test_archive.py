"""Regenerated layer tars: their bytes, their tar-split, and what real tar tools make of them.

Expectations come from the spec's tables (tarsplit-and-drivers.md C.1, C.7, C.8) written out by
hand, from GNU tar and Python's tarfile reading the result, and from Debian's ``tar-split``
reassembling the recorded stream; never from the writer under test.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migrate import archive
from migrate.digest import EMPTY_TAR_DIFF_ID
from migrate.errors import LayerContentError
from migrate.tarsplit import Assembly
from tests.conftest import require_tool

T = 1_500_000_000  # the mtime every test tree is stamped with, in seconds
CAPABILITY = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)  # cap_net_raw+ep, as setcap writes
P60, Q60, R90, S150 = b"p" * 60, b"q" * 60, b"r" * 90, b"s" * 150


class Regenerated:
    """One regeneration's result, the tar bytes handed to ``write`` and the tar-split bytes."""

    def __init__(self, run: Callable[[io.BytesIO, Callable[[bytes], object]], Assembly]) -> None:
        written = bytearray()
        tar_split = io.BytesIO()
        self.assembly = run(tar_split, written.extend)
        self.tar = bytes(written)
        self.tar_split = tar_split.getvalue()


def aufs(diff_dir: Path) -> Regenerated:
    return Regenerated(lambda out, write: archive.regenerate_aufs(diff_dir, out, write))


def naive(layer: Path, parent: Path | None = None) -> Regenerated:
    return Regenerated(lambda out, write: archive.regenerate_naive(layer, parent, out, write))


def members(tar: bytes) -> list[tuple[bytes, bytes, int, bytes, int, int]]:
    """(name, typeflag, mode, linkname, size, mtime) of every entry, as Python's tarfile reads."""
    with tarfile.open(
        fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape"
    ) as opened:
        return [
            (
                member.name.encode("utf-8", "surrogateescape"),
                member.type,
                member.mode,
                member.linkname.encode("utf-8", "surrogateescape"),
                member.size,
                member.mtime,
            )
            for member in opened
        ]


def gnu_tar(*args: str | Path, stdin: bytes | None = None) -> bytes:
    """Run GNU tar; fail the test on any complaint it prints."""
    tool = require_tool("tar", "tar")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    done = subprocess.run([tool, *args], input=stdin, capture_output=True, env=env, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode(errors="replace")
    return done.stdout


def gnu_names(tar: bytes) -> list[bytes]:
    return gnu_tar("-t", "--quoting-style=literal", "-f", "-", stdin=tar).splitlines()


def reassemble(regenerated: Regenerated, tree: Path, tmp_path: Path) -> bytes:
    """The tar that Debian's tar-split CLI rebuilds from the recorded stream and ``tree``."""
    tool = require_tool("tar-split", "tar-split")
    stream, rebuilt = tmp_path / "tar-split.json.gz", tmp_path / "rebuilt.tar"
    stream.write_bytes(regenerated.tar_split)
    command = [tool, "asm", "--input", stream, "--path", tree, "--output", rebuilt]
    subprocess.run(command, capture_output=True, check=True)
    return rebuilt.read_bytes()


def stamp(root: Path, seconds: int = T) -> None:
    """Set every mtime beneath ``root`` (and its own) to ``seconds``, deepest first."""
    for top, dirs, files in os.walk(root, topdown=False):
        for name in [*files, *dirs]:
            os.utime(Path(top, name), ns=(seconds * 10**9,) * 2, follow_symlinks=False)
    os.utime(root, ns=(seconds * 10**9,) * 2)


def write(path: Path, data: bytes = b"", mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def try_set_capability(path: Path) -> bool:
    try:
        os.setxattr(path, "security.capability", CAPABILITY)
    except OSError:
        return False
    return True


# --- (1)(2)(3) a tree with every kind of entry -------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tree"
    (root / "dir").mkdir(parents=True)
    write(root / "a.txt", b"hello\n")
    os.link(root / "a.txt", root / "dir" / "hard")
    (root / "dir" / "dangling").symlink_to("nowhere")
    (root / "dir" / "link-abs").symlink_to("/etc/passwd")
    (root / "dir" / "link-rel").symlink_to("../a.txt")
    write(root / "empty", mode=0o600)
    os.mkfifo(root / "fifo")
    (root / "fifo").chmod(0o640)
    write(root / "future")
    write(root / "héllo", b"hi")
    write(root / "old")
    (root / P60.decode() / Q60.decode()).mkdir(parents=True)
    write(root / P60.decode() / Q60.decode() / R90.decode(), b"rrr")
    write(root / "setuid", mode=0o4755)
    write(root / S150.decode())
    write(root / os.fsdecode(b"\xff\xfe"), b"bad")  # not UTF-8
    monkeypatch.chdir(root)  # a socket's path must fit in 108 bytes
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("sock")
    (root / "sock").chmod(0o644)
    for path in (root, root / "dir", root / P60.decode(), root / P60.decode() / Q60.decode()):
        path.chmod(0o755)
    stamp(root)
    set_mtime(root / "old", -1000 * 10**9 - 5)  # before 1970: written as 0
    set_mtime(root / "future", 2**33 * 10**9)  # beyond 11 octal digits: written as 0
    return root


TREE_ENTRIES = [
    (b"a.txt", b"0", 0o100644, b"", 6, T),
    (b"dir/", b"5", 0o40755, b"", 0, T),
    (b"dir/dangling", b"2", 0o120777, b"nowhere", 0, T),
    (b"dir/hard", b"1", 0o100644, b"a.txt", 0, T),
    (b"dir/link-abs", b"2", 0o120777, b"/etc/passwd", 0, T),
    (b"dir/link-rel", b"2", 0o120777, b"../a.txt", 0, T),
    (b"empty", b"0", 0o100600, b"", 0, T),
    (b"fifo", b"6", 0o10640, b"", 0, T),
    (b"future", b"0", 0o100644, b"", 0, 0),
    ("héllo".encode(), b"0", 0o100644, b"", 2, T),
    (b"old", b"0", 0o100644, b"", 0, 0),
    (P60 + b"/", b"5", 0o40755, b"", 0, T),
    (P60 + b"/" + Q60 + b"/", b"5", 0o40755, b"", 0, T),
    (P60 + b"/" + Q60 + b"/" + R90, b"0", 0o100644, b"", 3, T),
    (b"setuid", b"0", 0o104755, b"", 0, T),
    (b"sock", b"\x00", 0o140644, b"", 0, T),  # Docker writes a socket as typeflag NUL
    (S150, b"0", 0o100644, b"", 0, T),
    (b"\xff\xfe", b"0", 0o100644, b"", 3, T),
]


def test_tree_lists_back_with_every_name_type_mode_and_link(tree: Path) -> None:
    regenerated = naive(tree)

    assert gnu_names(regenerated.tar) == [entry[0] for entry in TREE_ENTRIES]
    # tarfile drops a directory's trailing slash; GNU tar above shows it is there.
    assert members(regenerated.tar) == [(name.rstrip(b"/"), *rest) for name, *rest in TREE_ENTRIES]
    assert regenerated.assembly.size == 6 + 2 + 3 + 3
    assert regenerated.assembly.length == len(regenerated.tar)


def test_tree_reassembles_through_tar_split_to_the_hashed_bytes(tree: Path, tmp_path: Path) -> None:
    regenerated = naive(tree)

    rebuilt = reassemble(regenerated, tree, tmp_path)

    assert hashlib.sha256(rebuilt).hexdigest() == regenerated.assembly.diff_id.hex
    assert rebuilt == regenerated.tar


def test_tree_extracted_by_gnu_tar_is_the_tree(tree: Path, tmp_path: Path) -> None:
    regenerated = naive(tree)
    copy = tmp_path / "copy"
    copy.mkdir()

    gnu_tar("-x", "-p", "-C", copy, "-f", "-", stdin=regenerated.tar)

    for relative in [entry[0].rstrip(b"/") for entry in TREE_ENTRIES]:
        source, target = tree / os.fsdecode(relative), copy / os.fsdecode(relative)
        original, extracted = source.lstat(), target.lstat()
        if relative == b"sock":  # tar has no socket type: it comes back as an empty file
            assert stat.S_ISREG(extracted.st_mode)
            continue
        assert extracted.st_mode == original.st_mode, relative
        assert extracted.st_size == original.st_size, relative
        if stat.S_ISLNK(original.st_mode):
            assert target.readlink() == source.readlink()
        elif relative not in (b"old", b"future"):
            assert extracted.st_mtime_ns == T * 10**9, relative
    assert (copy / "a.txt").read_bytes() == b"hello\n"
    assert (copy / "dir" / "hard").stat().st_ino == (copy / "a.txt").stat().st_ino
    assert (copy / P60.decode() / Q60.decode() / R90.decode()).read_bytes() == b"rrr"


def test_regenerating_twice_gives_identical_bytes(tree: Path) -> None:
    first, second = naive(tree), naive(tree)

    assert first.tar == second.tar
    assert first.tar_split == second.tar_split
    assert first.assembly == second.assembly


def test_long_names_use_a_ustar_prefix_when_they_split_and_pax_otherwise(tree: Path) -> None:
    blocks = header_blocks(naive(tree).tar)

    split = blocks[P60 + b"/" + Q60 + b"/" + R90]
    assert split[0][0:100] == R90 + bytes(10)
    assert split[0][345:500] == P60 + b"/" + Q60 + bytes(155 - 121)
    assert len(split) == 1  # no PAX header

    pax, main = blocks[S150]
    assert pax[0:100] == b"PaxHeaders.0/" + b"s" * 87
    assert pax[156:157] == b"x"
    assert main[0:100] == bytes(100)  # the name went to PAX: the field stays empty


def test_every_kind_of_non_directory_with_several_links_becomes_a_hard_link(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifo").chmod(0o644)
    os.link(tmp_path / "fifo", tmp_path / "fifo-link")
    (tmp_path / "sym").symlink_to("target")
    os.link(tmp_path / "sym", tmp_path / "sym-link", follow_symlinks=False)
    stamp(tmp_path)

    assert members(naive(tmp_path).tar) == [
        (b"fifo", b"6", 0o10644, b"", 0, T),
        (b"fifo-link", b"1", 0o10644, b"fifo", 0, T),  # Docker 1.10 links more than files
        (b"sym", b"2", 0o120777, b"target", 0, T),
        (b"sym-link", b"1", 0o120777, b"sym", 0, T),
    ]


def test_a_long_directory_name_splits_before_its_trailing_slash(tmp_path: Path) -> None:
    (tmp_path / "a" / ("b" * 99)).mkdir(parents=True)

    (block,) = header_blocks(naive(tmp_path).tar)[b"a/" + b"b" * 99]

    assert block[0:100] == b"b" * 99 + b"/"
    assert block[345:347] == b"a\x00"


# --- (6) exact bytes from the spec's field table --------------------------------------------------


def header_blocks(tar: bytes) -> dict[bytes, list[bytes]]:
    """Every entry's header blocks (PAX header first), keyed by the name the entry resolves to.

    A minimal reader of the ustar layout in the spec's table, independent of the writer.
    """
    result: dict[bytes, list[bytes]] = {}
    pending: list[bytes] = []
    records: dict[bytes, bytes] = {}
    offset = 0
    while tar[offset : offset + 512] != bytes(512):
        block = tar[offset : offset + 512]
        size = int(block[124:135], 8) if block[156:157] in (b"0", b"x") else 0
        body = tar[offset + 512 : offset + 512 + size]
        offset += 512 + -size % 512 + size
        pending.append(block)
        if block[156:157] == b"x":
            records = pax_records(body)
            continue
        name = block[0:100].rstrip(b"\x00")
        if block[345:500].rstrip(b"\x00"):
            name = block[345:500].rstrip(b"\x00") + b"/" + name
        result[records.get(b"path", name).rstrip(b"/")] = pending
        pending, records = [], {}
    return result


def pax_records(body: bytes) -> dict[bytes, bytes]:
    """The ``<length> <key>=<value>\\n`` records of a PAX header body."""
    records = {}
    while body:
        length = int(body.split(b" ", 1)[0])
        key, value = body[:length].split(b" ", 1)[1][:-1].split(b"=", 1)
        records[key] = value
        body = body[length:]
    return records


def test_a_regular_file_is_exactly_the_header_the_spec_table_gives(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    write(layer / "hello.txt", b"hello")
    stamp(layer, 1234567890)

    regenerated = naive(layer)

    header = b"".join(
        [
            b"hello.txt".ljust(100, b"\x00"),
            b"0100644\x00",  # mode with the S_IFREG bits
            b"0000000\x00",  # uid
            b"0000000\x00",  # gid
            b"00000000005\x00",  # size
            b"11145401322\x00",  # mtime 1234567890 in octal
            # hand-summed: name 930, mode 351, uid 336, gid 336, size 533, mtime 552,
            # checksum as spaces 256, typeflag 48, magic 655, devmajor 336, devminor 336
            # = 4669 = 0o11075
            b"011075\x00 ",
            b"0",
            bytes(100),  # linkname
            b"ustar\x0000",
            bytes(64),  # uname, gname
            b"0000000\x00",
            b"0000000\x00",
            bytes(167),  # prefix and the rest of the block
        ]
    )
    assert regenerated.tar == header + b"hello" + bytes(507) + bytes(1024)
    assert regenerated.assembly.diff_id.hex == hashlib.sha256(regenerated.tar).hexdigest()
    assert regenerated.assembly.size == 5


def test_an_empty_layer_is_the_empty_tar(tmp_path: Path) -> None:
    assert naive(tmp_path).assembly.diff_id == EMPTY_TAR_DIFF_ID
    assert aufs(tmp_path).assembly.length == 1024


def test_a_non_ascii_name_goes_to_a_pax_record_under_an_ascii_header_name(tmp_path: Path) -> None:
    write(tmp_path / "é")

    tar = naive(tmp_path).tar

    pax, main = header_blocks(tar)["é".encode()]
    assert pax[0:100] == b"PaxHeaders.0/".ljust(100, b"\x00")  # non-ASCII bytes dropped
    assert pax[100:108] == b"0000000\x00"
    assert pax[124:136] == b"00000000013\x00"  # 11 bytes of records
    assert pax[156:157] == b"x"
    # "path=é" is 7 bytes; with space and newline 9, with two length digits 11.
    assert tar[512:1024] == "11 path=é\n".encode().ljust(512, b"\x00")
    assert main[0:100] == bytes(100)


def test_a_big_uid_is_base_256_and_switches_the_rest_of_the_archive_to_gnu_magic(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to an arbitrary uid needs root")
    write(tmp_path / "a")
    write(tmp_path / "b")
    (tmp_path / "c").mkdir()
    long_name = b"c/" + b"x" * 100  # would split into a ustar prefix in POSIX mode
    write(tmp_path / long_name.decode())
    os.chown(tmp_path / "a", 3_000_000, 0)

    regenerated = naive(tmp_path)
    blocks = header_blocks(regenerated.tar)

    assert blocks[b"a"][0][108:116] == b"\x80\x00\x00\x00\x00\x2d\xc6\xc0"
    assert blocks[b"a"][0][257:265] == b"ustar  \x00"
    assert blocks[b"b"][0][257:265] == b"ustar  \x00"
    pax, main = blocks[long_name]
    assert pax[156:157] == b"x"
    assert main[345:500] == bytes(155) and main[0:100] == bytes(100)
    with tarfile.open(fileobj=io.BytesIO(regenerated.tar)) as opened:
        assert opened.getmember("a").uid == 3_000_000
    assert gnu_names(regenerated.tar) == [b"a", b"b", b"c/", long_name]


def test_devices_and_capabilities_are_written_the_docker_way(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "blk", 0o660 | stat.S_IFBLK, os.makedev(259, 5))
        os.mknod(tmp_path / "chr", 0o666 | stat.S_IFCHR, os.makedev(1, 300))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    write(tmp_path / "ping", b"x", 0o755)
    write(tmp_path / "é-cap")
    if not try_set_capability(tmp_path / "ping") or not try_set_capability(tmp_path / "é-cap"):
        pytest.skip("security.capability cannot be set here")
    stamp(tmp_path)

    regenerated = naive(tmp_path)
    blocks = header_blocks(regenerated.tar)

    assert blocks[b"blk"][0][156:157] == b"4"
    assert blocks[b"blk"][0][329:345] == b"0000403\x000000005\x00"  # 259, 5
    assert blocks[b"chr"][0][329:345] == b"0000001\x000000454\x00"  # 1, 300: old encoding
    # 32-byte key, "=", 20-byte value: 53; with space and newline 55; with "57 " 57.
    record = b"57 SCHILY.xattr.security.capability=" + CAPABILITY + b"\n"
    assert pax_records(header_body(regenerated.tar, b"ping")) == {record[3:35]: CAPABILITY}
    assert record in regenerated.tar
    # Records come sorted by key, where Go's map order is random: "S" sorts before "p".
    assert header_body(regenerated.tar, "é-cap".encode()) == record + "15 path=é-cap\n".encode()
    copy = tmp_path.parent / "copy"
    copy.mkdir()
    options = ("--xattrs", "--xattrs-include=security.*")
    gnu_tar("-x", *options, "-C", copy, "-f", "-", stdin=regenerated.tar)
    assert os.getxattr(copy / "ping", "security.capability") == CAPABILITY
    assert os.lstat(copy / "chr").st_rdev == os.makedev(1, 300)
    assert os.lstat(copy / "blk").st_rdev == os.makedev(259, 5)


def header_body(tar: bytes, name: bytes) -> bytes:
    """The records of the PAX header in front of the entry ``name``."""
    pax = header_blocks(tar)[name][0]
    start = tar.index(pax) + 512
    return tar[start : start + int(pax[124:135], 8)]


# --- (4) aufs ------------------------------------------------------------------------------------


def test_aufs_drops_its_meta_files_and_links_whiteouts_to_the_first(tmp_path: Path) -> None:
    diff = tmp_path / "diff"
    (diff / ".wh..wh.plnk").mkdir(parents=True)
    (diff / ".wh..wh.orph").mkdir()
    (diff / "sub" / ".wh..wh.tmp.1a2b").mkdir(parents=True)
    base = diff / ".wh..wh.aufs"
    write(base, mode=0o444)
    write(diff / ".wh..wh.plnk" / "pseudo-link", b"x")
    for whiteout in (".wh..wh..opq", ".wh.gone", "sub/.wh..wh..opq", "sub/.wh.old"):
        os.link(base, diff / whiteout)  # aufs makes every whiteout a link of its base file
    write(diff / "file", b"data")
    stamp(diff)

    regenerated = aufs(diff)

    assert members(regenerated.tar) == [
        (b".wh..wh..opq", b"0", 0o100444, b"", 0, T),
        (b".wh.gone", b"1", 0o100444, b".wh..wh..opq", 0, T),
        (b"file", b"0", 0o100644, b"", 4, T),
        (b"sub", b"5", 0o40755, b"", 0, T),
        (b"sub/.wh..wh..opq", b"1", 0o100444, b".wh..wh..opq", 0, T),
        (b"sub/.wh..wh.tmp.1a2b", b"5", 0o40755, b"", 0, T),
        (b"sub/.wh.old", b"1", 0o100444, b".wh..wh..opq", 0, T),
    ]
    rebuilt = reassemble(regenerated, diff, tmp_path)
    assert hashlib.sha256(rebuilt).hexdigest() == regenerated.assembly.diff_id.hex


# --- (5) the naive differ ------------------------------------------------------------------------


def build(root: Path, files: dict[str, bytes | None], modes: dict[str, int] | None = None) -> None:
    """Make ``root`` with ``files`` (None makes a directory), all stamped with mtime T."""
    root.mkdir()
    for name, content in files.items():
        if content is None:
            (root / name).mkdir(parents=True)
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            write(root / name, content, (modes or {}).get(name, 0o644))
    for top, dirs, _ in os.walk(root):
        for directory in [Path(top), *(Path(top, name) for name in dirs)]:
            directory.chmod(0o755)
    stamp(root)


@pytest.fixture
def parent_and_layer(tmp_path: Path) -> tuple[Path, Path]:
    parent, layer = tmp_path / "parent", tmp_path / "layer"
    common = {
        "keep": b"same",
        "a/b": b"b",
        "unchanged/file": b"u",
        "mod-mtime": b"x",
        "mod-size": b"x",
        "mod-mode": b"x",
        "same-second": b"s",
    }
    build(
        parent,
        {
            **common,
            "gone": b"g",
            "gonedir/sub/deep": b"d",
            "repl/child": b"c",
            "f2d": b"file",
            "keepdir/old": b"o",
        },
    )
    build(
        layer,
        {
            **common,
            "a/new": b"n",
            "a-b": b"ab",
            "repl": b"now a file",
            "f2d/x": b"x",
            "keepdir": None,
            "mod-size": b"xx",
        },
        {"mod-mode": 0o600},
    )
    set_mtime(layer / "mod-mtime", (T + 10) * 10**9)
    set_mtime(parent / "same-second", T * 10**9)  # no nanoseconds, as after a tar extraction
    set_mtime(layer / "same-second", T * 10**9 + 500)
    set_mtime(layer / "keepdir", (T + 7) * 10**9)
    set_mtime(layer, (T + 3) * 10**9)
    return parent, layer


def test_naive_diff_lists_changes_in_full_path_byte_order(
    parent_and_layer: tuple[Path, Path],
) -> None:
    parent, layer = parent_and_layer

    regenerated = naive(layer, parent)

    assert members(regenerated.tar) == [
        (b"a", b"5", 0o40755, b"", 0, T),  # unchanged itself, but a/new was added
        (b"a-b", b"0", 0o100644, b"", 2, T),  # '-' sorts before '/'
        (b"a/new", b"0", 0o100644, b"", 1, T),
        (b"f2d", b"5", 0o40755, b"", 0, T),  # a file replaced by a directory
        (b"f2d/x", b"0", 0o100644, b"", 1, T),
        (b".wh.gone", b"\x00", 0, b"", 0, T + 3),  # whiteout: the layer root's mtime
        (b".wh.gonedir", b"\x00", 0, b"", 0, T + 3),  # one whiteout for a whole directory
        (b"keepdir", b"5", 0o40755, b"", 0, T + 7),
        (b"keepdir/.wh.old", b"\x00", 0, b"", 0, T + 7),  # its parent directory's mtime
        (b"mod-mode", b"0", 0o100600, b"", 1, T),
        (b"mod-mtime", b"0", 0o100644, b"", 1, T + 10),
        (b"mod-size", b"0", 0o100644, b"", 2, T),
        (b"repl", b"0", 0o100644, b"", 10, T),  # a directory replaced by a file: no whiteouts
    ]
    assert gnu_names(regenerated.tar)[:4] == [b"a/", b"a-b", b"a/new", b"f2d/"]


def test_naive_diff_whiteout_header_is_bare(parent_and_layer: tuple[Path, Path]) -> None:
    parent, layer = parent_and_layer

    whiteout = header_blocks(naive(layer, parent).tar)[b".wh.gone"][0]

    assert whiteout[100:136] == b"0000000\x00" * 3 + b"00000000000\x00"  # mode, uid, gid, size
    assert whiteout[136:148] == b"%011o\x00" % (T + 3)
    assert whiteout[156:157] == b"\x00"


def test_naive_diff_reassembles_and_repeats_identically(
    parent_and_layer: tuple[Path, Path], tmp_path: Path
) -> None:
    parent, layer = parent_and_layer

    first, second = naive(layer, parent), naive(layer, parent)

    assert first.tar == second.tar and first.tar_split == second.tar_split
    rebuilt = reassemble(first, layer, tmp_path)
    assert hashlib.sha256(rebuilt).hexdigest() == first.assembly.diff_id.hex
    assert first.assembly.size == 2 + 1 + 1 + 1 + 1 + 2 + 10


def test_naive_diff_sees_a_changed_capability(tmp_path: Path) -> None:
    build(tmp_path / "parent", {"ping": b"x"})
    build(tmp_path / "layer", {"ping": b"x"})
    if not try_set_capability(tmp_path / "layer" / "ping"):
        pytest.skip("security.capability cannot be set here")

    regenerated = naive(tmp_path / "layer", tmp_path / "parent")

    assert [member[0] for member in members(regenerated.tar)] == [b"ping"]


def test_naive_diff_without_changes_is_the_empty_tar(tmp_path: Path) -> None:
    build(tmp_path / "parent", {"d/f": b"x"})
    build(tmp_path / "layer", {"d/f": b"x"})

    assert naive(tmp_path / "layer", tmp_path / "parent").assembly.diff_id == EMPTY_TAR_DIFF_ID


# --- bodies and hostile trees ---------------------------------------------------------------------


def test_large_bodies_stream_in_chunks_and_reassemble(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    pattern = bytes(range(256)) * 4096  # exactly the 1 MiB read size
    longer = pattern * 4 + b"tail"  # crosses the 4 MiB batches the hashing thread takes
    build(layer, {"exact": pattern, "longer": longer})

    regenerated = naive(layer)

    rebuilt = reassemble(regenerated, layer, tmp_path)
    assert hashlib.sha256(rebuilt).hexdigest() == regenerated.assembly.diff_id.hex
    with tarfile.open(fileobj=io.BytesIO(regenerated.tar)) as opened:
        body = opened.extractfile("longer")
        assert body is not None and body.read() == longer
    assert regenerated.assembly.size == 5 * len(pattern) + 4


@pytest.mark.usefixtures("no_leaks")
def test_a_failing_tar_split_output_stops_the_regeneration(tmp_path: Path) -> None:
    build(tmp_path / "layer", {"file": b"x"})
    (tmp_path / "read-only").write_bytes(b"")

    with (tmp_path / "read-only").open("rb") as unwritable, pytest.raises(io.UnsupportedOperation):
        archive.regenerate_naive(tmp_path / "layer", None, unwritable)


@pytest.mark.usefixtures("no_leaks")
def test_a_missing_layer_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LayerContentError, match="missing-layer"):
        naive(tmp_path / "missing-layer")


Swap = Callable[[bytes, Callable[[], None]], None]


def open_descriptors() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Check that a failed regeneration closes its descriptors and stops its hashing thread."""
    descriptors, threads = open_descriptors(), threading.active_count()
    yield
    assert open_descriptors() == descriptors
    assert threading.active_count() == threads


@pytest.fixture
def swap_after_lstat(monkeypatch: pytest.MonkeyPatch) -> Iterator[Swap]:
    """Run an action right after a given name was first lstat'ed: a racing writer."""
    actions: dict[bytes, Callable[[], None]] = {}
    real_lstat, real_lstat_if_present = archive._lstat, archive._lstat_if_present

    def racing_lstat(dir_fd: int, name: bytes, root: bytes, tar_name: bytes) -> os.stat_result:
        status = real_lstat(dir_fd, name, root, tar_name)
        if name in actions:
            actions.pop(name)()
        return status

    def racing_lstat_if_present(
        dir_fd: int, name: bytes, root: bytes, path: bytes
    ) -> os.stat_result | None:
        status = real_lstat_if_present(dir_fd, name, root, path)
        if name in actions:
            actions.pop(name)()
        return status

    monkeypatch.setattr(archive, "_lstat", racing_lstat)
    monkeypatch.setattr(archive, "_lstat_if_present", racing_lstat_if_present)
    yield actions.__setitem__


def _replace_with_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/passwd")


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.usefixtures("no_leaks")
def test_a_file_growing_after_it_was_opened_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_path / "layer", {"victim": b"body"})
    real_check = archive._check_same

    def check_then_grow(fd: int, listed: os.stat_result, root: bytes, name: bytes) -> None:
        real_check(fd, listed, root, name)
        with (tmp_path / "layer" / "victim").open("ab") as file:
            file.write(b" and more")

    monkeypatch.setattr(archive, "_check_same", check_then_grow)

    with pytest.raises(LayerContentError, match="layer/victim: size changed"):
        naive(tmp_path / "layer")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(Path.unlink, id="vanished"),
        pytest.param(_replace_with_symlink, id="symlink"),
        pytest.param(_replace_with_fifo, id="fifo"),
        pytest.param(lambda path: path.write_bytes(b"grown body"), id="grown"),
    ],
)
@pytest.mark.usefixtures("no_leaks")
def test_a_file_changing_between_lstat_and_open_is_an_error(
    tmp_path: Path,
    swap_after_lstat: Swap,
    change: Callable[[Path], None],
) -> None:
    build(tmp_path / "layer", {"d/victim": b"body"})
    victim = tmp_path / "layer" / "d" / "victim"
    swap_after_lstat(b"victim", lambda: change(victim))

    with pytest.raises(LayerContentError, match="layer/d/victim"):
        naive(tmp_path / "layer")


@pytest.mark.usefixtures("no_leaks")
def test_a_directory_swapped_for_a_symlink_is_not_followed(
    tmp_path: Path, swap_after_lstat: Swap
) -> None:
    build(tmp_path / "layer", {"d/f": b"x"})
    outside = tmp_path / "outside"
    build(outside, {"secret": b"s"})

    def swap() -> None:
        (tmp_path / "layer" / "d").rename(tmp_path / "d-moved")
        (tmp_path / "layer" / "d").symlink_to(outside)

    swap_after_lstat(b"d", swap)

    with pytest.raises(LayerContentError, match="layer/d"):
        naive(tmp_path / "layer")


@pytest.mark.usefixtures("no_leaks")
def test_a_directory_swapped_during_the_diff_is_not_followed(
    tmp_path: Path, swap_after_lstat: Swap
) -> None:
    build(tmp_path / "parent", {"x/d/f": b"f"})
    build(tmp_path / "layer", {"x/d/f": b"f", "x/d/g": b"g"})
    build(tmp_path / "outside", {"secret": b"s"})

    def swap() -> None:
        (tmp_path / "layer" / "x" / "d").rename(tmp_path / "d-moved")
        (tmp_path / "layer" / "x" / "d").symlink_to(tmp_path / "outside")

    swap_after_lstat(b"d", swap)

    with pytest.raises(LayerContentError, match="layer/x/d"):
        naive(tmp_path / "layer", tmp_path / "parent")


@pytest.mark.usefixtures("no_leaks")
def test_a_change_vanishing_before_export_is_an_error(tmp_path: Path) -> None:
    build(tmp_path / "parent", {})
    build(tmp_path / "layer", {"a": b"a", "b": b"b"})
    layer = tmp_path / "layer"

    def write_and_race(data: bytes) -> None:
        if (layer / "b").exists():
            (layer / "b").unlink()

    with pytest.raises(LayerContentError, match="layer/b"):
        archive.regenerate_naive(layer, tmp_path / "parent", io.BytesIO(), write_and_race)
