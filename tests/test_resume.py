"""Interrupting the real ``graph-migrate run`` with SIGKILL, then resuming it.

Every test kills the real process (crash points from ``migrate.faults``, or ``kill -9`` from
outside), checks what a crash leaves visible, runs the same command again and compares the whole
root with an uninterrupted run on an identical fresh build of the host: every path, its type, its
bytes and its mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fixtures import scenario
from fixtures.model import HostSpec, ImageSpec, LayerSpec, big, directory
from migrate.ledger import Ledger
from tests.trees import build, command, differences, graph_migrate, run_args, store_snapshot

# The sample host plus a layer whose CRC no longer matches, so it is regenerated: layers, a
# regenerated tar-split, distribution metadata, tags, a container and both markers.
SCENARIO = "crc-mismatch"
TEMPORARY = re.compile(r"\A\..+\.[a-z0-9_]{8}\.tmp\Z")
LOCK = ".graph-migrate.lock"


@dataclass(frozen=True, slots=True)
class Reference:
    """An uninterrupted run: its store, its exit status and how often it reached each step."""

    store: dict[str, tuple[int, str, int]]
    returncode: int
    arrivals: Counter[str]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    base = tmp_path_factory.mktemp("reference")
    build(base / "root", SCENARIO)
    trace = base / "trace"
    done = graph_migrate(
        *run_args(base / "root", base / "ledger.db"),
        env={"GRAPH_MIGRATE_CRASH_TRACE": str(trace)},
    )
    assert done.returncode == 0, done.stderr
    return Reference(store_snapshot(base / "root"), 0, Counter(trace.read_text().split()))


def assert_nothing_partial(root: Path, reference: dict[str, tuple[int, str, int]]) -> None:
    """Every file under a final name holds the bytes and mode it has after a whole run.

    Exceptions: temporaries (their names say so and Docker ignores them), the staging area
    ``layerdb/tmp`` (Docker's own scratch directory), and the distribution files that gain one
    entry per image, which must then still be complete JSON.
    """
    wrong = []
    for path, entry in store_snapshot(root).items():
        name = os.path.basename(path)
        if TEMPORARY.match(name) or "/layerdb/tmp/" in path or path == LOCK:
            continue
        if reference.get(path) == entry:
            continue
        if "/v2metadata-by-diffid/" in path and reference.get(path, entry)[0] == entry[0]:
            json.loads((root / path).read_bytes())
            continue
        wrong.append(f"{path}: {'differs' if path in reference else 'not in a whole run'}")
    assert wrong == []


def assert_ledger_lags_store(root: Path, ledger: Path) -> None:
    """Every unit the ledger calls done has its files in place: the ledger never leads."""
    book = Ledger(f"sqlite:///{ledger}")
    try:
        base = root / "image" / "aufs"
        for v1_id, (state, chain) in book.layers(str(root)).items():
            if state == "registered":
                assert chain is not None
                assert (
                    base / "layerdb/sha256" / chain.removeprefix("sha256:") / "diff"
                ).exists(), v1_id
        for v1_id, (image_id, state, _) in book.images(str(root)).items():
            if state == "migrated":
                assert image_id is not None
                config = base / "imagedb/content/sha256" / image_id.removeprefix("sha256:")
                assert hashlib.sha256(config.read_bytes()).hexdigest() == config.name, v1_id
    finally:
        book.close()


def _arrival(count: int, which: str) -> int:
    return {"first": 1, "middle": max(1, count // 2), "last": count}[which]


CRASH_POINTS = [
    # during hashing: after a layer file's bytes went through the digest
    ("layer-file-hashed", "first"),
    ("layer-file-hashed", "last"),
    # a regenerated tar-split written and synced, not yet renamed into place
    ("layer-regenerated", "first"),
    # a layer hashed but not recorded; recorded, but nothing of it written yet
    ("layer-hashed", "last"),
    ("layer-recorded", "first"),
    # between file writes: a temporary complete but not renamed, or renamed but not synced
    ("before-rename", "first"),
    ("before-rename", "middle"),
    ("before-rename", "last"),
    ("after-rename", "middle"),
    # a layer directory renamed into place, not yet recorded as registered
    ("layer-registered", "last"),
    # inside a ledger transaction, just before its commit
    ("ledger-commit", "first"),
    ("ledger-commit", "middle"),
    ("ledger-commit", "last"),
]


@pytest.mark.parametrize(("step", "which"), CRASH_POINTS, ids=[f"{s}-{w}" for s, w in CRASH_POINTS])
def test_a_run_killed_at_a_crash_point_resumes_to_the_bytes_of_an_uninterrupted_run(
    tmp_path: Path, reference: Reference, step: str, which: str
) -> None:
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    build(root, SCENARIO)
    arrival = _arrival(reference.arrivals[step], which)
    assert arrival >= 1, f"an uninterrupted run never reaches {step}"

    killed = graph_migrate(
        *run_args(root, ledger), env={"GRAPH_MIGRATE_CRASH_AT": f"{step}:{arrival}"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_nothing_partial(root, reference.store)
    assert_ledger_lags_store(root, ledger)

    resumed = graph_migrate(*run_args(root, ledger))
    assert resumed.returncode == reference.returncode, resumed.stderr
    assert differences(store_snapshot(root), reference.store) == []
    book = Ledger(f"sqlite:///{ledger}")
    outcomes = [run.outcome for run in book.runs(str(root))]
    book.close()
    assert outcomes[-1] == "ok"
    assert set(outcomes[:-1]) <= {"interrupted"}


def test_a_resumed_run_does_not_hash_again_what_the_killed_run_recorded(
    tmp_path: Path, reference: Reference
) -> None:
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    build(root, SCENARIO)
    killed = graph_migrate(
        *run_args(root, ledger), env={"GRAPH_MIGRATE_CRASH_AT": "image-created:1"}
    )
    assert killed.returncode == -signal.SIGKILL

    resumed = graph_migrate(*run_args(root, ledger, "--json"))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json()["totals"]["bytes_hashed"] == 0
    assert differences(store_snapshot(root), reference.store) == []


# --- kill -9 from outside, at timed moments, on a larger host hashed in parallel -------------


def larger_host() -> HostSpec:
    """The crc-mismatch host with a chain of four 24 MiB layers on top: a second of hashing."""
    base = scenario(SCENARIO)
    images: list[ImageSpec] = []
    parent = "tools"
    for index in range(4):
        layer = LayerSpec(
            entries=(directory("data"), big(f"data/{index}.bin", 24 << 20, f"larger {index}"))
        )
        created = f"2016-02-0{index + 1}T00:00:00Z"
        images.append(ImageSpec(f"big-{index}", layer, parent=parent, created=created, step="add"))
        parent = images[-1].name
    return replace(base, name="larger", images=(*base.images, *images))


@pytest.fixture(scope="module")
def larger_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Reference, float]:
    """An uninterrupted parallel run of the larger host, and how long it held the lock."""
    base = tmp_path_factory.mktemp("larger")
    root = base / "root"
    build(root, spec=larger_host())
    process = subprocess.Popen(command(*run_args(root, base / "ledger.db", jobs=2)))
    started = _wait_for_lock(root, process)
    assert started is not None
    assert process.wait(120) == 0
    return Reference(store_snapshot(root), 0, Counter()), time.monotonic() - started


def _wait_for_lock(root: Path, process: subprocess.Popen[bytes]) -> float | None:
    """The moment ``process`` holds the root's lock; None when it ended first."""
    while process.poll() is None:
        try:
            if (root / LOCK).read_text().startswith(f"pid {process.pid} "):
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def _wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists()]
    return alive


