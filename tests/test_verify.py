"""``graph-migrate verify`` on a migrated sample host, sound and then damaged one way at a time."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures import Host
from migrate.cli import app
from migrate.digest import ChainID, DiffID, chain_id
from tests.trees import build, run_args


@dataclass(frozen=True, slots=True)
class Migrated:
    """A migrated sample host: where its store is, and the IDs of its images and layers."""

    host: Host
    store: Path
    image_ids: dict[str, str]  # image name -> image ID hex
    chains: dict[str, ChainID]  # image name -> chain ID of its top layer


def _chains(host: Host) -> dict[str, ChainID]:
    """Chain IDs computed from the diff IDs the builder knows, not from the store."""
    by_v1: dict[str, ChainID] = {}
    for v1_id, record in host.images.items():  # parents come first
        parent = by_v1[record.parent] if record.parent else None
        by_v1[v1_id] = chain_id(parent, DiffID.parse(record.diff_id))
    return {name: by_v1[v1_id] for name, v1_id in host.ids.items()}


@pytest.fixture
def migrated(tmp_path: Path) -> Migrated:
    root = tmp_path / "root"
    host = build(root, "sample")
    result = CliRunner().invoke(app, run_args(root, tmp_path / "ledger.db", "--json"))
    assert result.exit_code == 0, result.stderr
    ids = {
        i["v1_id"]: i["image_id"].removeprefix("sha256:")
        for i in json.loads(result.stdout)["images"]
    }
    names = {name: ids[v1_id] for name, v1_id in host.ids.items()}
    return Migrated(host, root / "image" / "aufs", names, _chains(host))


def verify(migrated: Migrated, *extra: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(app, ["verify", "--root", str(migrated.host.root), *extra])
    return result.exit_code, result.stdout.splitlines(), result.stderr


def test_a_sound_store_verifies(migrated: Migrated) -> None:
    assert verify(migrated) == (0, [], "verified 6 images and 6 layers: ok\n")


def test_a_flipped_byte_in_a_layer_file_is_named_with_its_layer(migrated: Migrated) -> None:
    files = migrated.host.payload_root(migrated.host.ids["base"])
    victim = next(p for p in sorted(files.rglob("*")) if p.is_file() and p.stat().st_size)
    with open(victim, "r+b") as fh:  # in place, as bit rot would: same inode, size and time
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0x01]))

    name = victim.relative_to(files)
    assert verify(migrated) == (
        1,
        [
            f"layer {migrated.chains['base']}: cannot reassemble from {files}: "
            f'file integrity checksum failed for "{name}"'
        ],
        "verified 6 images and 6 layers: 1 problem(s)\n",
    )
    # Without reassembly the metadata alone still holds together.
    assert verify(migrated, "--metadata-only")[0] == 0


def test_a_deleted_layerdb_file_is_named_with_what_depends_on_it(migrated: Migrated) -> None:
    chain = migrated.chains["tools"]
    (migrated.store / "layerdb" / "sha256" / chain.hex / "diff").unlink()

    diff = migrated.host.images[migrated.host.ids["tools"]].diff_id
    image = migrated.image_ids["tools"]
    assert verify(migrated) == (
        1,
        [
            f"layer {chain}: diff is missing",
            f"image sha256:{image}: layer {chain} (diff {diff}) does not exist",
            f"tag localhost:5000/tools:v1: image sha256:{image} does not exist or is damaged",
        ],
        "verified 6 images and 6 layers: 3 problem(s)\n",
    )


def test_a_second_run_mends_a_layer_entry_that_lost_a_file(
    migrated: Migrated, tmp_path: Path
) -> None:
    entry = migrated.store / "layerdb" / "sha256" / migrated.chains["tools"].hex
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in entry.iterdir()}
    (entry / "diff").unlink()

    result = CliRunner().invoke(app, run_args(migrated.host.root, tmp_path / "ledger.db"))
    assert result.exit_code == 0, result.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mode) for p in entry.iterdir()} == before
    assert verify(migrated)[0] == 0


def test_an_edited_config_is_named_with_the_hash_it_now_has(migrated: Migrated) -> None:
    image = migrated.image_ids["web-env"]
    config = migrated.store / "imagedb" / "content" / "sha256" / image
    edited = config.read_bytes().replace(b"PORT=80", b"PORT=81")
    assert edited != config.read_bytes()
    config.write_bytes(edited)

    assert verify(migrated) == (
        1,
        [f"image sha256:{image}: config hashes to sha256:{hashlib.sha256(edited).hexdigest()}"],
        "verified 6 images and 6 layers: 1 problem(s)\n",
    )
