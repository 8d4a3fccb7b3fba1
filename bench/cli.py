"""``python -m bench``: build the roots, time every case side by side, print and record the figures.

Each repeat runs every case once, in turn, so drift in the machine's load touches all cases
alike; the figure of a case is its median over the repeats. The page cache is warmed by one
untimed pass of the limit and of a run before the first repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import Machine, load_average, this_machine
from bench.measure import Sample, run_command, run_limit
from bench.roots import Root, ensure_regeneration_variant, ensure_root
from fixtures.scenarios import parse_size

HERE = Path(__file__).resolve().parent


def _default_out() -> Path:
    """The cache of built roots: outside the source tree, whose packaging walks every file."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "graph-migrate" / "bench"


MB = 1e6

# The targets: (case, the limit it is compared with, the largest ratio allowed).
RATIO_TARGETS = (
    ("run --jobs N", "limit N at a time", 1.15),
    ("run --jobs 1", "limit 1 at a time", 1.25),
    ("regenerate --jobs N", "limit N at a time", 2.0),
    ("regenerate --jobs 1", "limit 1 at a time", 2.0),
)
RSS_TARGET = 100 * 10**6


@dataclass(slots=True)
class Case:
    """One measured case: how to run it once and what its runs gave."""

    name: str
    run: Callable[[], Sample]
    samples: list[Sample] = field(default_factory=list)
    tar_bytes: int = 0

    @property
    def seconds(self) -> float:
        return statistics.median(sample.seconds for sample in self.samples)

    @property
    def peak_rss(self) -> int:
        return max(sample.peak_rss for sample in self.samples)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark as the command line asks; return the exit status."""
    args = _parser().parse_args(argv)
    if args.quick:
        args.size = args.size or parse_size("300M")
        args.huge_size = parse_size("1G") if args.huge_size is None else args.huge_size
        args.drivers = args.drivers or "aufs"
        args.results = args.results or args.out / "results-quick.md"
    args.size = args.size or parse_size("2G")
    args.huge_size = parse_size("4G") if args.huge_size is None else args.huge_size
    drivers = (args.drivers or "aufs,vfs").split(",")
    results = args.results or HERE / "results.md"
    cores = args.jobs or len(os.sched_getaffinity(0))

    machine = this_machine()
    load_before = load_average()
    sections = []
    for driver in drivers:
        root = ensure_root(args.out, "large", driver, args.size)
        cases = _root_cases(root, cores, not args.no_regeneration)
        _measure(cases, args.repeats, f"{driver} {_gb(root.tar_bytes)}")
        sections.append((driver, root, cases))
    startup = ensure_root(args.out, "sample", drivers[0], None)
    startup_cases = [
        _run_case("run --jobs 1", startup, 1, "tar-split"),
        _run_case("run --jobs N", startup, cores, "tar-split"),
    ]
    _measure(startup_cases, args.repeats, "start-up")
    memory = None
    if args.huge_size:
        huge = ensure_root(args.out, "huge-file", drivers[0], args.huge_size)
        memory = (huge, _memory_cases(huge, not args.no_regeneration))
        _measure(memory[1], 1, f"memory {_gb(huge.tar_bytes)}")
    load_after = load_average()

    loads = (load_before, load_after)
    text = _render(machine, cores, args, sections, (startup, startup_cases), memory, loads)
    print(text)
    results.write_text(text)
    print(f"written to {results}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--drivers", help="comma-separated storage drivers (default aufs,vfs)")
    parser.add_argument("--size", type=parse_size, help="size asked of the root (default 2G)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--jobs", type=int, help="N, the parallel width (default: the cores)")
    parser.add_argument(
        "--huge-size", type=parse_size, help="size of the one-file layer (default 4G; 0: skip)"
    )
    parser.add_argument("--no-regeneration", action="store_true", help="skip the no-tar-split root")
    parser.add_argument("--quick", action="store_true", help="300M, aufs only, 1G huge file")
    parser.add_argument(
        "--out",
        type=Path,
        default=_default_out(),
        help="cache of built roots (default $XDG_CACHE_HOME/graph-migrate/bench)",
    )
    parser.add_argument("--results", type=Path, help="where to write (default bench/results.md)")
    return parser


# --- cases -----------------------------------------------------------------------------------


def _root_cases(root: Root, cores: int, regeneration: bool) -> list[Case]:
    cases = [
        Case("limit 1 at a time", lambda: run_limit(root.payloads, 1), tar_bytes=root.tar_bytes),
        Case(
            "limit N at a time", lambda: run_limit(root.payloads, cores), tar_bytes=root.tar_bytes
        ),
        _run_case("run --jobs 1", root, 1, "tar-split"),
        _run_case("run --jobs N", root, cores, "tar-split"),
    ]
    if regeneration:
        variant = ensure_regeneration_variant(root)
        cases.append(_run_case("regenerate --jobs 1", variant, 1, "regenerated"))
        cases.append(_run_case("regenerate --jobs N", variant, cores, "regenerated"))
    return cases


def _memory_cases(root: Root, regeneration: bool) -> list[Case]:
    cases = [
        Case("limit 1 at a time", lambda: run_limit(root.payloads, 1), tar_bytes=root.tar_bytes),
        _run_case("run --jobs 1", root, 1, "tar-split"),
    ]
    if regeneration:
        variant = ensure_regeneration_variant(root)
        cases.append(_run_case("regenerate --jobs 1", variant, 1, "regenerated"))
    return cases


def _run_case(name: str, root: Root, jobs: int, source: str) -> Case:
    case = Case(name, lambda: Sample(0.0, 0))

    def run() -> Sample:
        sample = _graph_migrate(root, jobs)
        case.tar_bytes = _check_run(root, sample.stdout, source)
        return sample

    case.run = run
    return case


def _graph_migrate(root: Root, jobs: int) -> Sample:
    """One whole ``graph-migrate run --dry-run``, with a fresh ledger so nothing is cached."""
    script = Path(sys.executable).with_name("graph-migrate")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "migrate"]
    scratch = tempfile.mkdtemp(prefix="graph-migrate-bench.")
    try:
        argv = [
            *command,
            "run",
            "--root",
            str(root.path),
            "--driver",
            root.driver,
            "--dry-run",
            "--json",
            "-q",
            "--jobs",
            str(jobs),
            "--host-id",
            "bench",
            "--ledger",
            f"sqlite:///{scratch}/ledger.db",
        ]
        return run_command(argv, env=_child_environment(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _child_environment(scratch: str) -> dict[str, str]:
    """This environment for a measured run, with bytecode caching on, as an installed package
    has it (the warm-up run writes the cache), and temporary files in ``scratch``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "TMPDIR": scratch}


