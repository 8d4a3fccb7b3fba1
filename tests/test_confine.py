"""Tests for migrate.confine: a layer's files are opened beneath its root and nowhere else.

Every layout is built for real under ``tmp_path``: a root holding the layer, and next to it a
secret file the layer must never be able to read.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.confine import ConfinedRoot
from migrate.errors import ConfinementError, TarSplitError
from migrate.tarsplit import assemble, crc64

SECRET = b"the other layer's secret\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A layer root with ordinary files; ``../secret`` and ``../other/`` lie outside it."""
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "secret").write_bytes(SECRET)
    layer = tmp_path / "layer"
    (layer / "etc" / "ssl").mkdir(parents=True)
    (layer / "usr" / "lib").mkdir(parents=True)
    (layer / "a.txt").write_bytes(b"a\n")
    (layer / "etc" / "hosts").write_bytes(b"hosts\n")
    (layer / "etc" / "ssl" / "cert").write_bytes(b"cert\n")
    (layer / "usr" / "lib" / "libx.so").write_bytes(b"lib\n")
    return layer


@pytest.fixture
def confined(root: Path) -> Iterator[ConfinedRoot]:
    with ConfinedRoot(root) as files:
        yield files


def _read(files: ConfinedRoot, name: bytes) -> bytes:
    with files.open(name) as stream:
        return stream.read()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (b"a.txt", b"a\n"),
        (b"/a.txt", b"a\n"),
        (b"./a.txt", b"a\n"),
        (b"//etc//hosts", b"hosts\n"),
        (b"etc/./ssl/cert", b"cert\n"),
        (b"usr/../etc/hosts", b"hosts\n"),
        (b"/./usr/lib/libx.so", b"lib\n"),
    ],
)
def test_names_map_beneath_the_root_as_go_join_maps_them(
    confined: ConfinedRoot, name: bytes, content: bytes
) -> None:
    assert _read(confined, name) == content


@pytest.mark.parametrize(
    "name", [b"../secret", b"/../secret", b"etc/../../secret", b"../other/secret", b"..", b"./.."]
)
def test_names_climbing_above_the_root_are_refused(confined: ConfinedRoot, name: bytes) -> None:
    with pytest.raises(ConfinementError, match="outside the layer root"):
        confined.open(name)


def test_a_symlinked_directory_is_refused(root: Path, confined: ConfinedRoot) -> None:
    (root / "escape").symlink_to(root.parent / "other")
    (root / "inside").symlink_to("etc")  # even one that stays inside the root
    with pytest.raises(ConfinementError, match='symlink "escape"'):
        confined.open(b"escape/secret")
    with pytest.raises(ConfinementError, match='symlink "inside"'):
        confined.open(b"inside/hosts")


def test_a_symlinked_directory_deeper_down_is_refused(root: Path, confined: ConfinedRoot) -> None:
    (root / "etc" / "up").symlink_to("../..")
    with pytest.raises(ConfinementError, match='symlink "up"'):
        confined.open(b"etc/up/secret")


@pytest.mark.parametrize("target", ["/etc/passwd", "../secret", "a.txt"])
def test_a_symlinked_leaf_is_refused(root: Path, confined: ConfinedRoot, target: str) -> None:
    (root / "etc" / "passwd").symlink_to(target)
    with pytest.raises(ConfinementError, match='symlink "passwd"'):
        confined.open(b"etc/passwd")


def test_a_fifo_leaf_is_refused_without_waiting_for_a_writer(
    root: Path, confined: ConfinedRoot
) -> None:
    os.mkfifo(root / "pipe")
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    signal.alarm(10)  # a blocking open would hang the suite; fail it instead
    try:
        with pytest.raises(ConfinementError, match='"pipe" is not a regular file'):
            confined.open(b"pipe")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", [b"etc", b"etc/ssl/", b"/", b"", b"."])
