"""Timing commands and their peak memory: the limit pipelines and graph-migrate itself.

Peak RSS comes from two places. ``os.wait4`` gives the exact peak of the child and of every
descendant it waited for (Linux reports the larger of the two), so it bounds every process of a
run. A sampler reading ``VmHWM`` in ``/proc`` while the run lasts splits that figure into the main
process and its worker processes; a worker that ends between two samples may show a little less
than its true peak there, never more.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.roots import Payload

_SAMPLE_EVERY = 0.02


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: wall seconds and peak RSS in bytes."""

    seconds: float
    peak_rss: int  # the largest of all processes of the run (exact)
    main_rss: int = 0  # the main process (sampled)
    worker_rss: int = 0  # the largest worker process (sampled); 0 without workers
    stdout: bytes = b""


def run_command(argv: Sequence[str], env: dict[str, str] | None = None) -> Sample:
    """Run ``argv`` to its end; its wall time (start-up included) and peak memory.

    Raises:
        RuntimeError: the command exited with a status above 1 (1 means skipped images).
    """
    sampler = _Sampler()
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True
    )
    sampler.start(process.pid)
    # Reading both pipes on threads keeps a chatty child from blocking on a full pipe.
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=_drain, args=(process.stdout, out)),
        threading.Thread(target=_drain, args=(process.stderr, err)),
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    for reader in readers:
        reader.join()
    if process.returncode not in (0, 1):
        shown = b"".join(err).decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[0]} exited {process.returncode}: {' | '.join(shown)}")
    main, worker = sampler.peaks()
    return Sample(seconds, usage.ru_maxrss * 1024, main, worker, b"".join(out))


def run_limit(payloads: Sequence[Payload], at_once: int) -> Sample:
    """Stream every payload through ``tar -c | openssl dgst -sha256``, ``at_once`` at a time.

    Payloads start in the order given (largest first), a new one as soon as one ends.
    """
    pending = list(payloads)
    running: list[subprocess.Popen[bytes]] = []
    started = time.perf_counter()
    peak = 0
    while pending or running:
        while pending and len(running) < at_once:
            running.append(_pipeline(pending.pop(0)))
        pid, status, usage = os.wait4(-1, 0)
        peak = max(peak, usage.ru_maxrss * 1024)
        for process in running:
            if process.pid == pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                _check_digest(process)
                running.remove(process)
                break
    return Sample(time.perf_counter() - started, peak)


def _pipeline(payload: Payload) -> subprocess.Popen[bytes]:
    tar = f"tar -c -f - -C '{payload.directory}' ."
    if payload.names is not None:
        tar = f"tar -c -f - -C '{payload.directory}' --no-recursion --null -T '{payload.names}'"
    return subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", f"{tar} | openssl dgst -sha256"],
        stdout=subprocess.PIPE,
    )


def _check_digest(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    output = process.stdout.read()
    process.stdout.close()
    if process.returncode != 0 or b"= " not in output:
        raise RuntimeError(f"tar | openssl failed ({process.returncode}): {output!r}")


def _drain(stream: object, into: list[bytes]) -> None:
    read = stream.read  # type: ignore[attr-defined]
    while chunk := read(1 << 16):
        into.append(chunk)


class _Sampler:
    """Polls VmHWM of a process and its descendants while it runs."""

    def __init__(self) -> None:
        self._main = 0
        self._workers: dict[int, int] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def peaks(self) -> tuple[int, int]:
        return self._main, max(self._workers.values(), default=0)

    def _run(self, pid: int) -> None:
        while not self._done.is_set():
            self._main = max(self._main, _hwm(pid))
            for child in _descendants(pid):
                self._workers[child] = max(self._workers.get(child, 0), _hwm(child))
            self._done.wait(_SAMPLE_EVERY)


def _hwm(pid: int) -> int:
    """The peak resident set of ``pid`` in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children", "rb") as children:
                kids = [int(word) for word in children.read().split()]
        except (OSError, ValueError):
            continue
        found += kids
        todo += kids
    return found
