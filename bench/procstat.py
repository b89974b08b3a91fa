"""CPU time and peak memory of processes (and their process groups) from /proc."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, state, is [0]); None
    when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def group_pids(pgid: int) -> list[int]:
    """Every live pid whose process group is `pgid` (Triton and its python-backend stubs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of one process, seconds; with `reaped_children`, plus those of its children
    that ended and were reaped (cutime + cstime)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return sum(int(f) for f in fields[11:15 if reaped_children else 13]) / _TICK


def page_faults(pid: int) -> dict[str, int]:
    """Page faults of one process so far: `minor` (the page was in memory, only unmapped here)
    and `major` (it had to be read from disk: a file page the kernel had dropped)."""
    fields = _stat_fields(pid)
    if fields is None:
        return {"minor": 0, "major": 0}
    return {"minor": int(fields[7]), "major": int(fields[9])}


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of one process, MiB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """VmRSS (resident set now) of one process, MiB."""
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int, field: str) -> float:
    """A kB field of /proc/<pid>/status in MiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Watched:
    """A named process (or whole process group) whose CPU and memory a run reports."""

    name: str
    pid: int
    group: bool = False

    def pids(self) -> list[int]:
        return group_pids(self.pid) if self.group else [self.pid]

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def peak_mb(self) -> float:
        return sum(peak_rss_mb(p) for p in self.pids())


class CpuMeter:
    """CPU cores used by each watched process between start() and stop()."""

    def __init__(self, watched: list[Watched]) -> None:
        self.watched = watched
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {w.name: w.cpu() for w in self.watched}

    def stop(self, wall_s: float) -> dict[str, dict[str, float]]:
        return {
            w.name: {
                "cpu_cores": round((w.cpu() - self._start.get(w.name, 0.0)) / max(wall_s, 1e-9), 3),
                "peak_rss_mb": round(w.peak_mb(), 1),
            }
            for w in self.watched
        }


def _children(pid: int) -> list[int]:
    """`pid`'s child processes, from the kernel's /proc/PID/task/TID/children lists."""
    out = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the thread or process ended meanwhile
            out += [int(child) for child in children.read_text().split()]
    return out


class ProcessTree(Watched):
    """A process and all its descendants. PostgreSQL's backends each lead a process group of
    their own (the postmaster's children call setsid), so `group=True` would see the postmaster
    alone. The CPU of descendants that ended in a run (a backend closed, an autovacuum worker)
    stays counted: their parent's cutime/cstime take it over once it reaps them."""

    def pids(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += _children(pid)
        return out

    def cpu(self) -> float:
        return sum(cpu_seconds(pid, reaped_children=True) for pid in self.pids())
