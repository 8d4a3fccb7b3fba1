"""The ``graph-migrate`` process as a user meets it: progress bars, log levels, quiet, status."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from tests.trees import build, graph_migrate, run_args

MIGRATED_LINE = re.compile(r"graph-migrate: migrated image [0-9a-f]{64} to sha256:[0-9a-f]{64}")
BAR = re.compile(r"(hashing|images): +\d+%\|")


def _segments(stderr: str) -> list[str]:
    """What is left visible of each line once carriage returns and cursor-up moves redraw it."""
    return [re.split(r"\r|\x1b\[A", line)[-1] for line in stderr.split("\n")]


def test_progress_draws_both_bars_on_stderr_and_log_lines_stay_whole(tmp_path: Path) -> None:
    build(tmp_path / "root", "sample")
    done = graph_migrate(*run_args(tmp_path / "root", tmp_path / "l.db", "--progress", "-v"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert re.search(r"hashing: 100%\|[^|]*\| 533k/533k \[[^]]*B/s\]", done.stderr)
    assert re.search(r"images: 100%\|[^|]*\| 6/6 \[", done.stderr)
    logged = [s for s in _segments(done.stderr) if "migrated image" in s]
    assert len(logged) == 6
    assert all(MIGRATED_LINE.fullmatch(line) for line in logged), logged


def test_without_a_terminal_or_progress_there_are_no_bars_only_the_summary(tmp_path: Path) -> None:
    build(tmp_path / "root", "sample")
    done = graph_migrate(*run_args(tmp_path / "root", tmp_path / "l.db"))
    assert done.returncode == 0
    assert not BAR.search(done.stderr)
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 7  # six images and the totals
    assert lines[-1].startswith("migrated 6 of 6 images, 6 layers (0 regenerated, ")


def test_quiet_silences_the_summary_and_bars_but_not_the_json(tmp_path: Path) -> None:
    build(tmp_path / "root", "sample")
    args = run_args(tmp_path / "root", tmp_path / "l.db", "-q", "--progress", "--json")
    done = graph_migrate(*args)
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.json()["totals"]["migrated"] == 6


def test_status_shows_the_killed_run_as_interrupted_and_the_images_that_remain(
    tmp_path: Path,
) -> None:
    root, ledger = tmp_path / "root", tmp_path / "l.db"
    host = build(root, "sample")
    killed = graph_migrate(
        *run_args(root, ledger), env={"GRAPH_MIGRATE_CRASH_AT": "image-created:3"}
    )
    assert killed.returncode == -signal.SIGKILL

    status = graph_migrate(
        "status", "--root", str(root), "--ledger", f"sqlite:///{ledger}", "--json"
    )
    assert status.returncode == 0, status.stderr
    document = status.json()
    assert [(run["mode"], run["outcome"]) for run in document["runs"]] == [("run", "interrupted")]
    # Two images were created and recorded before the kill; the third was created, not recorded.
    assert (document["legacy_images"], document["migrated"]) == (6, 2)
    assert len(document["remaining"]) == 4
    assert set(document["remaining"]) < set(host.images)

    assert graph_migrate(*run_args(root, ledger)).returncode == 0
    text = graph_migrate("status", "--root", str(root), "--ledger", f"sqlite:///{ledger}")
    lines = text.stdout.splitlines()
    assert re.fullmatch(
        r"run 1 run +\S+ interrupted +migrated 0 skipped 0 hashed 0\.0 MB", lines[0]
    )
    assert re.fullmatch(r"run 2 run +\S+ ok +migrated 6 skipped 0 hashed \d+\.\d MB", lines[1])
    assert lines[2] == f"{root} (aufs): 6 of 6 legacy images migrated, 0 remaining"
    assert (
        json.loads(
            graph_migrate(
                "status", "--root", str(root), "--ledger", f"sqlite:///{ledger}", "--json"
            ).stdout
        )["remaining"]
        == []
    )
