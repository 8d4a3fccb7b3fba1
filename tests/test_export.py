"""``graph-migrate export``: OCI layouts and docker archives that real clients accept.

The legacy roots come from the fixture builder, which made every layer tar itself: it knows
each layer's true diff ID, and its vfs hosts hold each image's full file tree, against which the
readers' results are compared. Every reader is the real tool (skopeo, umoci, oci-image-tool,
dockerd 20.10, containerd's ctr, the Debian OCI schemas), started in temporary directories.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fixtures import build_host, scenario
from fixtures.host import Host
from fixtures.model import (
    HostSpec,
    ImageSpec,
    LayerSpec,
    RunConfig,
    Tag,
    big,
    directory,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
)
from fixtures.scenarios import Options
from migrate import api, export, gzipstream, oci
from migrate.cli import app
from migrate.errors import LayerContentError
from tests.conftest import require_tool
from tests.services import containerd, dockerd

SCHEMA_DIR = Path("/usr/share/gocode/src/github.com/opencontainers/image-spec/schema")
BUSYBOX = Path("/bin/busybox")
DRIVERS = ("aufs", "vfs")


# --- hosts --------------------------------------------------------------------------------------


def _runnable_spec() -> HostSpec:
    """A host whose images run: a real static busybox, a deletion, an opaque dir, hard links."""
    busybox = BUSYBOX.read_bytes() if BUSYBOX.exists() else b""
    base = LayerSpec(
        entries=(
            directory("bin"),
            file("bin/busybox", busybox, mode=0o755),
            # A real tar gives a hard link its inode's mode; Docker applies it to the inode.
            hardlink("bin/ls", "bin/busybox", mode=0o755),
            symlink("bin/cat", "busybox"),
            symlink("bin/sh", "busybox"),
            symlink("bin/stat", "busybox"),
            directory("etc"),
            file("etc/hello.txt", b"hello from a legacy layer\n"),
            file("etc/old.txt", b"deleted by the next layer\n"),
            directory("srv"),
            directory("srv/cache"),
            file("srv/cache/stale", b"hidden by an opaque directory\n"),
        ),
        mtime=1446200000,
    )
    app_layer = LayerSpec(
        entries=(
            directory("etc"),
            file("etc/motd", b"exported by graph-migrate\n", uid=1000, gid=1001, mode=0o640),
            whiteout("etc/old.txt"),
            directory("srv"),
            directory("srv/cache"),
            opaque("srv/cache"),
            file("srv/cache/fresh", b"fresh\n"),
        ),
        mtime=1450000000,
    )
    return HostSpec(
        name="export-runnable",
        images=(
            ImageSpec("base", base, step="#(nop) ADD file:busybox in /"),
            ImageSpec("app", app_layer, parent="base", step="#(nop) ADD dir:app in /"),
            ImageSpec("cmd", parent="app", step='#(nop) CMD ["sh"]', config=RunConfig(cmd=("sh",))),
        ),
        tags=(Tag("legacy/app", "v1", "cmd"), Tag("busybox", "latest", "base")),
    )


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Host]:
    """The sample and the runnable host, each built for aufs and for vfs."""
    base = tmp_path_factory.mktemp("hosts")
    built = {}
    for driver in DRIVERS:
        built["sample", driver] = build_host(
            scenario("sample"), base / f"sample-{driver}", driver=driver
        )
        built["runnable", driver] = build_host(
            _runnable_spec(), base / f"run-{driver}", driver=driver
        )
    return built


def _export(host: Host, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", "--root", str(host.root), "-j", "2", *args])
    return result.exit_code, result.stderr


# --- what the readers find ----------------------------------------------------------------------


def _tree(root: Path) -> tuple[dict[str, tuple[Any, ...]], list[list[str]]]:
    """Every entry under ``root`` (type, mode, owner, content or target, mtime) and link groups."""
    entries: dict[str, tuple[Any, ...]] = {}
    by_inode: dict[int, list[str]] = {}
    for directory_path, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory_path, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            detail: str | None = None
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    by_inode.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            entries[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                detail,
                mtime,
            )
    links = sorted(sorted(group) for group in by_inode.values() if len(group) > 1)
    return entries, links


def _vfs_tree(hosts: dict[tuple[str, str], Host], kind: str, image: str) -> Path:
    """The full tree of ``image`` as the legacy vfs driver holds it: the filesystem to match."""
    host = hosts[kind, "vfs"]
    return host.root / "vfs" / "dir" / host.ids[image]


def _index(layout: Path) -> list[dict[str, Any]]:
    return list(json.loads((layout / "index.json").read_bytes())["manifests"])


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, hex_digest = digest.split(":")
    return (layout / "blobs" / algorithm / hex_digest).read_bytes()


def _manifest(layout: Path, ref: str) -> dict[str, Any]:
    for entry in _index(layout):
        if entry.get("annotations", {}).get(oci.REF_NAME) == ref:
            return dict(json.loads(_blob(layout, entry["digest"])))
    raise AssertionError(f"{ref} not in {layout}/index.json")


def _diff_ids(host: Host, image: str) -> list[str]:
    """The builder's diff IDs of ``image``'s layers, base first."""
    chain = []
    v1_id: str | None = host.ids[image]
    while v1_id:
        chain.append(host.images[v1_id].diff_id)
        v1_id = host.images[v1_id].parent
    return list(reversed(chain))


# --- the OCI layout -----------------------------------------------------------------------------

SAMPLE_NAMES = ("busybox:latest", "web:1.0", "web:latest", "localhost:5000/tools:v1")


@pytest.fixture(scope="module")
def layouts(
    hosts: dict[tuple[str, str], Host], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A gzip OCI layout of the sample's tagged images, exported from each driver."""
    base = tmp_path_factory.mktemp("layouts")
    made = {}
    for driver in DRIVERS:
        layout = base / driver
        code, output = _export(hosts["sample", driver], *SAMPLE_NAMES, "--oci", str(layout))
        assert code == 0, output
        made[driver] = layout
    return made


