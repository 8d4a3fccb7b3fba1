"""``run --dry-run``: nothing under the root changes, and the audit predicts the real run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fixtures import DAMAGED
from migrate.cli import app
from tests.trees import (
    build,
    differences,
    graph_migrate,
    metadata_snapshot,
    run_args,
    store_snapshot,
)

# What differs between two runs that did the same work: how long it took.
TIMING = ("seconds", "hash_rate", "estimated_seconds")


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """A ``--json`` document without its dry-run flag and its timings."""
    totals = {k: v for k, v in document["totals"].items() if k not in TIMING}
    return {**document, "dry_run": None, "totals": totals}


@pytest.mark.parametrize("name", ["sample", "crc-mismatch"])
def test_a_dry_run_changes_nothing_and_predicts_the_ids_the_real_run_writes(
    tmp_path: Path, name: str
) -> None:
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    build(root, name)
    before = metadata_snapshot(root)

    audit = graph_migrate(*run_args(root, ledger, "--dry-run", "--json"))
    status = graph_migrate("status", "--root", str(root), "--ledger", f"sqlite:///{ledger}")
    verify = graph_migrate("verify", "--root", str(root))
    assert differences(metadata_snapshot(root), before) == []
    assert status.returncode == 0, status.stderr
    assert verify.returncode == 1
    assert verify.stdout == f"{root}/image/aufs: no migrated store\n"

    real = graph_migrate(*run_args(root, ledger, "--json"))
    assert audit.returncode == real.returncode == 0, audit.stderr
    predicted, written = audit.json(), real.json()
    assert predicted["dry_run"] is True
    assert written["dry_run"] is False
    assert comparable(predicted) == comparable(written)

    # The predicted IDs are what is on disk now, not only what the real run said.
    content = root / "image/aufs/imagedb/content/sha256"
    assert sorted(i["image_id"].removeprefix("sha256:") for i in predicted["images"]) == sorted(
        path.name for path in content.iterdir()
    )
    layerdb = root / "image/aufs/layerdb/sha256"
    for layer in predicted["layers"]:
        chain = layerdb / layer["chain_id"].removeprefix("sha256:")
        assert (chain / "diff").read_text() == layer["diff_id"]


@pytest.mark.parametrize("name", DAMAGED)
def test_on_a_damaged_host_the_dry_run_exits_as_the_real_run_and_writes_nothing(
    tmp_path: Path, name: str
) -> None:
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    build(root, name)
    before = metadata_snapshot(root)
    runner = CliRunner()

    audit = runner.invoke(app, run_args(root, ledger, "--dry-run", "--json"))
    assert differences(metadata_snapshot(root), before) == []
    real = runner.invoke(app, run_args(root, ledger, "--json"))
    assert audit.exit_code == real.exit_code, audit.stderr
    assert audit.exit_code in (0, 1)
    assert comparable(json.loads(audit.stdout)) == comparable(json.loads(real.stdout))


def test_the_audit_lists_integrity_failures_regenerations_and_the_work_left(
    tmp_path: Path,
) -> None:
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    host = build(root, "crc-mismatch")
    damaged = host.ids["damaged"]
    runner = CliRunner()

    audit = runner.invoke(app, run_args(root, ledger, "--dry-run"))
    lines = audit.stderr.splitlines()
    failed = 'file integrity checksum failed for "srv/data.bin"'
    assert f"layer {damaged} failed its integrity check: {failed}" in lines
    assert f"would regenerate layer {damaged[:12]}: {failed}" in lines
    assert re.fullmatch(
        r"would migrate 8 of 8 images, 8 layers \(1 would regenerate, 1 failed the integrity "
        r"check\); hashed \d+\.\d MB in \d+\.\d\d s \(\d+ MB/s\)",
        lines[-2],
    )
    assert re.fullmatch(
        r"a real run hashes \d+\.\d MB: about \d+\.\d s at the measured rate", lines[-1]
    )

    document = json.loads(runner.invoke(app, run_args(root, ledger, "--dry-run", "--json")).stdout)
    layers = {layer["v1_id"]: layer for layer in document["layers"]}
    assert [v1 for v1, layer in layers.items() if layer["integrity_failed"]] == [damaged]
    assert [v1 for v1, layer in layers.items() if layer["source"] == "regenerated"] == [damaged]
    totals = document["totals"]
    assert (totals["layers_integrity_failed"], totals["layers_regenerated"]) == (1, 1)
    assert totals["bytes_to_hash"] == totals["bytes_hashed"] > 0
    assert totals["estimated_seconds"] > 0
    assert totals["estimated_seconds"] == pytest.approx(
        totals["bytes_to_hash"] / totals["hash_rate"], rel=0.01, abs=0.002
    )


def test_bytes_to_hash_are_the_layer_tars_and_fall_to_zero_once_migrated(tmp_path: Path) -> None:
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    host = build(root, "sample")
    runner = CliRunner()

    def audit() -> dict[str, Any]:
        result = runner.invoke(app, run_args(root, ledger, "--dry-run", "--json"))
        return dict(json.loads(result.stdout))

    first = audit()
    assert first["totals"]["bytes_to_hash"] == sum(r.tar_length for r in host.images.values())
    # A dry run records no unit, so it leaves the real run all the hashing to do.
    second = audit()
    assert second["totals"]["bytes_to_hash"] == first["totals"]["bytes_to_hash"]

    assert runner.invoke(app, run_args(root, ledger)).exit_code == 0
    store = store_snapshot(root)
    after = audit()
    assert after["totals"]["bytes_to_hash"] == 0
    assert after["totals"]["estimated_seconds"] == 0
    assert comparable(after)["images"] == comparable(first)["images"]
    assert differences(store_snapshot(root), store) == []
