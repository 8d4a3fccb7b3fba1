"""A real Docker daemon (Debian's docker.io, dockerd 20.10) adopts what graph-migrate wrote.

The legacy root comes from the fixture builder, which knows each layer's true diff ID because it
made the original tars; the daemon is started on the migrated root with the vfs driver, and every
expectation is checked through its own commands.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.build import build_host
from fixtures.model import (
    HostSpec,
    ImageSpec,
    LayerSpec,
    RunConfig,
    Tag,
    directory,
    file,
    symlink,
    whiteout,
)
from migrate.cli import app
from tests.conftest import require_tool
from tests.services import dockerd

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")


def _spec() -> HostSpec:
    busybox = BUSYBOX.read_bytes() if BUSYBOX.exists() else b""
    base = LayerSpec(
        entries=(
            directory("bin"),
            file("bin/busybox", busybox, mode=0o755),
            symlink("bin/cat", "busybox"),
            symlink("bin/sh", "busybox"),
            directory("etc"),
            file("etc/hello.txt", b"hello from a legacy layer\n"),
            file("etc/old.txt", b"deleted later\n"),
        )
    )
    child = LayerSpec(
        entries=(file("etc/motd", b"migrated by graph-migrate\n"), whiteout("etc/old.txt"))
    )
    return HostSpec(
        name="dockerd-adoption",
        driver="vfs",
        images=(
            ImageSpec("base", base, step="#(nop) ADD file:busybox in /"),
            ImageSpec("app", child, parent="base", step="#(nop) ADD file:motd in /etc"),
            ImageSpec("cmd", parent="app", step='#(nop) CMD ["sh"]', config=RunConfig(cmd=("sh",))),
        ),
        tags=(Tag("legacy/app", "v1", "cmd"), Tag("busybox", "latest", "base")),
    )


def test_dockerd_adopts_the_migrated_root(tmp_path: Path) -> None:
    require_tool("dockerd", "docker.io")
    require_tool("busybox", "busybox-static")
    host = build_host(_spec(), tmp_path / "root")

    result = CliRunner().invoke(
        app,
        [
            "run",
            "--root",
            str(host.root),
            "--json",
            "-q",
            "--ledger",
            f"sqlite:///{tmp_path}/ledger.db",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    image_ids = {i["v1_id"]: i["image_id"] for i in report["images"]}
    top = image_ids[host.ids["cmd"]]

    with dockerd(host.root) as docker:
        listed = docker(
            "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"
        ).stdout
        assert sorted(listed.split("\n")[:-1]) == sorted(
            [f"busybox:latest {image_ids[host.ids['base']]}", f"legacy/app:v1 {top}"]
        )

        history = docker("history", "--no-trunc", "-q", "legacy/app:v1").stdout.split()
        chain = [host.ids["cmd"], host.ids["app"], host.ids["base"]]
        assert history == [image_ids[v1] for v1 in chain]

        saved = tmp_path / "saved.tar"
        docker("save", "-o", str(saved), "legacy/app:v1")
        assert _saved_layer_digests(saved) == [host.images[v1].diff_id for v1 in reversed(chain)]

        assert docker(
            "run", "--rm", "--network", "none", "legacy/app:v1", "cat", "/etc/motd"
        ).stdout == ("migrated by graph-migrate\n")
        gone = docker(
            "run", "--rm", "--network", "none", "legacy/app:v1", "cat", "/etc/old.txt", check=False
        )
        assert gone.returncode != 0


def _saved_layer_digests(saved: Path) -> list[str]:
    """sha256 of each layer tar of a ``docker save`` archive, base first."""
    with tarfile.open(saved) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        digests = []
        for layer in manifest[0]["Layers"]:
            digest = hashlib.sha256()
            member = archive.extractfile(layer)
            assert member is not None
            while chunk := member.read(1 << 20):
                digest.update(chunk)
            digests.append(f"sha256:{digest.hexdigest()}")
        return digests
