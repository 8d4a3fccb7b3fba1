"""The legacy roots the benchmark measures, built once with the fixture builder and cached.

A root is built into ``<out>/<key>.tmp`` and renamed to ``<out>/<key>`` only when complete, with
the builder's manifest beside it as ``<key>.json``, so an interrupted build is never mistaken for
a cached one. The regeneration variant of a root is a hard-linked copy without any
``tar-data.json.gz``: the same files, nothing recorded to replay.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fixtures import Options, build_host, scenario
from migrate import tarsplit
from migrate.legacy import LegacyRoot


@dataclass(frozen=True, slots=True)
class Payload:
    """One layer's files as the limit streams them: ``tar -c`` of ``names`` beneath ``directory``.

    ``names`` is None for a whole directory (an aufs branch); for a full-tree driver (vfs) it is
    the file holding the layer's own entry names, NUL-separated, so both tar and graph-migrate
    read the same bytes.
    """

    v1_id: str
    directory: Path
    names: Path | None
    tar_length: int


@dataclass(frozen=True, slots=True)
class Root:
    """A built legacy root and what the benchmark needs to know about it."""

    path: Path
    driver: str
    payloads: tuple[Payload, ...]

    @property
    def tar_bytes(self) -> int:
        """The length of all layer tars together: the bytes every measurement streams."""
        return sum(payload.tar_length for payload in self.payloads)

    @property
    def diff_ids(self) -> dict[str, str]:
        """Every image's true diff ID by v1 ID, from the builder's manifest."""
        manifest = json.loads(self.path.with_suffix(".json").read_text())
        return {image["v1_id"]: image["diff_id"] for image in manifest["images"]}


def ensure_root(out: Path, name: str, driver: str, size: int | None) -> Root:
    """The root of scenario ``name`` for ``driver`` and ``size``, built unless cached."""
    key = f"{name}-{driver}" + (f"-{size >> 20}M" if size else "")
    path = out / key
    manifest = path.with_suffix(".json")
    if not (path.is_dir() and manifest.is_file()):
        _build(path, manifest, name, Options(driver=driver, size=size))  # type: ignore[arg-type]
    return Root(path, driver, _payloads(path, driver))


def ensure_regeneration_variant(root: Root) -> Root:
    """``root`` without tar-split data (a hard-linked copy, made once), to time regeneration."""
    path = root.path.with_name(root.path.name + "-no-tarsplit")
    if not path.is_dir():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["cp", "-al", str(root.path), str(tmp)], check=True)
        for tar_data in (tmp / "graph").glob("*/tar-data.json.gz"):
            tar_data.unlink()
        tmp.rename(path)
    shutil.copyfile(root.path.with_suffix(".json"), path.with_suffix(".json"))
    return Root(path, root.driver, root.payloads)


def _build(path: Path, manifest: Path, name: str, options: Options) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    manifest.unlink(missing_ok=True)
    print(f"building {path.name} (cached for later runs) ...", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = build_host(scenario(name, options), tmp)
    data = host.to_json()
    tmp.rename(path)
    data["root"] = str(path)
    manifest.write_text(json.dumps(data, indent=2) + "\n")


def _payloads(path: Path, driver: str) -> tuple[Payload, ...]:
    """Every image layer's payload, largest first (the order both sides schedule them in)."""
    manifest = json.loads(path.with_suffix(".json").read_text())
    legacy = LegacyRoot(str(path), driver)
    payloads = []
    for image in manifest["images"]:
        v1_id = image["v1_id"]
        directory = Path(legacy.layer_files(v1_id))
        names = None if driver == "aufs" else _names_file(path, legacy, v1_id)
        payloads.append(Payload(v1_id, directory, names, image["tar_length"]))
    return tuple(sorted(payloads, key=lambda payload: payload.tar_length, reverse=True))


def _names_file(path: Path, legacy: LegacyRoot, v1_id: str) -> Path:
    """The layer's entry names that exist in its full tree, written once beside the root."""
    names = path.with_name(path.name + ".names") / v1_id
    if names.is_file():
        return names
    directory = legacy.layer_files(v1_id)
    with open(legacy.tar_data(v1_id), "rb") as stream:
        entries = [entry.name for entry in tarsplit.read_entries(stream) if entry.name]
    # A deletion is an entry (.wh.<name>) but no file in a full tree; tar would refuse it.
    present = [
        name.lstrip(b"/")
        for name in entries
        if os.path.lexists(os.path.join(os.fsencode(directory), name.lstrip(b"/")))
    ]
    names.parent.mkdir(exist_ok=True)
    tmp = names.with_suffix(".tmp")
    tmp.write_bytes(b"".join(name + b"\0" for name in present))
    tmp.rename(names)
    return names