def _check_run(root: Root, stdout: bytes, source: str) -> int:
    """Refuse a run that did not hash every layer the expected way; return its tar bytes."""
    report = json.loads(stdout)
    layers = {layer["v1_id"]: layer for layer in report["layers"]}
    expected = root.diff_ids
    if set(layers) != set(expected):
        raise RuntimeError(f"{root.path}: the run reported layers {sorted(layers)}")
    for v1_id, layer in layers.items():
        if layer["source"] != source:
            raise RuntimeError(f"layer {v1_id} came from {layer['source']}, not {source}")
        if source == "tar-split" and layer["diff_id"] != expected[v1_id]:
            raise RuntimeError(f"layer {v1_id} hashed to {layer['diff_id']}, not {expected[v1_id]}")
    return int(report["totals"]["bytes_hashed"])


def _measure(cases: list[Case], repeats: int, title: str) -> None:
    print(f"warming the page cache for {title} ...", flush=True)
    cases[0].run()
    for case in cases:
        if case.name.startswith("regenerate"):
            case.run()
            break
    for index in range(repeats):
        for case in cases:
            sample = case.run()
            case.samples.append(sample)
            print(
                f"  {title} [{index + 1}/{repeats}] {case.name:<20} {sample.seconds:7.2f} s"
                f"  peak RSS {_mb(sample.peak_rss)}",
                flush=True,
            )


# --- the report ------------------------------------------------------------------------------


