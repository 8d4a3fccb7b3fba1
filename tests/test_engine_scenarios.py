"""Every sound fixture scenario, on every driver, migrated by the engine and checked against the
builder's own knowledge.

The fixture builder made each layer tar itself, so it knows the true diff ID and size of every
layer; those are what a replay must find. Image IDs are checked through their configs: each
stored config must hash to its name and list exactly the chain of diff IDs the builder laid down.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fixtures import Host, Options, build_host, scenario
from migrate.api import check, open_root, run_migration
from migrate.digest import DiffID, chain_id
from migrate.engine import Report

MiB = 1 << 20
DRIVERS = ("aufs", "overlay", "vfs", "btrfs")
SOUND = {
    "sample": Options(),
    "stress": Options(size=2 * MiB),
    "deep-chain": Options(depth=40),
    "collapse": Options(),
    "large": Options(size=24 * MiB),
}


def _build(tmp_path: Path, name: str, driver: str) -> Host:
    options = SOUND[name]
    spec = scenario(name, Options(driver=driver, size=options.size, depth=options.depth))  # type: ignore[arg-type]
    return build_host(spec, tmp_path / "root")


def _migrate(host: Host) -> Report:
    return run_migration(open_root(str(host.root)), jobs=2)


def _diff_chain(host: Host, v1_id: str) -> list[str]:
    """The builder's diff IDs from the base up to ``v1_id``."""
    chain: list[str] = []
    current: str | None = v1_id
    while current is not None:
        chain.append(host.images[current].diff_id)
        current = host.images[current].parent
    return chain[::-1]


def _chain_ids(host: Host) -> set[str]:
    """Every chain ID the builder's layers make, computed from its diff IDs."""
    chains = set()
    for v1_id in host.images:
        current = None
        for diff_id in _diff_chain(host, v1_id):
            current = chain_id(current, DiffID.parse(diff_id))
        chains.add(str(current))
    return chains


@pytest.mark.parametrize(
    ("name", "driver"),
    # The large host copies tens of thousands of files per layer on the full-copy drivers;
    # aufs alone keeps it to seconds, and the other hosts cover the full-copy layouts.
    [(n, d) for n in sorted(SOUND) for d in DRIVERS if n != "large" or d == "aufs"],
)
def test_sound_scenario_migrates_to_the_builders_diff_ids(
    tmp_path: Path, name: str, driver: str
) -> None:
    host = _build(tmp_path, name, driver)
    report = _migrate(host)

    assert not report.skipped, [(i.v1_id, i.reason) for i in report.skipped]
    assert report.problems == []
    assert set(report.images) == set(host.images)
    for layer in report.layers:
        record = host.images[layer.v1_id]
        assert (str(layer.diff_id), layer.size, layer.source) == (
            record.diff_id,
            record.size,
            "tar-split",
        ), layer.v1_id

    store = host.root / "image" / driver
    for v1_id, image in report.images.items():
        assert image.image_id is not None
        raw = (store / "imagedb/content/sha256" / image.image_id.hex).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == image.image_id.hex
        assert json.loads(raw)["rootfs"]["diff_ids"] == _diff_chain(host, v1_id)

    layer_dirs = {f"sha256:{p.name}" for p in (store / "layerdb/sha256").iterdir()}
    assert layer_dirs == _chain_ids(host)

    verification = check(open_root(str(host.root)))
    assert verification.problems == []


@pytest.mark.parametrize("driver", ("aufs", "vfs"))
def test_collapsed_chains_share_image_ids_and_layers(tmp_path: Path, driver: str) -> None:
    host = _build(tmp_path, "collapse", driver)
    report = _migrate(host)

    for group in host.same_image:
        assert len({report.images[v1].image_id for v1 in group}) == 1, group
    # "other-*" holds the same layers under another history: layers shared, image IDs not.
    assert report.images[host.ids["other-top"]].image_id != (
        report.images[host.ids["pulled-top"]].image_id
    )
    assert len(_chain_ids(host)) == 2  # one base layer and one empty CMD layer for all ten


@pytest.mark.parametrize("driver", ("aufs", "overlay"))
def test_tags_and_containers_of_the_stress_host(tmp_path: Path, driver: str) -> None:
    host = _build(tmp_path, "stress", driver)
    report = _migrate(host)

    store = host.root / "image" / driver
    refs = json.loads((store / "repositories.json").read_bytes())["Repositories"]
    for repo, tags in host.tags.items():
        for tag, v1_id in tags.items():
            key = f"{repo}@{tag}" if tag.startswith("sha256:") else f"{repo}:{tag}"
            assert refs[repo][key] == str(report.images[v1_id].image_id)
    for cid in host.containers.values():
        config = json.loads((host.root / "containers" / cid / "config.v2.json").read_bytes())
        assert config["Image"].startswith("sha256:")
        mount = store / "layerdb/mounts" / cid
        assert (mount / "mount-id").read_text() == cid
        assert (mount / "init-id").read_text() == f"{cid}-init"
