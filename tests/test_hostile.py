"""A crafted legacy root cannot make the migration read outside it.

Each case plants a way out of a layer of the sample host (a symlinked file or directory, a
``../`` or absolute tar-split name, a symlinked layer directory) that leads to a secret outside
the root. The secret holds exactly the bytes the layer's own file held, so a reader that follows
the way out (Docker's own, run here as the tar-split CLI) replays the layer "successfully", to the
original diff ID. The secret is also
mode 000 and the command runs without CAP_DAC_OVERRIDE: an attempt to open it would show as
"Permission denied". And the run is repeated with other bytes in the secret: if the secret
reached the diff ID in any way, the two runs would disagree.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fixtures import Host
from migrate.tarsplit import FILE_ENTRY, read_entries
from tests.cli_runs import CliRun, build, migrate_host
from tests.conftest import require_tool

OTHER_BYTES = b"other bytes that would change the diff ID if read\n"


@dataclass(frozen=True)
class Plant:
    """A way out of layer ``image``, planted at ``entry`` towards ``secret``."""

    image: str
    entry: str
    plant: Callable[[Host, Path, Path], None]  # (host, layer payload root, secret) -> None
    note: str  # the layer's regeneration note, or the image's skip reason
    skipped: bool = False
    never_below: str = ""  # no regenerated entry may lie beneath this (a symlinked directory)


def _symlink_file(host: Host, payload: Path, secret: Path) -> None:
    (payload / "etc/hostname").unlink()
    (payload / "etc/hostname").symlink_to(secret)


def _symlink_dir_outside(host: Host, payload: Path, secret: Path) -> None:
    # An /etc-like directory outside the root, holding what the layer's etc/ held.
    outside = secret.parent / "etc"
    shutil.move(payload / "etc", outside)
    (payload / "etc").symlink_to(outside)


def _symlink_dir_other_layer(host: Host, payload: Path, secret: Path) -> None:
    # Another layer's directory is given a copy of srv/www; the layer's srv/www points there.
    other = host.payload_root(host.ids["tools"]) / "copied-www"
    shutil.move(payload / "srv/www", other)
    (payload / "srv/www").symlink_to(os.path.relpath(other, payload / "srv"))


def _rename_entry(new_name: Callable[[Path, Path], str]) -> Callable[[Host, Path, Path], None]:
    def plant(host: Host, payload: Path, secret: Path) -> None:
        v1_id = next(v1 for v1, record in host.images.items() if record.payload_root == payload)
        path = host.root / "graph" / v1_id / "tar-data.json.gz"
        entries = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
        (entry,) = [e for e in entries if e.get("name") == "srv/www/index.html"]
        entry["name"] = new_name(payload, secret)
        lines = b"".join(json.dumps(e).encode() + b"\n" for e in entries)
        path.write_bytes(gzip.compress(lines))

    return plant


def _symlink_layer_dir(host: Host, payload: Path, secret: Path) -> None:
    outside = secret.parent / "layer-copy"
    shutil.move(payload, outside)
    payload.symlink_to(outside)


def _dotdot(payload: Path, secret: Path) -> str:
    return os.path.relpath(secret, payload)


PLANTS = {
    "file-symlink": Plant(
        "base",
        "etc/hostname",
        _symlink_file,
        'layer file "etc/hostname" leads through the symlink "hostname"',
    ),
    "dir-symlink-outside": Plant(
        "base",
        "etc/group",
        _symlink_dir_outside,
        'layer file "etc/group" leads through the symlink "etc"',
        never_below="etc/",
    ),
    "dir-symlink-other-layer": Plant(
        "web-app",
        "srv/www/app.js",
        _symlink_dir_other_layer,
        'layer file "srv/www/app.js" leads through the symlink "www"',
        never_below="srv/www/",
    ),
    "dotdot-name": Plant(
        "web-app",
        "srv/www/index.html",
        _rename_entry(_dotdot),
        "",  # filled in per host: the note quotes the planted name
    ),
    "absolute-name": Plant(
        "web-app",
        "srv/www/index.html",
        _rename_entry(lambda payload, secret: str(secret)),
        "",
    ),
    "layer-dir-symlink": Plant(
        "tools",
        "usr/bin/tool",
        _symlink_layer_dir,
        "",
        skipped=True,
    ),
}

CASES = [(name, "aufs") for name in PLANTS] + [
    ("dir-symlink-outside", "overlay"),
    ("dir-symlink-other-layer", "overlay"),
]


def _expected_note(name: str, host: Host, payload: Path, secret: Path) -> str:
    if name == "dotdot-name":
        return f'layer file "{_dotdot(payload, secret)}" lies outside the layer root'
    if name == "absolute-name":
        return f'layer file "{secret}" is missing'
    if name == "layer-dir-symlink":
        shown = payload.relative_to(host.root)
        return f"layer directory {shown} is a symbolic link"
    return PLANTS[name].note


def _plant(tmp_path: Path, name: str, driver: str) -> tuple[Host, Host, Path]:
    """The sample host with ``name`` planted, an exact copy of it, and the secret."""
    plant = PLANTS[name]
    host = build(tmp_path / "a", "sample", driver)
    payload = host.payload_root(host.ids[plant.image])
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_bytes((payload / plant.entry).read_bytes())

    plant.plant(host, payload, secret)
    # cp -a keeps owners, modes, times and hard links: the copy differs only in its path, and
    # relative ways out of it still reach the same secret.
    copy = tmp_path / "b" / host.root.name
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(host.root), str(copy)], check=True)
    for path in [secret.parent, *secret.parent.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            path.chmod(0)
    return host, replace(host, root=copy), secret


@pytest.mark.parametrize(("name", "driver"), CASES)
def test_secret_outside_the_root_is_never_read(tmp_path: Path, name: str, driver: str) -> None:
    plant = PLANTS[name]
    host, copy, secret = _plant(tmp_path, name, driver)
    v1_id = host.ids[plant.image]
    note = _expected_note(name, host, host.payload_root(v1_id), secret)

    if name != "absolute-name":  # Go keeps an absolute name inside the layer
        assert _go_replay(host, v1_id, tmp_path) == host.images[v1_id].diff_id
    run = migrate_host(host, tmp_path / "a", unprivileged=True)

    assert not [line for line in run.stderr if "Permission denied" in line], run.stderr
    if plant.skipped:
        assert run.status == 1
        assert run.images[v1_id]["reason"] == note
        assert f"skipped image {v1_id}: {note}" in run.stderr
        return
    assert run.status == 0, run.stderr
    layer = run.layers[v1_id]
    assert (layer["source"], layer["note"]) == ("regenerated", note)
    assert f"regenerated layer {v1_id[:12]}: {note}" in run.stderr
    if plant.never_below:
        assert _regenerated_names_below(host, run, v1_id, plant.never_below) == []

    # The copy, with other bytes in the secret, migrates to the same diff ID.
    secret.chmod(0o600)
    secret.write_bytes(OTHER_BYTES)
    secret.chmod(0)
    other = migrate_host(copy, tmp_path / "b", unprivileged=True)
    assert other.layers[v1_id]["diff_id"] == layer["diff_id"]


def _go_replay(host: Host, v1_id: str, tmp_path: Path) -> str:
    """The diff ID Docker's own replay (the tar-split CLI, following every way out) finds."""
    tool = require_tool("tar-split", "tar-split")
    tar_split = host.root / "graph" / v1_id / "tar-data.json.gz"
    out = tmp_path / "go-replay.tar"
    command = [tool, "asm", "--input", str(tar_split), "--path", str(host.payload_root(v1_id))]
    subprocess.run([*command, "--output", str(out)], check=True, capture_output=True)
    return "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()


def _regenerated_names_below(host: Host, run: CliRun, v1_id: str, prefix: str) -> list[bytes]:
    """Entries of the layer's recorded tar-split beneath ``prefix``, a symlink in the layer."""
    chain = run.layers[v1_id]["chain_id"].removeprefix("sha256:")
    path = host.root / "image" / host.driver / "layerdb/sha256" / chain / "tar-split.json.gz"
    with open(path, "rb") as stream:
        names = [e.name for e in read_entries(stream) if e.type == FILE_ENTRY]
    assert names, "the regenerated layer has entries"
    return [name for name in names if name.startswith(prefix.encode())]