def _render(
    machine: Machine,
    cores: int,
    args: argparse.Namespace,
    sections: list[tuple[str, Root, list[Case]]],
    startup: tuple[Root, list[Case]],
    memory: tuple[Root, list[Case]] | None,
    load: tuple[float, float],
) -> str:
    lines = ["# graph-migrate benchmark", ""]
    lines += [f"- {line}" for line in machine.lines()]
    lines += [
        f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}",
        f"- command: `{' '.join(['python -m bench', *sys.argv[1:]])}`",
        f"- N = {cores}; median of {args.repeats} runs per case, warm page cache",
        "",
        "The limit streams every layer's payload through `tar -c | openssl dgst -sha256`,",
        "one layer at a time or N at a time, largest first. `run` is the whole `graph-migrate",
        "run --dry-run` command (start-up included, a fresh ledger each time); `regenerate` is",
        "the same on a copy of the root without tar-split data. MB/s is the layer tar bytes",
        "hashed divided by the seconds. Peak RSS is the largest process of the run (main /",
        "largest worker).",
        "",
    ]
    checks: list[str] = []
    for driver, root, cases in sections:
        lines += [f"## {driver}: {len(root.payloads)} layers, {_gb(root.tar_bytes)} of tar", ""]
        lines += _table(cases)
        checks += _checks(driver, cases)
    root, cases = startup
    lines += [
        f"## start-up: the whole command on the `sample` root ({root.tar_bytes} bytes of tar)",
        "",
        "What every run pays before and after hashing: interpreter, imports, option parsing,",
        "the ledger, the report.",
        "",
        *_table(cases),
    ]
    if memory is not None:
        root, cases = memory
        lines += [f"## memory: one layer holding a {_gb(root.tar_bytes)} file ({root.driver})", ""]
        lines += _table(cases)
        checks += [
            f"| peak RSS, {_gb(root.tar_bytes)} file, {case.name} | {_mb(case.peak_rss)} "
            f"| <= {_mb(RSS_TARGET)} | {_verdict(case.peak_rss <= RSS_TARGET)} |"
            for case in cases
            if not case.name.startswith("limit")
        ]
    lines += ["## targets", "", "| target | measured | goal | |", "|---|---|---|---|", *checks, ""]
    return "\n".join(lines)


def _table(cases: list[Case]) -> list[str]:
    by_name = {case.name: case for case in cases}
    rows = [
        "| case | seconds (median) | min - max | MB/s | x limit | peak RSS (main / worker) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        times = [sample.seconds for sample in case.samples]
        limit = None if case.name.startswith("limit") else by_name.get(_limit_of(case.name))
        ratio = f"{case.seconds / limit.seconds:.2f}" if limit else ""
        rss = ""
        if not case.name.startswith("limit"):
            main = max(sample.main_rss for sample in case.samples)
            worker = max(sample.worker_rss for sample in case.samples)
            rss = f"{_mb(case.peak_rss)} ({_mb(main)} / {_mb(worker) if worker else '-'})"
        rows.append(
            f"| {case.name} | {case.seconds:.2f} | {min(times):.2f} - {max(times):.2f} "
            f"| {_rate(case)} | {ratio} | {rss} |"
        )
    return [*rows, ""]


def _checks(driver: str, cases: list[Case]) -> list[str]:
    by_name = {case.name: case for case in cases}
    rows = []
    for name, limit_name, goal in RATIO_TARGETS:
        if name in by_name:
            ratio = by_name[name].seconds / by_name[limit_name].seconds
            rows.append(
                f"| {driver}: {name} vs {limit_name} | {ratio:.2f}x | <= {goal}x "
                f"| {_verdict(ratio <= goal)} |"
            )
    peak = max(case.peak_rss for case in cases if not case.name.startswith("limit"))
    rows.append(
        f"| {driver}: peak RSS of any process | {_mb(peak)} | <= {_mb(RSS_TARGET)} "
        f"| {_verdict(peak <= RSS_TARGET)} |"
    )
    return rows


def _rate(case: Case) -> str:
    """MB/s of layer tar, or "-" where the tar is too small for the figure to mean anything."""
    return f"{case.tar_bytes / MB / case.seconds:.0f}" if case.tar_bytes >= 100 * MB else "-"


def _limit_of(name: str) -> str:
    return "limit 1 at a time" if name.endswith("--jobs 1") else "limit N at a time"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _mb(count: int) -> str:
    return f"{count / MB:.0f} MB"


def _gb(count: int) -> str:
    return f"{count / 1e9:.2f} GB"