def _configs(root: Path) -> int:
    content = root / "image/aufs/imagedb/content/sha256"
    return len(os.listdir(content)) if content.is_dir() else 0


# When to kill: each waits for a sign of progress, then for a share of a whole run's duration.
KILL_MOMENTS = (
    ("hashing in parallel", lambda root, pid: len(_children(pid)) == 2, 0.0),
    ("just after taking the lock", lambda root, pid: True, 0.0),
    ("at a timed moment", lambda root, pid: True, 0.4),
    ("while creating images", lambda root, pid: _configs(root) >= 3, 0.0),
)


def test_kill_9_at_timed_moments_of_a_parallel_run_then_resume_gives_the_same_bytes(
    tmp_path: Path, larger_reference: tuple[Reference, float]
) -> None:
    reference, duration = larger_reference
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    build(root, spec=larger_host())
    killed = []
    for moment, ready, share in KILL_MOMENTS:
        process = subprocess.Popen(
            command(*run_args(root, ledger, "-q", jobs=2)), stderr=subprocess.DEVNULL
        )
        assert _wait_for_lock(root, process) is not None, moment
        while process.poll() is None and not ready(root, process.pid):
            time.sleep(0.002)
        time.sleep(share * duration)
        workers = _children(process.pid)
        process.send_signal(signal.SIGKILL)
        if process.wait(30) == -signal.SIGKILL:
            killed.append((moment, len(workers)))
        assert _wait_gone(workers) == [], f"hashing workers outlived the run killed {moment}"
        assert_nothing_partial(root, reference.store)
        assert_ledger_lags_store(root, ledger)
    # The first kill must have hit the parallel hashing for this test to prove anything.
    assert killed[0][0] == "hashing in parallel"
    assert killed[0][1] == 2
    assert len(killed) >= 3

    resumed = graph_migrate(*run_args(root, ledger, jobs=2))
    assert resumed.returncode == reference.returncode, resumed.stderr
    assert differences(store_snapshot(root), reference.store) == []


