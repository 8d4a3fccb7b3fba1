"""Re-checking a migrated store: every image, layer, mount and tag must hold together.

Each problem names the object it concerns; the checks go on after a problem so that one run lists
everything that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from migrate import tarsplit
from migrate.confine import ConfinedRoot
from migrate.digest import ChainID, DiffID, Digest, DigestError, ImageID, chain_id
from migrate.errors import MigrateError
from migrate.imageconfig import parse_config
from migrate.legacy import LegacyRoot


@dataclass(slots=True)
class Verification:
    """What was checked and what is wrong."""

    images: int = 0
    layers: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


class Verifier:
    """Checks the store of one driver under a Docker root."""

    def __init__(self, legacy: LegacyRoot, *, content: bool = True) -> None:
        self.legacy = legacy
        self.base = os.path.join(legacy.root, "image", legacy.driver)
        self.content = content
        self.result = Verification()
        self._chains: dict[str, DiffID] = {}

    def run(self) -> Verification:
        if not os.path.isdir(self.base):
            self.result.problems.append(f"{self.base}: no migrated store")
            return self.result
        self._check_layers()
        images = self._check_images()
        self._check_mounts()
        self._check_references(images)
        return self.result

    def _problem(self, text: str) -> None:
        self.result.problems.append(text)

    # -- layers -----------------------------------------------------------------------------

    def _check_layers(self) -> None:
        layerdb = os.path.join(self.base, "layerdb", "sha256")
        for name in _listdir(layerdb):
            self.result.layers += 1
            for problem in self._layer_problems(os.path.join(layerdb, name), name):
                self._problem(f"layer sha256:{name}: {problem}")

    def _layer_problems(self, path: str, name: str) -> Iterator[str]:
        fields = {}
        for file in ("diff", "size", "cache-id"):
            raw = _read(os.path.join(path, file))
            if raw is None:
                yield f"{file} is missing"
                return
            fields[file] = raw
        try:
            diff_id = DiffID.parse(fields["diff"].decode().strip())
        except (DigestError, UnicodeDecodeError):
            yield f"diff is not a digest: {fields['diff']!r}"
            return
        parent_raw = _read(os.path.join(path, "parent"))
        parent = None
        if parent_raw is not None:
            try:
                parent = ChainID.parse(parent_raw.decode().strip())
            except (DigestError, UnicodeDecodeError):
                yield f"parent is not a digest: {parent_raw!r}"
                return
            if not os.path.isdir(os.path.join(os.path.dirname(path), parent.hex)):
                yield f"parent layer {parent} does not exist"
        if chain_id(parent, diff_id).hex != name:
            yield f"chain ID does not match its diff {diff_id} and parent {parent}"
        self._chains[name] = diff_id
        if not fields["size"].isdigit():
            yield f"size is not a decimal number: {fields['size']!r}"
            return
        if self.content:
            yield from self._content_problems(path, diff_id, int(fields["size"]), fields)

    def _content_problems(
        self, path: str, diff_id: DiffID, size: int, fields: dict[str, bytes]
    ) -> Iterator[str]:
        cache_id = fields["cache-id"].decode(errors="replace").strip()
        files = self.legacy.layer_files(cache_id)
        try:
            with (
                open(os.path.join(path, "tar-split.json.gz"), "rb") as stream,
                ConfinedRoot(files) as root,
            ):
                assembly = tarsplit.assemble(stream, root)
        except FileNotFoundError as exc:
            yield f"cannot reassemble: {exc.filename} is missing"
            return
        except (MigrateError, OSError) as exc:
            yield f"cannot reassemble from {files}: {exc}"
            return
        if assembly.diff_id != diff_id:
            yield f"content of {files} reassembles to {assembly.diff_id}, not {diff_id}"
        if assembly.size != size:
            yield f"size is {size} but the content holds {assembly.size} bytes"

    # -- images -----------------------------------------------------------------------------

    def _check_images(self) -> set[str]:
        content = os.path.join(self.base, "imagedb", "content", "sha256")
        good: set[str] = set()
        for name in _listdir(content):
            self.result.images += 1
            problems = list(self._image_problems(os.path.join(content, name), name))
            for problem in problems:
                self._problem(f"image sha256:{name}: {problem}")
            if not problems:
                good.add(name)
        for name in _listdir(os.path.join(self.base, "imagedb", "metadata", "sha256")):
            parent = _read(os.path.join(self.base, "imagedb", "metadata", "sha256", name, "parent"))
            if parent is not None and not os.path.exists(
                os.path.join(
                    content, parent.decode(errors="replace").strip().removeprefix("sha256:")
                )
            ):
                self._problem(
                    f"image sha256:{name}: parent {parent.decode(errors='replace')} does not exist"
                )
        return good

    def _image_problems(self, path: str, name: str) -> Iterator[str]:
        raw = _read(path) or b""
        actual = hashlib.sha256(raw).hexdigest()
        if actual != name:
            yield f"config hashes to sha256:{actual}"
            return
        try:
            diff_ids, _ = parse_config(raw)
        except ValueError as exc:
            yield f"config does not parse: {exc}"
            return
        chain = None
        for diff_id in diff_ids:
            chain = chain_id(chain, diff_id)
            if chain.hex not in self._chains:
                yield f"layer {chain} (diff {diff_id}) does not exist"
                return

    # -- mounts and references --------------------------------------------------------------

    def _check_mounts(self) -> None:
        mounts = os.path.join(self.base, "layerdb", "mounts")
        for name in _listdir(mounts):
            parent = _read(os.path.join(mounts, name, "parent"))
            if (
                parent is not None
                and parent.decode(errors="replace").strip().removeprefix("sha256:")
                not in self._chains
            ):
                self._problem(f"container {name}: parent layer {parent!r} does not exist")

    def _check_references(self, images: set[str]) -> None:
        raw = _read(os.path.join(self.base, "repositories.json"))
        if raw is None:
            return
        try:
            repositories = json.loads(raw)["Repositories"]
            refs = [(ref, target) for tags in repositories.values() for ref, target in tags.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._problem(f"repositories.json does not parse: {exc}")
            return
        for ref, target in refs:
            try:
                image = ImageID.parse(str(target))
            except DigestError:
                self._problem(f"tag {ref}: {target!r} is not an image ID")
                continue
            if image.hex not in images:
                self._problem(f"tag {ref}: image {image} does not exist or is damaged")


def verify(legacy: LegacyRoot, *, content: bool = True) -> Verification:
    """Check the migrated store under ``legacy.root`` for ``legacy.driver``."""
    return Verifier(legacy, content=content).run()


__all__ = ["Digest", "Verification", "verify"]