def test_a_directory_is_not_a_regular_file(confined: ConfinedRoot, name: bytes) -> None:
    with pytest.raises(ConfinementError, match="not a regular file"):
        confined.open(name)


def test_a_socket_leaf_is_refused(root: Path, confined: ConfinedRoot) -> None:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(os.fsencode(root / "sock"))
        with pytest.raises(ConfinementError, match="not a regular file"):
            confined.open(b"sock")
    finally:
        server.close()


@pytest.mark.parametrize("name", [b"missing", b"etc/missing", b"nodir/file"])
def test_a_missing_file_is_a_tar_split_error_naming_the_entry(
    confined: ConfinedRoot, name: bytes
) -> None:
    with pytest.raises(TarSplitError, match=f'^layer file "{name.decode()}" is missing$') as caught:
        confined.open(name)
    assert not isinstance(caught.value, ConfinementError)


def test_a_file_used_as_a_directory_is_a_tar_split_error(confined: ConfinedRoot) -> None:
    with pytest.raises(TarSplitError, match=r'"a\.txt/x"') as caught:
        confined.open(b"a.txt/x")
    assert not isinstance(caught.value, ConfinementError)


def test_non_utf8_names_are_opened_as_bytes(root: Path, confined: ConfinedRoot) -> None:
    directory = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(directory)
    with open(directory + b"/\xff.bin", "wb") as out:
        out.write(b"raw\n")
    assert _read(confined, b"caf\xe9/\xff.bin") == b"raw\n"


def test_files_in_changing_directories_open_in_any_order(confined: ConfinedRoot) -> None:
    order = [b"etc/hosts", b"etc/ssl/cert", b"etc/hosts", b"usr/lib/libx.so", b"a.txt"]
    order += [b"etc/ssl/cert", b"a.txt", b"usr/lib/libx.so", b"etc/hosts"]
    expected = {
        b"a.txt": b"a\n",
        b"etc/hosts": b"hosts\n",
        b"etc/ssl/cert": b"cert\n",
        b"usr/lib/libx.so": b"lib\n",
    }
    assert [_read(confined, name) for name in order] == [expected[name] for name in order]


def test_a_cached_directory_is_not_trusted_after_a_failure(
    root: Path, confined: ConfinedRoot
) -> None:
    assert _read(confined, b"etc/hosts") == b"hosts\n"
    with pytest.raises(ConfinementError):
        confined.open(b"../secret")
    with pytest.raises(TarSplitError):
        confined.open(b"usr/missing/x")
    assert _read(confined, b"etc/ssl/cert") == b"cert\n"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_close_releases_every_descriptor(root: Path) -> None:
    before = _open_fds()
    files = ConfinedRoot(root)
    for name in [b"etc/ssl/cert", b"usr/lib/libx.so", b"a.txt", b"etc/hosts"]:
        _read(files, name)
    with pytest.raises(ConfinementError):
        files.open(b"etc/ssl")
    files.close()
    files.close()
    assert _open_fds() == before


def test_a_missing_root_is_a_tar_split_error(tmp_path: Path) -> None:
    with pytest.raises(TarSplitError, match="cannot open layer root"):
        ConfinedRoot(tmp_path / "absent")


def test_a_crafted_stream_cannot_pull_a_secret_into_the_tar(root: Path) -> None:
    # The CRC fits the secret: had any of these names been followed, assemble would succeed.
    (root / "lib").symlink_to(root.parent / "other")
    (root / "shadow").symlink_to(root.parent / "secret")
    payload = base64.b64encode(crc64(SECRET).to_bytes(8, "big")).decode()
    for name in ["../secret", "/../secret", "lib/secret", "shadow", "etc/../../other/secret"]:
        line = f'{{"type":1,"name":"{name}","size":{len(SECRET)},"payload":"{payload}"}}'
        with ConfinedRoot(root) as files, pytest.raises(ConfinementError):
            assemble(io.BytesIO(gzip.compress(line.encode())), files)