def test_a_second_run_exits_2_naming_the_holder_and_a_killed_holders_lock_is_taken_over(
    tmp_path: Path, larger_reference: tuple[Reference, float]
) -> None:
    reference, _ = larger_reference
    root, ledger = tmp_path / "root", tmp_path / "ledger.db"
    build(root, spec=larger_host())
    holder = subprocess.Popen(command(*run_args(root, ledger, "-q")), stderr=subprocess.DEVNULL)
    assert _wait_for_lock(root, holder) is not None
    holder.send_signal(signal.SIGSTOP)  # keep it holding the lock, mid-run

    try:
        second = graph_migrate(*run_args(root, ledger))
    finally:
        holder.send_signal(signal.SIGKILL)
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"graph-migrate: {root}/{LOCK} is held by another graph-migrate run "
        f"(pid {holder.pid} on {socket.gethostname()})"
    ]
    assert holder.wait(30) == -signal.SIGKILL

    # The killed holder's lock file is still there, naming it; the kernel released the lock.
    assert (root / LOCK).read_text() == f"pid {holder.pid} on {socket.gethostname()}\n"
    taken_over = graph_migrate(*run_args(root, ledger))
    assert taken_over.returncode == reference.returncode, taken_over.stderr
    assert not (root / LOCK).exists()
    assert differences(store_snapshot(root), reference.store) == []


def test_images_added_to_the_legacy_root_after_a_run_are_picked_up_by_the_next(
    tmp_path: Path, reference: Reference
) -> None:
    root, ledger, aside = tmp_path / "root", tmp_path / "ledger.db", tmp_path / "aside"
    host = build(root, SCENARIO)
    aside.mkdir()
    later = [host.ids["damaged"], host.ids["damaged-child"]]
    for v1_id in later:
        (root / "graph" / v1_id).rename(aside / v1_id)

    first = graph_migrate(*run_args(root, ledger, "--json"))
    assert first.returncode == 0, first.stderr
    assert first.json()["totals"]["migrated"] == 6
    assert [t["name"] for t in first.json()["dropped_tags"]] == ["damaged"]

    for v1_id in later:
        (aside / v1_id).rename(root / "graph" / v1_id)
    second = graph_migrate(*run_args(root, ledger, "--json"))
    assert second.returncode == 0, second.stderr
    assert second.json()["totals"]["migrated"] == 8
    assert differences(store_snapshot(root), reference.store) == []
