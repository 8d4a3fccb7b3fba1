"""Running the real ``graph-migrate`` command on built legacy hosts, and comparing outcomes.

Every run is a separate process, as a user meets the tool: exit status, stderr lines and the
``--json`` document are what the tests check.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures import Host, Options, build_host, scenario
from tests.conftest import require_tool

# Root without these capabilities honours file modes, so a mode-000 file is unreadable.
_NO_DAC = "-dac_override,-dac_read_search"


@dataclass(frozen=True)
class CliRun:
    """One finished command: its exit status, its stderr lines and its JSON document."""

    status: int
    stderr: list[str]
    document: dict[str, Any]

    @property
    def images(self) -> dict[str, dict[str, Any]]:
        return {image["v1_id"]: image for image in self.document["images"]}

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        return {layer["v1_id"]: layer for layer in self.document["layers"]}


def build(tmp_path: Path, name: str, driver: str = "aufs") -> Host:
    """Scenario ``name``, seeded like the sample host so its sound images are the sample's."""
    options = Options(driver=driver, seed="sample")  # type: ignore[arg-type]
    return build_host(scenario(name, options), tmp_path / f"{name}-{driver}")


def graph_migrate(
    *args: str, ledger: Path | None, unprivileged: bool = False, expect_json: bool = True
) -> CliRun:
    """Run ``graph-migrate ARGS [--ledger sqlite:///LEDGER] [--json]`` in a process of its own."""
    command = [sys.executable, "-m", "migrate", *args]
    if ledger is not None:
        command += ["--ledger", f"sqlite:///{ledger}"]
    if expect_json:
        command.append("--json")
    if unprivileged:
        setpriv = require_tool("setpriv", "util-linux")
        command = [setpriv, f"--bounding-set={_NO_DAC}", f"--inh-caps={_NO_DAC}", *command]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    document = json.loads(done.stdout) if expect_json and done.stdout.strip() else {}
    return CliRun(done.returncode, done.stderr.splitlines(), document)


def migrate_host(host: Host, tmp_path: Path, *, unprivileged: bool = False) -> CliRun:
    """``graph-migrate run`` on ``host`` with one worker and a ledger of its own."""
    ledger = tmp_path / f"{host.root.name}.ledger.db"
    args = ("run", "--root", str(host.root), "--driver", host.driver, "-j", "1")
    return graph_migrate(*args, ledger=ledger, unprivileged=unprivileged)


def store_files(host: Host, run: CliRun, v1_ids: list[str]) -> dict[str, bytes]:
    """The new store's files that belong to ``v1_ids``: configs, parents, layerdb entries."""
    base = host.root / "image" / host.driver
    files: dict[str, bytes] = {}
    for v1_id in v1_ids:
        image_id = run.images[v1_id]["image_id"].removeprefix("sha256:")
        for path in (
            base / "imagedb/content/sha256" / image_id,
            base / "imagedb/metadata/sha256" / image_id / "parent",
        ):
            if path.exists():
                files[str(path.relative_to(host.root))] = path.read_bytes()
        chain = run.layers[v1_id]["chain_id"].removeprefix("sha256:")
        for path in sorted((base / "layerdb/sha256" / chain).iterdir()):
            files[str(path.relative_to(host.root))] = path.read_bytes()
    return files


def legacy_snapshot(root: Path, driver: str) -> dict[str, tuple[int, int, int, bytes]]:
    """Mode, size, mtime and content (or link target) of every legacy path of ``root``.

    Covers ``graph/``, the driver's directory, ``repositories-<driver>`` and each container's
    ``config.json``; directories count too, so an entry created or removed inside one shows.
    """
    paths = [root / "graph", root / driver, root / f"repositories-{driver}"]
    paths += sorted((root / "containers").glob("*/config.json"))
    found: dict[str, tuple[int, int, int, bytes]] = {}
    for top in paths:
        if not top.exists():
            continue
        for path in [top, *(sorted(top.rglob("*")) if top.is_dir() else [])]:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                content = _read_as_owner(path)
            elif stat.S_ISLNK(st.st_mode):
                content = os.fsencode(os.readlink(path))
            else:
                content = b""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return found


def _read_as_owner(path: Path) -> bytes:
    with open(path, "rb") as fh:  # root reads a mode-000 file too
        return fh.read()
