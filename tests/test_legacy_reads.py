"""Legacy metadata is read with bounded memory, never through a symlink, never waiting on a fifo."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from migrate.errors import LegacyDataError
from migrate.legacy import MAX_METADATA_BYTES, read_small


def _refusal(path: Path) -> str:
    with pytest.raises(LegacyDataError) as caught:
        read_small(str(path), "image x")
    assert caught.value.subject == "image x"
    return caught.value.cause


def test_a_huge_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "json"
    with open(path, "wb") as fh:
        fh.truncate(1 << 40)  # sparse: reading it whole would take a terabyte of memory
    assert _refusal(path) == "json is larger than the 16 MiB limit"


def test_the_limit_itself_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "json"
    path.write_bytes(b" " * MAX_METADATA_BYTES)
    assert len(read_small(str(path), "image x")) == MAX_METADATA_BYTES


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"{}")
    (tmp_path / "json").symlink_to(secret)
    assert _refusal(tmp_path / "json") == "json is a symbolic link"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "json").mkdir()
    assert _refusal(tmp_path / "json") == "json is a directory"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "json"
    os.mkfifo(fifo)
    causes: list[str] = []
    reader = threading.Thread(target=lambda: causes.append(_refusal(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # release the blocked reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert causes == ["json is not a regular file"]
