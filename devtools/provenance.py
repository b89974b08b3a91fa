"""Where a result came from: the machine and the git revision, written into every results file."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from interest_core.config import ROOT


def machine() -> str:
    """CPU model, cores, RAM and OS of this machine, e.g. 'AMD EPYC ..., 2 cores, 24 GiB RAM, no GPU'."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, no GPU, {platform.platform()}"


def revision() -> str:
    """Short git revision of the checkout, with '-dirty' when tracked files are modified."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
