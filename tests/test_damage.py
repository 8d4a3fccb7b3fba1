"""Every kind of damage the fixture builder makes, run through the real command line.

For each damaged host the test states the outcome (which images are skipped, which layers
regenerated, which container or tag file left behind), the exact line on stderr, the same text
in ``--json`` and in the ledger, and the exit status. Each damaged host is seeded like the sample
host, so its sound images must come out byte for byte as a clean run of ``sample`` made them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures import DAMAGED, Host
from tests.cli_runs import CliRun, build, graph_migrate, legacy_snapshot, migrate_host, store_files

EXIT_OK, EXIT_SKIPPED = 0, 1


@dataclass(frozen=True)
class Outcome:
    """What a run must do with a damaged host: v1 names -> reason, and the exit status."""

    status: int
    skipped: dict[str, str] = field(default_factory=dict)
    regenerated: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    tags_migrated: bool = True


def _id(host: Host, name: str) -> str:
    return host.ids[name]


def _removed(host: Host) -> str:
    (gone,) = host.damages[0].removed
    return gone


def _not_migrated(host: Host, parent: str) -> str:
    return f"parent image {_id(host, parent)} was not migrated"


def _skips_damaged(reason: Callable[[Host], str]) -> Callable[[Host], Outcome]:
    """Metadata damage: the damaged image is skipped, and its child because of it."""

    def outcome(host: Host) -> Outcome:
        skipped = {"damaged": reason(host), "damaged-child": _not_migrated(host, "damaged")}
        return Outcome(EXIT_SKIPPED, skipped=skipped)

    return outcome


def _regenerates(note: Callable[[Host], str]) -> Callable[[Host], Outcome]:
    """Layer damage that regeneration repairs: every image migrates."""
    return lambda host: Outcome(EXIT_OK, regenerated={"damaged": note(host)})


def _cycle(host: Host) -> Outcome:
    first = min(_id(host, "damaged"), _id(host, "damaged-child"))  # visited first: name order
    reason = f"parent chain loops back to {first}"
    return Outcome(EXIT_SKIPPED, skipped={"damaged": reason, "damaged-child": reason})


def _unreadable_layer_file(host: Host) -> Outcome:
    path = host.payload_root(_id(host, "damaged")) / "srv/data.bin"
    reason = (
        'cannot open layer file "srv/data.bin": Permission denied; '
        f"regeneration failed: {path}: Permission denied"
    )
    skipped = {"damaged": reason, "damaged-child": _not_migrated(host, "damaged")}
    return Outcome(EXIT_SKIPPED, skipped=skipped)


def _dotdot(host: Host) -> str:
    inside = host.payload_root(_id(host, "damaged"))
    outside = host.payload_root(_id(host, "outside")) / "srv/secret.txt"
    return f'layer file "{os.path.relpath(outside, inside)}" lies outside the layer root'


def _missing_layer_dir(host: Host) -> str:
    # The fixture removes the directory the driver keeps the layer in: overlay/<id> as a whole.
    v1_id = _id(host, "damaged")
    shown = {"aufs": f"aufs/diff/{v1_id}", "overlay": f"overlay/{v1_id}"}[host.driver]
    return f"layer directory {shown} is missing"


EXPECTED: dict[str, Callable[[Host], Outcome]] = {
    "missing-parent": lambda host: Outcome(
        EXIT_SKIPPED,
        skipped={
            "damaged": f"parent image {_removed(host)} does not exist",
            "damaged-child": _not_migrated(host, "damaged"),
        },
    ),
    "corrupt-json": _skips_damaged(lambda _: "json: invalid JSON: unexpected '\"' at offset 518"),
    "huge-json": _skips_damaged(lambda _: "json is larger than the 16 MiB limit"),
    "unreadable-json": _skips_damaged(lambda _: "cannot read json: Permission denied"),
    "unreadable-layer-file": _unreadable_layer_file,
    "parent-cycle": _cycle,
    "truncated-tarsplit": _regenerates(
        lambda _: "tar-split stream is truncated (gzip stream not finished)"
    ),
    "corrupt-tarsplit": _regenerates(
        lambda _: "tar-split stream is not valid JSON: Invalid control character at line 5"
    ),
    "crc-mismatch": _regenerates(lambda _: 'file integrity checksum failed for "srv/data.bin"'),
    "missing-layer-dir": _skips_damaged(_missing_layer_dir),
    "escape-dotdot": _regenerates(_dotdot),
    # Go's filepath.Join keeps "/srv/secret.txt" inside the layer, so the replay is sound.
    "escape-absolute": lambda _: Outcome(EXIT_OK),
    "escape-symlink-dir": _regenerates(
        lambda _: 'layer file "srv/link/secret.txt" leads through the symlink "link"'
    ),
    "no-tarsplit": lambda _: Outcome(
        EXIT_OK,
        regenerated={"old-base": "no tar-split recorded", "old-app": "no tar-split recorded"},
    ),
    "corrupt-repositories": lambda _: Outcome(
        EXIT_SKIPPED,
        problems=[
            "repositories-aufs: invalid JSON: unexpected '\"' at offset 246; tags not migrated"
        ],
        tags_migrated=False,
    ),
    "container-image-gone": lambda host: Outcome(
        EXIT_SKIPPED,
        containers={"haunted": f"image {_removed(host)} does not exist"},
    ),
    "duplicate-paths": _regenerates(
        lambda _: 'duplicate path "srv/secret.txt" in tar-split stream'
    ),
    "non-hex-entries": lambda _: Outcome(EXIT_OK),
}

UNPRIVILEGED = ("unreadable-json", "unreadable-layer-file")
# Where a driver keeps layer files matters to these; the rest is metadata, the same everywhere.
LAYER_DAMAGE = (
    "unreadable-layer-file",
    "truncated-tarsplit",
    "corrupt-tarsplit",
    "crc-mismatch",
    "missing-layer-dir",
    "escape-dotdot",
    "escape-absolute",
    "escape-symlink-dir",
    "no-tarsplit",
    "duplicate-paths",
)
CASES = [(name, "aufs") for name in DAMAGED] + [(name, "overlay") for name in LAYER_DAMAGE]


def test_every_damaged_scenario_has_a_stated_outcome() -> None:
    assert set(EXPECTED) == set(DAMAGED)


@pytest.fixture(scope="module")
def clean_samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Host, CliRun]]:
    """A clean run of the sample host per driver, made when first asked for."""
    return _CleanRuns(tmp_path_factory)


class _CleanRuns(dict[str, tuple[Host, CliRun]]):
    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self._factory = factory

    def __missing__(self, driver: str) -> tuple[Host, CliRun]:
        tmp_path = self._factory.mktemp(f"clean-{driver}")
        host = build(tmp_path, "sample", driver)
        run = migrate_host(host, tmp_path)
        assert run.status == EXIT_OK, run.stderr
        self[driver] = host, run
        return host, run


@pytest.mark.parametrize(("name", "driver"), CASES)
def test_damaged_host(
    tmp_path: Path, name: str, driver: str, clean_samples: dict[str, tuple[Host, CliRun]]
) -> None:
    host = build(tmp_path, name, driver)
    expected = EXPECTED[name](host)
    run = migrate_host(host, tmp_path, unprivileged=name in UNPRIVILEGED)

    assert run.status == expected.status, run.stderr
    assert not [line for line in run.stderr if "Traceback" in line]
    _check_images(host, run, expected)
    _check_layers(host, run, expected)
    _check_containers(host, run, expected)
    assert run.document["problems"] == expected.problems
    for problem in expected.problems:
        assert f"problem: {problem}" in run.stderr
    ignored = {"graph/_tmp"} | {
        p for d in host.damages if d.kind == "non-hex-entries" for p in d.paths
    }
    assert sorted(run.document["ignored"]) == sorted(ignored)
    for path in ignored - {"graph/_tmp"}:
        assert f"ignored {path}: not an image ID" in run.stderr
    repositories = host.root / "image" / host.driver / "repositories.json"
    assert repositories.exists() == expected.tags_migrated
    _check_ledger(host, tmp_path, expected)
    _check_sound_images(host, run, clean_samples[driver])


def _check_images(host: Host, run: CliRun, expected: Outcome) -> None:
    skipped = {host.ids[name]: reason for name, reason in expected.skipped.items()}
    found = {
        v1: image["reason"] for v1, image in run.images.items() if image["status"] != "migrated"
    }
    assert found == skipped
    for v1_id, reason in skipped.items():
        assert f"skipped image {v1_id}: {reason}" in run.stderr
        assert run.images[v1_id]["image_id"] is None
    assert set(run.images) == set(host.images)


def _check_layers(host: Host, run: CliRun, expected: Outcome) -> None:
    regenerated = {host.ids[name]: note for name, note in expected.regenerated.items()}
    found = {
        v1: layer["note"] for v1, layer in run.layers.items() if layer["source"] != "tar-split"
    }
    assert found == regenerated
    for v1_id, note in regenerated.items():
        assert f"regenerated layer {v1_id[:12]}: {note}" in run.stderr
        assert run.layers[v1_id]["source"] == "regenerated"
    for v1_id, layer in run.layers.items():
        if v1_id not in regenerated:
            # A replayed layer hashes to the tar the builder wrote, whatever was done to it.
            assert layer["diff_id"] == host.images[v1_id].diff_id, host.images[v1_id].name


def _check_containers(host: Host, run: CliRun, expected: Outcome) -> None:
    skipped = {host.containers[name]: reason for name, reason in expected.containers.items()}
    found = {c["id"]: c["reason"] for c in run.document["containers"] if c["status"] != "migrated"}
    assert found == skipped
    for container_id, reason in skipped.items():
        assert f"skipped container {container_id}: {reason}" in run.stderr


def _check_ledger(host: Host, tmp_path: Path, expected: Outcome) -> None:
    with sqlite3.connect(tmp_path / f"{host.root.name}.ledger.db") as db:
        images = dict(db.execute("select v1_id, reason from images where state != 'migrated'"))
        layers = dict(db.execute("select v1_id, note from layers where source != 'tar-split'"))
        containers = dict(db.execute("select container_id, reason from containers"))
        (outcome,) = db.execute("select outcome from runs").fetchone()
    assert images == {host.ids[name]: reason for name, reason in expected.skipped.items()}
    assert layers == {host.ids[name]: note for name, note in expected.regenerated.items()}
    for name, reason in expected.containers.items():
        assert containers[host.containers[name]] == reason
    assert outcome == ("skipped" if expected.skipped else "ok")


def _check_sound_images(host: Host, run: CliRun, clean_sample: tuple[Host, CliRun]) -> None:
    sample, clean = clean_sample
    sound = [v1_id for v1_id in host.sound if v1_id in sample.images]
    assert len(sound) == len(sample.images)  # every image of the sample host is sound here
    for v1_id in sound:
        assert run.images[v1_id]["image_id"] == clean.images[v1_id]["image_id"]
    assert store_files(host, run, sound) == store_files(sample, clean, sound)


# --- legacy data stays as it was ------------------------------------------------------------


@pytest.mark.parametrize("name", ["crc-mismatch", "missing-parent", "no-tarsplit"])
def test_commands_leave_legacy_data_alone(tmp_path: Path, name: str) -> None:
    host = build(tmp_path, name)
    before = legacy_snapshot(host.root, host.driver)
    ledger = tmp_path / "ledger.db"
    root = ("--root", str(host.root), "--driver", host.driver)

    statuses = [
        graph_migrate("run", *root, "--dry-run", ledger=ledger).status,
        graph_migrate("run", *root, ledger=ledger).status,
        graph_migrate("run", *root, ledger=ledger).status,
        graph_migrate("status", *root, ledger=ledger).status,
    ]
    verify = graph_migrate("verify", *root, ledger=None, expect_json=False)

    expected = EXIT_OK if name != "missing-parent" else EXIT_SKIPPED
    assert statuses == [expected, expected, expected, EXIT_OK]
    assert verify.status == EXIT_OK, verify.stderr
    assert legacy_snapshot(host.root, host.driver) == before
