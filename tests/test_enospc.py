"""A full disk or a read-only target stops the run cleanly, and a later run completes it.

The legacy root lives on a small tmpfs of its own, the way a real /var/lib/docker fills up: the
file system is filled to within a few KiB, the migration runs out of space part-way, and after
the space is freed a second run must leave exactly the store a clean run writes. A read-only
tmpfs over ``image/`` makes every write of the store fail instead.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import Host, Options, build_host, scenario
from tests.cli_runs import legacy_snapshot, migrate_host

TMPFS_BYTES = 8 << 20
# Enough for the lock, some directories and the first files; far less than the whole store.
LEFT_FREE = [0, 16 << 10, 48 << 10]


def _mount_tmpfs(where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    spec = ",".join(("size=" + str(TMPFS_BYTES), *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", spec, "tmpfs", str(where)], capture_output=True, check=False
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")


def _unmount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    _mount_tmpfs(where)
    try:
        yield where
    finally:
        _unmount(where)


def _build(where: Path) -> Host:
    return build_host(scenario("sample", Options(driver="aufs")), where / "docker")


def _fill(disk: Path, left_free: int) -> Path:
    """Write a ballast file until only about ``left_free`` bytes remain free."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as fh:
        while (free := _free(disk)) > left_free:
            try:
                fh.write(b"\0" * min(free - left_free, 1 << 20))
                fh.flush()
            except OSError:
                break
    return ballast


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _store(root: Path) -> dict[str, bytes]:
    """Every file the migration writes: the new store, the maps and the containers' v2 configs."""
    files = {}
    for path in sorted((root / "image").rglob("*")):
        if path.is_file() and "layerdb/tmp" not in str(path):
            files[str(path.relative_to(root))] = path.read_bytes()
    for path in [*root.glob(".migration-*"), *root.glob("containers/*/config.v2.json")]:
        files[str(path.relative_to(root))] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp_path = tmp_path_factory.mktemp("clean")
    host = _build(tmp_path)
    assert migrate_host(host, tmp_path).status == 0
    return _store(host.root)


def _assert_clean_stop(host: Host, tmp_path: Path, stderr: list[str], cause: str) -> None:
    (line,) = stderr
    lock = f"{re.escape(str(host.root))}/\\S+: cannot take the lock"
    pattern = rf"graph-migrate: (writing image/aufs\S*|{lock}): {cause}"
    assert re.fullmatch(pattern, line), line
    with sqlite3.connect(tmp_path / f"{host.root.name}.ledger.db") as db:
        rows = db.execute("select outcome, message from runs").fetchall()
    if "cannot take the lock" not in line:
        assert rows == [("failed", line.removeprefix("graph-migrate: "))]


@pytest.mark.parametrize("left_free", LEFT_FREE)
def test_full_disk_stops_cleanly_and_resumes(
    small_disk: Path, tmp_path: Path, left_free: int, clean_store: dict[str, bytes]
) -> None:
    host = _build(small_disk)
    legacy = legacy_snapshot(host.root, host.driver)
    ballast = _fill(small_disk, left_free)

    stopped = migrate_host(host, tmp_path)

    assert stopped.status == 2
    _assert_clean_stop(host, tmp_path, stopped.stderr, "No space left on device")
    if left_free:  # past the lock, out of space while writing the store
        assert stopped.stderr[0].startswith("graph-migrate: writing image/aufs/"), stopped.stderr
    partial = _store(host.root)
    assert len(partial) < len(clean_store)
    assert {path: partial[path] == clean_store.get(path) for path in partial} == dict.fromkeys(
        partial, True
    ), "a file under its final name is incomplete"
    assert not [p for p in host.root.rglob(".*.tmp")], "a temporary file was left behind"

    ballast.unlink()
    resumed = migrate_host(host, tmp_path)

    assert resumed.status == 0, resumed.stderr
    assert _store(host.root) == clean_store
    assert legacy_snapshot(host.root, host.driver) == legacy


def test_read_only_store_stops_cleanly_and_resumes(
    small_disk: Path, tmp_path: Path, clean_store: dict[str, bytes]
) -> None:
    host = _build(small_disk)
    image = host.root / "image"
    _mount_tmpfs(image, "ro")
    try:
        stopped = migrate_host(host, tmp_path)
    finally:
        _unmount(image)

    assert stopped.status == 2
    _assert_clean_stop(host, tmp_path, stopped.stderr, "Read-only file system")
    assert stopped.stderr == ["graph-migrate: writing image/aufs: Read-only file system"]
    resumed = migrate_host(host, tmp_path)
    assert resumed.status == 0, resumed.stderr
    assert _store(host.root) == clean_store


def test_read_only_root_stops_before_writing(small_disk: Path, tmp_path: Path) -> None:
    host = _build(small_disk)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        stopped = migrate_host(host, tmp_path)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)

    assert stopped.status == 2
    lock = host.root / ".graph-migrate.lock"
    assert stopped.stderr == [f"graph-migrate: {lock}: cannot take the lock: Read-only file system"]
