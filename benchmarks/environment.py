"""What a benchmark page says about where it ran: the CPU, the versions, the commit."""

from __future__ import annotations

import multiprocessing
import os
import platform
import subprocess
from pathlib import Path

import pyro
import torch

__all__ = ["environment_lines"]


def environment_lines() -> list[str]:
    """Markdown bullets: the CPU, the versions, the commit, and the load while writing."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        f"- CPU: {cpu}, {multiprocessing.cpu_count()} cores visible (shared with other jobs)",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, {platform.platform()}",
        f"- pyro-realnvp commit {commit}",
        f"- load average while writing: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        " (other processes share the machine)",
    ]
