"""End-to-end check against the bytes Docker 1.10.3's own migration wrote (spec 4.3-B).

The legacy root and the expected files come from the spec's ``vectors/vfs-run``; the test only
compares, it computes no expectation of its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrate.cli import app
from tests.conftest import require_dir, spec_vectors

VECTORS = spec_vectors("vfs-run")


def _expected() -> dict[str, dict[str, str]]:
    return json.loads((VECTORS / "expected.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def vfs_root(tmp_path: Path) -> Path:
    require_dir(VECTORS, "spec vectors")
    root = tmp_path / "docker"
    root.mkdir()
    subprocess.run(
        ["tar", "--numeric-owner", "-xpzf", str(VECTORS / "host.tar.gz"), "-C", str(root)],
        check=True,
    )
    return root


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``root``: relative path -> (sha256, permission bits)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[str(path.relative_to(root))] = (digest, path.stat().st_mode & 0o7777)
    return files


def _run(root: Path, *extra: str) -> int:
    result = CliRunner().invoke(app, ["run", "--root", str(root), "--jobs", "1", *extra])
    return result.exit_code


def test_migration_writes_exactly_what_docker_wrote(vfs_root: Path) -> None:
    expected = _expected()
    legacy_before = _tree(vfs_root)

    assert _run(vfs_root) == 1  # 3333… has a missing parent: skipped, the rest migrated

    tree = _tree(vfs_root)
    produced = {
        path: value
        for path, value in tree.items()
        if path.startswith("image/") or path.endswith("config.v2.json") or "/" not in path
    }
    produced = {p: v for p, v in produced.items() if p not in legacy_before}
    want = {
        path: (entry["sha256"], int(entry["mode"], 8)) for path, entry in expected["files"].items()
    }
    assert produced == want
    assert {p: v for p, v in tree.items() if p in legacy_before} == legacy_before
    assert list((vfs_root / "image/vfs/layerdb/tmp").iterdir()) == []


def test_tar_split_files_are_byte_copies_of_the_legacy_ones(vfs_root: Path) -> None:
    _run(vfs_root)
    stored = vfs_root / "image/vfs/layerdb/sha256"
    for layer in stored.iterdir():
        cache_id = (layer / "cache-id").read_text()
        legacy = vfs_root / "graph" / cache_id / "tar-data.json.gz"
        assert (layer / "tar-split.json.gz").read_bytes() == legacy.read_bytes()


def test_second_run_changes_no_byte(vfs_root: Path) -> None:
    _run(vfs_root)
    first = {p: (v, (vfs_root / p).stat().st_mtime_ns) for p, v in _tree(vfs_root).items()}
    assert _run(vfs_root) == 1
    second = {p: (v, (vfs_root / p).stat().st_mtime_ns) for p, v in _tree(vfs_root).items()}
    assert second == first


def test_dry_run_changes_nothing_and_predicts_the_ids(vfs_root: Path) -> None:
    def snapshot() -> list[tuple[str, int, int, int]]:
        return [
            (
                str(p.relative_to(vfs_root)),
                p.lstat().st_mode,
                p.lstat().st_mtime_ns,
                p.lstat().st_size,
            )
            for p in sorted(vfs_root.rglob("*"))
        ]

    before = snapshot()
    result = CliRunner().invoke(app, ["run", "--root", str(vfs_root), "--dry-run", "--json", "-q"])
    assert result.exit_code == 1
    assert snapshot() == before
    audit = json.loads(result.stdout)
    predicted = {i["v1_id"]: i["image_id"] for i in audit["images"] if i["image_id"]}
    mapping = json.loads(_expected()["files"][".migration-v1-images.json"]["text"])
    assert predicted == mapping
