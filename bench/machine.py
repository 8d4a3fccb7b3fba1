"""What the benchmark ran on: the facts results.md records beside the figures."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Machine:
    """The machine and the moment of a benchmark run."""

    cores: int
    cpu: str
    memory: str
    kernel: str
    python: str
    date: str

    def lines(self) -> list[str]:
        """One ``name: value`` line per fact."""
        return [
            f"cores (nproc): {self.cores}",
            f"CPU: {self.cpu}",
            f"memory: {self.memory}",
            f"kernel: {self.kernel}",
            f"Python: {self.python}",
            f"date: {self.date}",
        ]


def this_machine() -> Machine:
    """The facts of the machine this process runs on."""
    return Machine(
        cores=len(os.sched_getaffinity(0)),
        cpu=_proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        memory=_memory(),
        kernel=platform.release(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def load_average() -> float:
    """The one-minute load average: how busy the machine was with other work."""
    return os.getloadavg()[0]


def _memory() -> str:
    total = _proc_field("/proc/meminfo", "MemTotal")
    if not total:
        return "unknown"
    return f"{int(total.split()[0]) / (1 << 20):.1f} GiB"


def _proc_field(path: str, name: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""
