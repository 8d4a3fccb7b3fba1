"""The fixture builder lays out legacy hosts that real tools read as Docker 1.9 left them.

Every tar-split the builder records is replayed by Debian's ``tar-split`` CLI (the Go code Docker
used) against the driver directory Docker would read; the result must be the original tar. JSON
shapes are checked against the literal bytes of moby's own migration tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import DAMAGED, Host, Options, build_host, scenario
from fixtures.model import DRIVERS, ImageSpec, RunConfig
from fixtures.tarwrite import write_layer
from fixtures.v1json import Identity, go_json, strong_config, struct_image
from migrate.digest import EMPTY_TAR_DIFF_ID
from tests.conftest import require_tool

SMALL = Options(size=2 << 20, depth=120)

# How Go's tar-split replay meets each kind of damage to a layer (tarsplit-and-drivers B.6).
REPLAY_FAILS = {
    "truncated-tarsplit": "unexpected EOF",
    "corrupt-tarsplit": "invalid character",
    "crc-mismatch": "file integrity checksum failed",
    "missing-layer-dir": "no such file or directory",
    "duplicate-paths": "duplicates of file paths not supported",
}
# These replay "successfully" in Go, which is the danger: the bytes come from outside the layer.
REPLAY_ESCAPES = ("escape-dotdot", "escape-symlink-dir")


def _build(tmp_path: Path, name: str, driver: str, options: Options = SMALL) -> Host:
    options = Options(driver=driver, size=options.size, depth=options.depth)  # type: ignore[arg-type]
    return build_host(scenario(name, options), tmp_path / f"{name}-{driver}")


def _replay(tar_split: Path, payload: Path, out: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("tar-split", "tar-split")
    command = [tool, "asm", "--input", str(tar_split), "--path", str(payload), "--output", str(out)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _tar_split_entries(path: Path) -> Iterator[dict[str, object]]:
    import gzip

    for line in gzip.decompress(path.read_bytes()).splitlines():
        yield json.loads(line)


# --- tar-split round trips -------------------------------------------------------------------

# Damage to layer content depends on where each driver keeps it; damage to metadata does not.
LAYER_SCENARIOS = ("sample", "stress", "deep-chain", "collapse", *REPLAY_FAILS, *REPLAY_ESCAPES)
SCENARIO_DRIVERS = [
    (name, driver)
    for name in ("sample", "stress", "deep-chain", "collapse", *DAMAGED)
    for driver in (DRIVERS if name in LAYER_SCENARIOS or name == "escape-absolute" else DRIVERS[:2])
]


@pytest.mark.integration
@pytest.mark.parametrize(("name", "driver"), SCENARIO_DRIVERS)
def test_tar_split_reassembles_the_original_tar(tmp_path: Path, name: str, driver: str) -> None:
    host = _build(tmp_path, name, driver)
    damaged = host.damaged
    replayed = 0

    for v1_id, record in host.images.items():
        tar_split = host.root / "graph" / v1_id / "tar-data.json.gz"
        if not record.has_tarsplit:
            assert not tar_split.exists()
            assert damaged[v1_id] == "no-tarsplit"
            continue
        result = _replay(tar_split, record.payload_root, tmp_path / "out.tar")
        kind = damaged.get(v1_id)
        if kind in REPLAY_FAILS:
            assert result.returncode != 0, f"{record.name}: {kind} replayed"
            assert REPLAY_FAILS[kind] in result.stderr
            continue
        assert result.returncode == 0, f"{record.name}: {result.stderr}"
        assert _sha256(tmp_path / "out.tar") == record.diff_id, record.name
        replayed += 1

    assert replayed >= len(host.images) - 2


@pytest.mark.integration
@pytest.mark.parametrize("name", REPLAY_ESCAPES)
@pytest.mark.parametrize("driver", DRIVERS)
def test_escaping_names_read_outside_the_layer(tmp_path: Path, name: str, driver: str) -> None:
    host = _build(tmp_path, name, driver)
    (v1_id,) = host.damaged
    root = host.payload_root(v1_id)
    names = [
        str(entry["name"])
        for entry in _tar_split_entries(host.root / "graph" / v1_id / "tar-data.json.gz")
        if entry["type"] == 1 and entry.get("size")
    ]

    outside = [
        name for name in names if not Path(os.path.realpath(root / name)).is_relative_to(root)
    ]

    assert len(outside) == 1
    assert (root / outside[0]).read_bytes() == (root / "srv/secret.txt").read_bytes()


def test_absolute_name_is_the_only_change(tmp_path: Path) -> None:
    host = _build(tmp_path, "escape-absolute", "aufs")
    (v1_id,) = host.damaged
    names = [
        entry.get("name")
        for entry in _tar_split_entries(host.root / "graph" / v1_id / "tar-data.json.gz")
        if entry["type"] == 1
    ]

    assert "/srv/secret.txt" in names
    assert "srv/secret.txt" not in names


@pytest.mark.integration
def test_large_host_at_a_tiny_size_reassembles(tmp_path: Path) -> None:
    host = _build(tmp_path, "large", "aufs", Options(size=6 << 20))

    assert len(host.images) >= 11
    for v1_id, record in host.images.items():
        tar_split = host.root / "graph" / v1_id / "tar-data.json.gz"
        result = _replay(tar_split, record.payload_root, tmp_path / "out.tar")
        assert result.returncode == 0, result.stderr
        assert _sha256(tmp_path / "out.tar") == record.diff_id


def test_empty_layers_are_the_1024_zero_byte_tar(tmp_path: Path) -> None:
    host = _build(tmp_path, "sample", "vfs")

    for name in ("busybox", "web-env", "web"):
        record = host.images[host.ids[name]]
        assert record.diff_id == str(EMPTY_TAR_DIFF_ID)
        assert record.tar_length == 1024


# --- determinism -----------------------------------------------------------------------------


def _snapshot(root: Path) -> tuple[dict[bytes, tuple[object, ...]], set[tuple[bytes, ...]]]:
    """Every path's type, mode, owner, times, size and content; and the hard-link groups."""
    entries: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, list[bytes]] = {}
    base = os.fsencode(root)
    for directory, dirs, files in os.walk(base):
        for name in [b".", *dirs, *files] if directory == base else [*dirs, *files]:
            path = os.path.normpath(os.path.join(directory, name))
            st = os.lstat(path)
            rel = os.path.relpath(path, base)
            detail: object = st.st_rdev
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(Path(os.fsdecode(path)).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            entries[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, detail)
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
    groups = {tuple(sorted(paths)) for paths in inodes.values() if len(paths) > 1}
    return entries, groups


@pytest.mark.parametrize(
    ("name", "driver"),
    [
        *(("sample", driver) for driver in DRIVERS),
        ("stress", "aufs"),
        ("stress", "overlay"),
        ("escape-symlink-dir", "vfs"),
    ],
)
def test_the_same_description_gives_the_same_bytes(tmp_path: Path, name: str, driver: str) -> None:
    first = _build(tmp_path / "one", name, driver)
    second = _build(tmp_path / "two", name, driver)

    assert _snapshot(first.root) == _snapshot(second.root)
    assert {k: v.diff_id for k, v in first.images.items()} == {
        k: v.diff_id for k, v in second.images.items()
    }


# --- driver layouts --------------------------------------------------------------------------


def _parent_of(root: Path, v1_id: str) -> str | None:
    """The parent as the migration resolves it: parent file, then parent, then parent_id."""
    directory = root / "graph" / v1_id
    if (directory / "parent").exists() and (directory / "parent").read_text():
        return (directory / "parent").read_text()
    config = json.loads((directory / "json").read_bytes())
    parent = config.get("parent") or config.get("parent_id", "").removeprefix("sha256:")
    return parent or None


def _chain(root: Path, v1_id: str) -> list[str]:
    chain = []
    parent = _parent_of(root, v1_id)
    while parent is not None:
        chain.append(parent)
        parent = _parent_of(root, parent)
    return chain


def test_aufs_whiteouts_are_hard_links_to_the_branch_base(tmp_path: Path) -> None:
    host = _build(tmp_path, "stress", "aufs")
    diff = host.root / "aufs" / "diff"
    whiteouts = 0

    for branch in diff.iterdir():
        base = branch / ".wh..wh.aufs"
        for path in branch.rglob(".wh.*"):
            if path.parent == branch and path.name.startswith(".wh..wh."):
                continue
            assert path.lstat().st_ino == base.lstat().st_ino, path
            whiteouts += 1
        if base.exists():
            assert stat.S_IMODE(base.lstat().st_mode) == 0o444
            assert not any((branch / ".wh..wh.plnk").iterdir())
            assert not any((branch / ".wh..wh.orph").iterdir())

    assert whiteouts >= 5


def test_aufs_layer_files_list_the_ancestors(tmp_path: Path) -> None:
    host = _build(tmp_path, "sample", "aufs")

    for v1_id in host.images:
        listing = (host.root / "aufs" / "layers" / v1_id).read_text().splitlines()
        assert listing == _chain(host.root, v1_id)
    cid = host.containers["web1"]
    init = (host.root / "aufs" / "layers" / f"{cid}-init").read_text().splitlines()
    assert init == [host.ids["web"], *_chain(host.root, host.ids["web"])]


def test_overlay_roots_share_inodes_with_the_parent(tmp_path: Path) -> None:
    host = _build(tmp_path, "sample", "overlay")
    base, app, web = (host.payload_root(host.ids[name]) for name in ("base", "web-app", "web"))

    assert (web / "bin/busybox").stat().st_ino == (base / "bin/busybox").stat().st_ino
    assert (web / "srv/www/app.js").stat().st_ino == (app / "srv/www/app.js").stat().st_ino
    assert (base / "etc/motd").exists()
    assert not (app / "etc/motd").exists()
    assert not list(host.root.glob("overlay/*/root/**/.wh.*"))
    assert (
        host.root / "overlay" / host.containers["web1"] / "lower-id"
    ).read_text() == web.parent.name


@pytest.mark.parametrize("driver", ["vfs", "btrfs"])
def test_full_copy_drivers_hold_independent_trees(tmp_path: Path, driver: str) -> None:
    host = _build(tmp_path, "sample", driver)
    base, web = (host.payload_root(host.ids[name]) for name in ("base", "web"))

    assert (web / "bin/busybox").read_bytes() == (base / "bin/busybox").read_bytes()
    assert (web / "bin/busybox").stat().st_ino != (base / "bin/busybox").stat().st_ino
    assert (web / "bin/sh").stat().st_ino == (web / "bin/busybox").stat().st_ino
    assert not (web / "etc/motd").exists()
    assert not list(host.root.rglob(".wh.*"))


def test_graph_files_have_dockers_modes(tmp_path: Path) -> None:
    host = _build(tmp_path, "stress", "vfs")

    for v1_id in host.images:
        directory = host.root / "graph" / v1_id
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_zero_content_is_sparse_on_disk(tmp_path: Path) -> None:
    host = _build(tmp_path, "stress", "overlay")
    data = host.payload_root(host.ids["stress-large"]) / "data"

    assert (data / "zeros.bin").stat().st_size == SMALL.size
    assert (data / "zeros.bin").stat().st_blocks == 0
    assert 0 < (data / "mixed.bin").stat().st_blocks * 512 < SMALL.size  # type: ignore[operator]


def test_sample_host_is_small(tmp_path: Path) -> None:
    host = _build(tmp_path, "sample", "vfs")
    used = sum(path.lstat().st_blocks * 512 for path in host.root.rglob("*"))

    assert used < 8 << 20


# --- json shapes, against moby v1.10.3 migrate/v1/migratev1_test.go --------------------------

_A_CMD = "#(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c65fb853ee171c5 in /"
_CONTAINER_A = "23304fc829f9b9349416f6eb1afec162907eba3a328f51d53a17f8986f865d65"
_CONTAINER_B = "349b014153779e30093d94f6df2a43c7a0a164e05aa207389917b540add39b51"
_ID_A = "d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498"
_ID_B = "17583c7dd0dae6244203b8029733bdb7d17fccbb2b5d93e2b24cf48b8bfd06e2"

IMAGE_A = ImageSpec("a", created="2015-10-31T22:22:54.690851953Z", step=_A_CMD)
IMAGE_B = ImageSpec(
    "b",
    created="2015-10-31T22:22:55.613815829Z",
    step='#(nop) CMD ["sh"]',
    config=RunConfig(cmd=("sh",)),
)
IDENT_A = Identity(_ID_A, None, _CONTAINER_A, "23304fc829f9", "1.8.2", 1108935)
IDENT_B = Identity(_ID_B, _ID_A, _CONTAINER_B, "23304fc829f9", "1.8.2", 0)

# Literal inputs of TestMigrateImages: "busybox from 1.9" (v2 pulls of a 1.8.2 build) ...
V2PULL_A = (
    '{"architecture":"amd64","config":{"Hostname":"23304fc829f9","Domainname":"","User":"",'
    '"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    '"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"",'
    '"Entrypoint":null,"OnBuild":null,"Labels":null},"container":"23304fc829f9b9349416f6eb1afec1'
    '62907eba3a328f51d53a17f8986f865d65","container_config":{"Hostname":"23304fc829f9",'
    '"Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,'
    '"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":["/bin/sh","-c","#(nop) '
    'ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c65fb853ee171c5 in /"],"Image":"",'
    '"Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},'
    '"created":"2015-10-31T22:22:54.690851953Z","docker_version":"1.8.2","layer_id":"sha256:55dc9'
    '25c23d1ed82551fd018c27ac3ee731377b6bad3963a2a4e76e753d70e57","os":"linux"}'
)
V2PULL_B = (
    '{"architecture":"amd64","config":{"Hostname":"23304fc829f9","Domainname":"","User":"",'
    '"AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
    '"StdinOnce":false,"Env":null,"Cmd":["sh"],"Image":"d1592a710ac323612bd786fa8ac20727c58d8a6'
    '7847e5a65177c594f43919498","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
    '"Labels":null},"container":"349b014153779e30093d94f6df2a43c7a0a164e05aa207389917b540add39b51'
    '","container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,'
    '"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,'
    '"Env":null,"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"],"Image":"d1592a710ac323612bd786fa8'
    'ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,"WorkingDir":"","Entrypoint":null,'
    '"OnBuild":null,"Labels":null},"created":"2015-10-31T22:22:55.613815829Z","docker_version":'
    '"1.8.2","layer_id":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",'
    '"os":"linux","parent_id":"sha256:039b63dd2cbaa10d6015ea574392530571ed8d7b174090f032211285a7'
    '1881d0"}'
)
# ... and "busybox from 1.8.2" (the same images in Docker 1.8.2's registry form).
REGISTRY_A = (
    '{"id":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","created":"2015-10-3'
    '1T22:22:54.690851953Z","container":"23304fc829f9b9349416f6eb1afec162907eba3a328f51d53a17f8986'
    'f865d65","container_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin'
    '":false,"AttachStdout":false,"AttachStderr":false,"ExposedPorts":null,"PublishService":"",'
    '"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":["/bin/sh","-c","#(nop) ADD '
    'file:a3bc1e842b69636f9df5256c49c5374fb4eef1e281fe3f282c65fb853ee171c5 in /"],"Image":"",'
    '"Volumes":null,"VolumeDriver":"","WorkingDir":"","Entrypoint":null,"NetworkDisabled":false,'
    '"MacAddress":"","OnBuild":null,"Labels":null},"docker_version":"1.8.2","config":{"Hostname":'
    '"23304fc829f9","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
    '"AttachStderr":false,"ExposedPorts":null,"PublishService":"","Tty":false,"OpenStdin":false,'
    '"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"VolumeDriver":"",'
    '"WorkingDir":"","Entrypoint":null,"NetworkDisabled":false,"MacAddress":"","OnBuild":null,'
    '"Labels":null},"architecture":"amd64","os":"linux","Size":1108935}'
)
REGISTRY_B = (
    '{"id":"17583c7dd0dae6244203b8029733bdb7d17fccbb2b5d93e2b24cf48b8bfd06e2","parent":"d1592a710a'
    'c323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","created":"2015-10-31T22:22:55.613815'
    '829Z","container":"349b014153779e30093d94f6df2a43c7a0a164e05aa207389917b540add39b51","contain'
    'er_config":{"Hostname":"23304fc829f9","Domainname":"","User":"","AttachStdin":false,"AttachSt'
    'dout":false,"AttachStderr":false,"ExposedPorts":null,"PublishService":"","Tty":false,"OpenStd'
    'in":false,"StdinOnce":false,"Env":null,"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"],"Image":'
    '"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,"VolumeDriv'
    'er":"","WorkingDir":"","Entrypoint":null,"NetworkDisabled":false,"MacAddress":"","OnBuild":nu'
    'll,"Labels":null},"docker_version":"1.8.2","config":{"Hostname":"23304fc829f9","Domainname":'
    '"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"ExposedPorts":nul'
    'l,"PublishService":"","Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":["sh"]'
    ',"Image":"d1592a710ac323612bd786fa8ac20727c58d8a67847e5a65177c594f43919498","Volumes":null,"V'
    'olumeDriver":"","WorkingDir":"","Entrypoint":null,"NetworkDisabled":false,"MacAddress":"","On'
    'Build":null,"Labels":null},"architecture":"amd64","os":"linux","Size":0}'
)


def test_v2_pull_shape_matches_docker_vectors() -> None:
    digest_a = "sha256:55dc925c23d1ed82551fd018c27ac3ee731377b6bad3963a2a4e76e753d70e57"
    digest_b = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
    parent = "sha256:039b63dd2cbaa10d6015ea574392530571ed8d7b174090f032211285a71881d0"

    assert strong_config(IMAGE_A, IDENT_A, digest_a, None).decode() == V2PULL_A
    assert strong_config(IMAGE_B, IDENT_B, digest_b, parent).decode() == V2PULL_B


def test_registry_shape_matches_docker_vectors() -> None:
    assert go_json(struct_image(IMAGE_A, IDENT_A, version="1.8.2")).decode() == REGISTRY_A
    assert go_json(struct_image(IMAGE_B, IDENT_B, version="1.8.2")).decode() == REGISTRY_B


def test_go_json_escapes_like_go() -> None:
    assert (
        go_json({"k": "<a & b>\u2028\n\x01é"})
        == '{"k":"\\u003ca \\u0026 b\\u003e\\u2028\\n\\u0001é"}'.encode()
    )


def test_v2_pull_directories_are_named_by_their_json(tmp_path: Path) -> None:
    host = _build(tmp_path, "stress", "aufs")

    for name in ("v2-base", "v2-child", "reused-child"):
        v1_id = host.ids[name]
        data = (host.root / "graph" / v1_id / "json").read_bytes()
        assert hashlib.sha256(data).hexdigest() == v1_id
        assert list(json.loads(data)) == sorted(json.loads(data))
    reused = host.root / "graph" / host.ids["reused-child"] / "parent"
    assert reused.read_text() == host.ids["registry-child"]


# --- layer tars in Docker's own form ---------------------------------------------------------


def test_docker_form_tar_lists_every_name_with_gnu_tar(tmp_path: Path) -> None:
    tool = require_tool("tar", "tar")
    layer = scenario("stress").image("stress-names").layer
    tar = write_layer(layer, tmp_path / "layer.tar")
    listing = subprocess.run(
        [tool, "--list", "--quoting-style=literal", "-f", str(tar.path)],
        capture_output=True,
        check=True,
    ).stdout

    expected = set()
    for entry in layer.entries:
        expected.add(entry.name + (b"/" if entry.kind == "dir" else b""))
    listed = set(listing.split(b"\n")) - {b""}
    # GNU tar prints newlines in names as is, so that one name spans two lines.
    assert {name for name in expected if b"\n" not in name} <= listed
    assert tar.length % 512 == 0
    assert tar.path.read_bytes()[-1024:] == bytes(1024)


# --- the command line ------------------------------------------------------------------------


def test_command_builds_and_reports(tmp_path: Path) -> None:
    dest, manifest = tmp_path / "root", tmp_path / "manifest.json"
    command = [sys.executable, "-m", "fixtures", "sample", str(dest), "--driver", "vfs"]
    result = subprocess.run(
        [*command, "--manifest", str(manifest)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"built sample (vfs) in {dest} in ")
    assert "  tag web:1.0 -> " in result.stdout
    data = json.loads(manifest.read_text())
    assert len(data["images"]) == 6
    assert (dest / "repositories-vfs").exists()


def test_command_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    command = [sys.executable, "-m", "fixtures", "sample", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)

    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path} is not empty\n"


# --- manifests of damaged hosts --------------------------------------------------------------


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_hosts_keep_the_sample_sound(tmp_path: Path, name: str) -> None:
    host = _build(tmp_path, name, "aufs")
    sound = set(host.sound)
    kept = {"base", "busybox", "web-app", "web-env", "web", "tools"}

    assert {host.ids[image] for image in kept} <= sound
    assert host.damages
    for damage in host.damages:
        for v1_id in damage.removed:
            assert not (host.root / "graph" / v1_id).exists()


def test_parent_cycle_is_a_cycle(tmp_path: Path) -> None:
    host = _build(tmp_path, "parent-cycle", "aufs")
    lower, upper = host.ids["damaged"], host.ids["damaged-child"]

    assert _parent_of(host.root, lower) == upper
    assert _parent_of(host.root, upper) == lower
    assert set(host.damaged) == {lower, upper}


def test_missing_parent_is_missing(tmp_path: Path) -> None:
    host = _build(tmp_path, "missing-parent", "overlay")
    orphan = host.ids["damaged"]
    parent = _parent_of(host.root, orphan)

    assert parent == host.ids["gone"]
    assert not (host.root / "graph" / parent).exists()
    assert host.damaged == {orphan: "missing-parent"}
    assert host.affected == {orphan, host.ids["damaged-child"]}


def test_collapse_groups_name_distinct_directories(tmp_path: Path) -> None:
    host = _build(tmp_path, "collapse", "aufs")

    assert len(host.same_image) == 4
    for group in host.same_image:
        assert len(set(group)) == 2
        assert len({host.images[v1_id].diff_id for v1_id in group}) == 1