@pytest.mark.integration
@pytest.mark.parametrize("driver", DRIVERS)
def test_skopeo_inspects_and_copies_the_layout(
    driver: str, layouts: dict[str, Path], tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    layout = layouts[driver]
    for ref in SAMPLE_NAMES:
        entry = next(e for e in _index(layout) if e["annotations"][oci.REF_NAME] == ref)
        shown = json.loads(_run(skopeo, "inspect", f"oci:{layout}:{ref}"))
        assert shown["Digest"] == entry["digest"]
        assert shown["Layers"] == [layer["digest"] for layer in _manifest(layout, ref)["layers"]]

    archive = tmp_path / "copied.tar"
    _run(skopeo, "copy", f"oci:{layout}:web:1.0", f"docker-archive:{archive}:web:1.0")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["docker.io/library/web:1.0"]


@pytest.mark.integration
@pytest.mark.parametrize("driver", DRIVERS)
def test_oci_image_tool_validates_the_layout(driver: str, layouts: dict[str, Path]) -> None:
    tool = require_tool("oci-image-tool", "oci-image-tool")
    # NOTE: its --ref filter looks for the pre-1.0 annotation name; without it, every manifest
    # listed in index.json is validated.
    result = subprocess.run(
        [tool, "validate", "--type", "image", str(layouts[driver])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Validation succeeded" in result.stdout


def _schemas() -> Any:
    if not SCHEMA_DIR.is_dir():
        message = "OCI schemas missing: install golang-github-opencontainers-image-spec-dev"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from jsonschema import Draft4Validator, FormatChecker
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    resources = []
    for path in SCHEMA_DIR.glob("*.json"):
        document = json.loads(path.read_bytes())
        resource = Resource.from_contents(document, default_specification=DRAFT4)
        uris = {document.get("id", "")} | {
            f"https://opencontainers.org/schema/{prefix}{path.name}"
            for prefix in ("", "image/", "image/index/", "image/manifest/", "descriptor/")
        }
        resources += [(uri, resource) for uri in uris if uri]
    registry = Registry().with_resources(resources)

    def validator(name: str) -> Any:
        schema = json.loads((SCHEMA_DIR / name).read_bytes())
        return Draft4Validator(schema, registry=registry, format_checker=FormatChecker())

    return validator


@pytest.mark.integration
@pytest.mark.parametrize("driver", DRIVERS)
def test_layout_documents_match_the_debian_oci_schemas(
    driver: str, layouts: dict[str, Path]
) -> None:
    validator = _schemas()
    layout = layouts[driver]
    problems: list[str] = []

    def check(schema: str, document: Any, where: str) -> None:
        for error in validator(schema).iter_errors(document):
            problems.append(f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message}")

    check("image-layout-schema.json", json.loads((layout / "oci-layout").read_bytes()), "layout")
    check("image-index-schema.json", json.loads((layout / "index.json").read_bytes()), "index")
    for entry in _index(layout):
        manifest = json.loads(_blob(layout, entry["digest"]))
        check("image-manifest-schema.json", manifest, entry["digest"])
        config = json.loads(_blob(layout, manifest["config"]["digest"]))
        check("config-schema.json", config, manifest["config"]["digest"])
    assert problems == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_layout_blobs_match_their_descriptors_and_the_builders_diff_ids(
    driver: str, hosts: dict[tuple[str, str], Host], layouts: dict[str, Path]
) -> None:
    host, layout = hosts["sample", driver], layouts[driver]
    referenced = set()
    for ref, image in (
        ("busybox:latest", "busybox"),
        ("web:1.0", "web"),
        ("localhost:5000/tools:v1", "tools"),
    ):
        entry = next(e for e in _index(layout) if e["annotations"][oci.REF_NAME] == ref)
        manifest_bytes = _blob(layout, entry["digest"])
        assert len(manifest_bytes) == entry["size"]
        manifest = json.loads(manifest_bytes)
        config_bytes = _blob(layout, manifest["config"]["digest"])
        assert manifest["config"]["mediaType"] == oci.CONFIG
        assert len(config_bytes) == manifest["config"]["size"]
        assert hashlib.sha256(config_bytes).hexdigest() == manifest["config"]["digest"][7:]
        assert json.loads(config_bytes)["rootfs"]["diff_ids"] == _diff_ids(host, image)
        uncompressed = []
        for layer in manifest["layers"]:
            data = _blob(layout, layer["digest"])
            assert layer["mediaType"] == oci.LAYER_GZIP
            assert (len(data), hashlib.sha256(data).hexdigest()) == (
                layer["size"],
                layer["digest"][7:],
            )
            uncompressed.append("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest())
        assert uncompressed == _diff_ids(host, image)
        referenced |= {entry["digest"], manifest["config"]["digest"]}
        referenced |= {layer["digest"] for layer in manifest["layers"]}
    # Shared layers are stored once, and nothing else (no temporary file) is left in the layout.
    stored = {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}
    assert stored == referenced
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]


@pytest.mark.integration
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("kind", "ref", "image"),
    [
        ("sample", "web:1.0", "web"),
        ("sample", "localhost:5000/tools:v1", "tools"),
        ("runnable", "legacy/app:v1", "cmd"),
    ],
)
def test_umoci_unpack_gives_the_legacy_filesystem(
    driver: str, kind: str, ref: str, image: str, hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    umoci = require_tool("umoci", "umoci")
    if os.geteuid() != 0:
        pytest.skip("umoci keeps owners only when run as root")
    layout = tmp_path / "layout"
    code, output = _export(hosts[kind, driver], ref, "--oci", str(layout), "--compress", "none")
    assert code == 0, output
    _run(umoci, "unpack", "--image", f"{layout}:{ref}", str(tmp_path / "bundle"))
    assert _tree(tmp_path / "bundle" / "rootfs") == _tree(_vfs_tree(hosts, kind, image))


# --- the docker archive -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("driver", DRIVERS)
def test_docker_loads_and_runs_the_archive(
    driver: str, hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    require_tool("busybox", "busybox-static")
    skopeo = require_tool("skopeo", "skopeo")
    host = hosts["runnable", driver]
    archive, gzipped = tmp_path / "images.tar", tmp_path / "gzipped.tar"
    code, output = _export(host, "legacy/app:v1", "busybox", "--docker-archive", str(archive))
    assert code == 0, output
    code, output = _export(
        host, "legacy/app:v1", "--docker-archive", str(gzipped), "--compress", "gzip"
    )
    assert code == 0, output
    layout = tmp_path / "layout"
    assert _export(host, "legacy/app:v1", "--oci", str(layout))[0] == 0
    copied = tmp_path / "copied.tar"
    _run(skopeo, "copy", f"oci:{layout}:legacy/app:v1", f"docker-archive:{copied}:copied/app:v1")
    expected_id = _migrated_image_id(host, "cmd", tmp_path)

    with dockerd(tmp_path / "docker") as docker:
        loaded = docker("load", "-i", str(archive)).stdout
        assert loaded == "Loaded image: legacy/app:v1\nLoaded image: busybox:latest\n"
        shown = docker(
            "image", "inspect", "--format", "{{.Id}} {{.RootFS.Layers}}", "legacy/app:v1"
        )
        assert shown.stdout == f"{expected_id} [{' '.join(_diff_ids(host, 'cmd'))}]\n"
        # Loading layers it holds already, dockerd still checks each against its diff ID.
        assert docker("load", "-i", str(gzipped)).stdout == "Loaded image: legacy/app:v1\n"
        docker("load", "-i", str(copied))

        for tag in ("legacy/app:v1", "copied/app:v1"):
            run = docker("run", "--rm", "--network", "none", tag, "cat", "/etc/motd")
            assert run.stdout == "exported by graph-migrate\n"
            facts = docker(
                "run", "--rm", "--network", "none", tag, "sh", "-c",
                "cat /etc/hello.txt; ls /srv/cache; stat -c '%u:%g %a %h' /etc/motd /bin/ls;"
                " cat /etc/old.txt || echo deleted",
            )  # fmt: skip
            assert facts.stdout == (
                "hello from a legacy layer\nfresh\n1000:1001 640 1\n0:0 755 2\ndeleted\n"
            )


def _migrated_image_id(host: Host, image: str, tmp_path: Path) -> str:
    """The image ID a dry run of the migration gives ``image``."""
    return _migrated_ids(host, tmp_path)[host.ids[image]]


def _migrated_ids(host: Host, tmp_path: Path) -> dict[str, str]:
    """v1 ID -> the image ID a dry run of the migration gives it."""
    result = CliRunner().invoke(
        app, ["run", "--root", str(host.root), "--dry-run", "--json", "-q",
              "--ledger", f"sqlite:///{tmp_path}/ledger.db"],
    )  # fmt: skip
    return {i["v1_id"]: str(i["image_id"]) for i in json.loads(result.stdout)["images"]}


def test_docker_archive_layout_is_what_docker_save_writes(
    hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    host = hosts["sample", "aufs"]
    archive = tmp_path / "web.tar"
    assert _export(host, "web:1.0", "--docker-archive", str(archive))[0] == 0
    chain = []
    v1_id: str | None = host.ids["web"]
    while v1_id:
        chain.insert(0, v1_id)
        v1_id = host.images[v1_id].parent
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
        assert manifest == [
            {
                "Config": manifest[0]["Config"],
                "RepoTags": ["web:1.0"],
                "Layers": [f"{v1}/layer.tar" for v1 in chain],
            }
        ]
        assert repositories == {"web": {"1.0": chain[-1]}}
        for v1 in chain:
            assert tar.extractfile(f"{v1}/VERSION").read() == b"1.0"  # type: ignore[union-attr]
            legacy_json = (host.root / "graph" / v1 / "json").read_bytes()
            assert tar.extractfile(f"{v1}/json").read() == legacy_json  # type: ignore[union-attr]
            layer = tar.extractfile(f"{v1}/layer.tar").read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(layer).hexdigest() == host.images[v1].diff_id
        config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        assert manifest[0]["Config"] == hashlib.sha256(config).hexdigest() + ".json"


# --- containerd ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("output", ["oci", "docker-archive"])
def test_ctr_imports_the_export(
    output: str, driver: str, hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    host = hosts["sample", driver]
    archive = tmp_path / "images.tar"
    if output == "oci":
        layout = tmp_path / "layout"
        assert _export(host, *SAMPLE_NAMES, "--oci", str(layout))[0] == 0
        with tarfile.open(archive, "w") as tar:
            for name in ("oci-layout", "index.json", "blobs"):
                tar.add(layout / name, arcname=name)
    else:
        assert _export(host, *SAMPLE_NAMES, "--docker-archive", str(archive))[0] == 0

    # A fresh containerd per archive: one that holds a blob already skips checking a new copy.
    with containerd() as ctr:
        ctr("images", "import", str(archive))
        names = ctr("images", "ls", "-q").stdout.split()
        checked = ctr("images", "check").stdout
    assert sorted(names) == [
        "docker.io/library/busybox:latest",
        "docker.io/library/web:1.0",
        "docker.io/library/web:latest",
        "localhost:5000/tools:v1",
    ]
    rows = [line.split() for line in checked.splitlines()[1:]]
    assert [(row[0], row[3], row[-1]) for row in rows] == [
        (n, "complete", "true") for n in sorted(names)
    ]


# --- naming images, and what the command refuses ------------------------------------------------


def test_tags_and_id_prefixes_name_the_same_image(
    hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    host = hosts["sample", "vfs"]
    legacy = api.open_root(str(host.root))
    image_id = _migrated_image_id(host, "busybox", tmp_path)
    names = [
        "busybox:latest",
        "busybox",
        "docker.io/library/busybox:latest",
        host.ids["busybox"][:12],
        image_id,
        image_id[7:19],
    ]
    report = api.export(legacy, names, oci=str(tmp_path / "layout"))
    assert [(str(i.image_id), i.tags) for i in report.images] == [(image_id, ("busybox:latest",))]
    assert report.skipped == []


def _ambiguous_prefix(host: Host, tmp_path: Path) -> str:
    """A one-digit prefix that starts at least two different images' IDs (v1 or new)."""
    migrated = _migrated_ids(host, tmp_path)
    for digit in "0123456789abcdef":
        images = {v1 for v1 in host.ids.values() if digit in (v1[0], migrated[v1][len("sha256:")])}
        if len(images) > 1:
            return digit
    raise AssertionError("no ambiguous prefix")


def test_a_tag_or_v1_id_plans_only_that_images_layers(tmp_path: Path) -> None:
    host = build_host(scenario("sample"), tmp_path / "root", driver="vfs")
    legacy = api.open_root(str(host.root))
    chain = [host.ids["base"], host.ids["busybox"]]
    # The builder's own tar lengths of the busybox chain: what replaying it must hash.
    expected = sum(host.images[v1_id].tar_length for v1_id in chain)

    by_tag = api.export(legacy, ["busybox:latest"], oci=str(tmp_path / "a"))
    by_v1_id = api.export(legacy, [host.ids["busybox"]], oci=str(tmp_path / "b"))
    by_prefix = api.export(legacy, [host.ids["busybox"][:12]], oci=str(tmp_path / "c"))

    assert by_tag.bytes_hashed == by_v1_id.bytes_hashed == expected
    # A short prefix might name a new image ID too: the whole root is planned.
    everything = sum(record.tar_length for record in host.images.values())
    assert by_prefix.bytes_hashed == everything > expected
    planned = [
        [(image.image_id, [layer.diff_id for layer in image.layers]) for image in report.images]
        for report in (by_tag, by_v1_id, by_prefix)
    ]
    assert planned[0] == planned[1] == planned[2]


def test_unknown_or_ambiguous_names_exit_2_with_one_line(
    hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    host = hosts["sample", "vfs"]
    layout = tmp_path / "layout"
    prefix = _ambiguous_prefix(host, tmp_path)
    cases = {
        "nothere:1.0": "graph-migrate: image 'nothere:1.0': no such tag in the legacy root\n",
        "0"
        * 20: f"graph-migrate: image '{'0' * 20}': no such image ID or v1 ID in the legacy root\n",
    }
    for name, line in cases.items():
        assert _export(host, "busybox", name, "--oci", str(layout)) == (2, line)
    code, output = _export(host, prefix, "--oci", str(layout))
    assert code == 2
    assert output.startswith(f"graph-migrate: image '{prefix}': ambiguous, it starts ")
    assert output.count("\n") == 1
    assert not layout.exists()

    both = _export(host, "busybox", "--oci", str(layout), "--docker-archive", str(tmp_path / "x"))
    assert both == (2, "graph-migrate: give exactly one of --oci DIR and --docker-archive FILE\n")
    bad = _export(host, "busybox", "--oci", str(layout), "--compress", "xz")
    assert bad == (2, "graph-migrate: unknown compression 'xz': use gzip or none\n")


def test_a_damaged_image_is_named_and_the_others_still_export(tmp_path: Path) -> None:
    host = build_host(scenario("missing-parent", Options(driver="vfs")), tmp_path / "root")
    layout = tmp_path / "layout"
    code, output = _export(host, "damaged:latest", "web:1.0", "--oci", str(layout))
    assert code == 1
    damaged = host.ids["damaged-child"]
    assert f"skipped damaged:latest: image {damaged}: parent image " in output
    assert [e["annotations"][oci.REF_NAME] for e in _index(layout)] == ["web:1.0"]


@pytest.mark.integration
def test_regenerated_layers_export_the_legacy_filesystem(tmp_path: Path) -> None:
    """Docker 1.7 stored no tar-split: the layers are regenerated, then exported."""
    umoci = require_tool("umoci", "umoci")
    host = build_host(scenario("no-tarsplit", Options(driver="vfs")), tmp_path / "root")
    layout = tmp_path / "layout"
    code, output = _export(host, "old:latest", "--oci", str(layout))
    assert code == 0, output
    _run(umoci, "unpack", "--image", f"{layout}:old:latest", str(tmp_path / "bundle"))
    expected = host.root / "vfs" / "dir" / host.ids["old-app"]
    assert _tree(tmp_path / "bundle" / "rootfs") == _tree(expected)


# --- legacy data untouched, output deterministic and atomic -------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        found[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_size, content)
    return found


def _layout_files(layout: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(layout)): p.read_bytes() for p in sorted(layout.rglob("*")) if p.is_file()
    }


def test_export_reads_legacy_data_only_migrated_in_place_or_not(tmp_path: Path) -> None:
    host = build_host(scenario("sample"), tmp_path / "root", driver="aufs")
    before = _snapshot(host.root)
    assert _export(host, *SAMPLE_NAMES, "--oci", str(tmp_path / "before"))[0] == 0
    assert _export(host, *SAMPLE_NAMES, "--docker-archive", str(tmp_path / "before.tar"))[0] == 0
    assert _snapshot(host.root) == before

    migrated = CliRunner().invoke(
        app, ["run", "--root", str(host.root), "-q", "--ledger", f"sqlite:///{tmp_path}/l.db"]
    )
    assert migrated.exit_code == 0, migrated.output
    # A migration in place with a tag moved afterwards: the export still follows the legacy tags.
    repositories = host.root / "image" / "aufs" / "repositories.json"
    references = json.loads(repositories.read_bytes())
    references["Repositories"]["web"]["web:1.0"] = references["Repositories"]["busybox"][
        "busybox:latest"
    ]
    repositories.write_text(json.dumps(references))
    after_migration = _snapshot(host.root)
    assert _export(host, *SAMPLE_NAMES, "--oci", str(tmp_path / "after"))[0] == 0
    assert _export(host, *SAMPLE_NAMES, "--docker-archive", str(tmp_path / "after.tar"))[0] == 0
    assert _snapshot(host.root) == after_migration
    assert _layout_files(tmp_path / "after") == _layout_files(tmp_path / "before")
    assert (tmp_path / "after.tar").read_bytes() == (tmp_path / "before.tar").read_bytes()


def test_export_is_deterministic_and_adding_to_a_layout_keeps_its_images(
    hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    host = hosts["sample", "vfs"]
    one, many = tmp_path / "one", tmp_path / "many"
    for layout, jobs in ((one, "1"), (many, "3")):
        result = CliRunner().invoke(
            app,
            ["export", "--root", str(host.root), "-j", jobs, *SAMPLE_NAMES, "--oci", str(layout)],
        )
        assert result.exit_code == 0, result.output
    assert _layout_files(one) == _layout_files(many)

    # Exported in two steps into one layout: the same files as in one step.
    steps = tmp_path / "steps"
    assert _export(host, "busybox:latest", "web:1.0", "--oci", str(steps))[0] == 0
    assert _export(host, "web:latest", "localhost:5000/tools:v1", "--oci", str(steps))[0] == 0
    assert _layout_files(steps) == _layout_files(one)
    # And again: nothing changes.
    assert _export(host, *SAMPLE_NAMES, "--oci", str(steps))[0] == 0
    assert _layout_files(steps) == _layout_files(one)


def test_an_interrupted_export_leaves_the_output_as_it_was(
    hosts: dict[tuple[str, str], Host], tmp_path: Path
) -> None:
    host = hosts["sample", "vfs"]
    layout, archive = tmp_path / "layout", tmp_path / "images.tar"
    assert _export(host, "busybox:latest", "--oci", str(layout))[0] == 0
    assert _export(host, "busybox:latest", "--docker-archive", str(archive))[0] == 0
    index, saved = (layout / "index.json").read_bytes(), archive.read_bytes()

    # The n-th atomic rename of the export is where the process is killed (kill -9).
    for arrival, output in (
        (1, ["--oci", str(layout)]),
        (2, ["--oci", str(layout)]),
        (4, ["--oci", str(layout)]),
        (1, ["--docker-archive", str(archive)]),
    ):
        assert _crash(host, arrival, "web:1.0", *output) == -9
        assert (layout / "index.json").read_bytes() == index
        assert archive.read_bytes() == saved
    assert _export(host, "web:1.0", "--oci", str(layout))[0] == 0
    assert [e["annotations"][oci.REF_NAME] for e in _index(layout)] == ["busybox:latest", "web:1.0"]

    # Killed during the first export into a new directory: a valid empty layout, and a rerun
    # completes it.
    fresh = tmp_path / "fresh"
    assert _crash(host, 3, "web:1.0", "--oci", str(fresh)) == -9
    assert _index(fresh) == []
    assert _export(host, "web:1.0", "--oci", str(fresh))[0] == 0
    assert [e["annotations"][oci.REF_NAME] for e in _index(fresh)] == ["web:1.0"]


def _crash(host: Host, arrival: int, *args: str) -> int:
    command = [_graph_migrate(), "export", "--root", str(host.root), "-q", *args]
    environment = {**os.environ, "GRAPH_MIGRATE_CRASH_AT": f"before-rename:{arrival}"}
    return subprocess.run(command, env=environment, capture_output=True, check=False).returncode


def _graph_migrate() -> str:
    return str(Path(sys.executable).parent / "graph-migrate")


# --- streaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["gzip", "none"])
def test_a_large_layer_streams_without_being_held_in_memory(compress: str, tmp_path: Path) -> None:
    size = 48 << 20
    layer = LayerSpec(entries=(directory("data"), big("data/blob.bin", size, "export stream")))
    spec = HostSpec(
        "export-large", images=(ImageSpec("big", layer),), tags=(Tag("big", "1", "big"),)
    )
    host = build_host(spec, tmp_path / "root", driver="vfs")
    legacy = api.open_root(str(host.root))
    tracemalloc.start()
    try:
        api.export(legacy, ["big:1"], oci=str(tmp_path / "layout"), compress=compress, jobs=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NOTE: reading a legacy json allocates a 16 MiB buffer for a moment (its size limit).
    assert peak < size // 2, f"peak {peak} bytes for a {size}-byte layer"
    layer_descriptor = _manifest(tmp_path / "layout", "big:1")["layers"][0]
    data = _blob(tmp_path / "layout", layer_descriptor["digest"])
    tar = gzip.decompress(data) if compress == "gzip" else data
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == host.images[host.ids["big"]].diff_id


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        gzipstream.BLOCK_SIZE - 1,
        gzipstream.BLOCK_SIZE,
        gzipstream.BLOCK_SIZE + 1,
        3 * gzipstream.BLOCK_SIZE + 7,
    ],
    ids=["empty", "one-byte", "block-less-one", "one-block", "block-plus-one", "several-blocks"],
)
def test_parallel_gzip_is_valid_gzip_and_independent_of_threads(size: int) -> None:
    data = random.Random(size).randbytes(size // 2) + bytes(size - size // 2)
    outputs = []
    for threads in (1, 4):
        pieces: list[bytes] = []
        writer = gzipstream.GzipWriter(pieces.append, threads=threads)
        for start in range(0, size, 300_000):
            writer.write(data[start : start + 300_000])
        writer.close()
        outputs.append(b"".join(pieces))
    assert outputs[0] == outputs[1]
    assert outputs[0][:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    # The real gzip tool reads it back, trailer (CRC-32 and length) checked.
    unpacked = subprocess.run(["gzip", "-dc"], input=outputs[0], capture_output=True, check=True)
    assert unpacked.stdout == data


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"architecture":"amd64","config":{"Env":["A=1"],"Cmd":null},"os":"linux"}',
            b'{"architecture":"amd64","config":{"Env":["A=1"],"Cmd":null},"os":"linux"}',
        ),
        (
            b'{"architecture":"amd64","config":{"Hostname":"h","Env":null,"Cmd":["sh"],"User":null},'
            b'"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}',
            b'{"architecture":"amd64","config":{"Hostname":"h","Cmd":["sh"]},'
            b'"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}',
        ),
        (
            rb'{"author":null,"config":{"Cmd":["a \u003e b"]},"created":"2014-01-01T00:00:00Z"}',
            rb'{"architecture":"amd64","config":{"Cmd":["a \u003e b"]},'
            b'"created":"2014-01-01T00:00:00Z","os":"linux"}',
        ),
    ],
    ids=["valid-kept-as-is", "null-env-and-user-dropped", "platform-added"],
)
def test_oci_config_changes_only_what_the_schema_forbids(raw: bytes, expected: bytes) -> None:
    assert oci.oci_config(raw) == expected


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


def test_a_layer_changed_after_planning_fails_and_leaves_the_layout_alone(
    tmp_path: Path,
) -> None:
    host = build_host(scenario("sample"), tmp_path / "root", driver="vfs")
    legacy = api.open_root(str(host.root))
    layout = tmp_path / "layout"
    api.export(legacy, ["busybox:latest"], oci=str(layout))
    before = _layout_files(layout)
    with export._planned(legacy, 1, ["web:1.0"]) as plan:
        images, _ = export.plan_images(plan, ["web:1.0"])
        # The same size, other bytes: only the CRC in the tar-split stream can tell.
        changed = host.payload_root(host.ids["web-app"]) / "srv" / "www" / "index.html"
        changed.write_bytes(changed.read_bytes().upper())
        writer = export.OciLayoutWriter(str(layout), legacy, compress="gzip", jobs=2)
        with pytest.raises(LayerContentError, match=f"layer {host.ids['web-app']}: "):
            writer.add(images[0])
    assert _layout_files(layout) == before
