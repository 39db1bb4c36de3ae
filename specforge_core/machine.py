"""What a timing depends on, and how busy the machine is.

* ``machine_key(device)``: the facts that change a measured time (CPU model or GPU name, thread
  count, torch version). Every timing-based decision that is remembered (the verify-cost curve,
  the few-row matmul layout) is keyed by it, so a different machine or thread count re-measures.
* ``choose_threads(requested)``: the CPU thread count for decoding. Measured on 2 cores
  (scripts/threads_check.sh, SmolLM2): quiet, 2 threads decode 1.6x faster than 1; with one other
  CPU-bound process, 2 threads are 2.4x slower than 1 (issue 13 saw 17x on the smoke bench) - torch's
  OpenMP threads wait for a core another process holds. So ``auto`` uses the cores no other process
  is running on (at least 1).
* ``load_average()`` / ``looks_busy``: for the bench's "the machine looked busy" line.
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from typing import Optional

import torch


@lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_key(device: torch.device) -> dict:
    """What a measured time on ``device`` depends on (besides the model and dtype)."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_model()} x{usable_cores()}, {torch.get_num_threads()} threads"
    return {"device": device.type, "hardware": where, "torch": torch.__version__}


def _runnable_others(samples: int = 10, interval_s: float = 0.01) -> int:
    """Median count of *other* runnable tasks (``/proc/loadavg`` field 4 counts this process's
    running thread too). Instantaneous, unlike the 1-minute load average, which still carries
    our own previous run."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
        time.sleep(interval_s)
    counts.sort()
    return max(0, counts[len(counts) // 2])


def choose_threads(requested: Optional[int]) -> "tuple[int, str]":
    """(threads, why) for CPU decoding: ``requested`` if given, else the cores not busy."""
    cores = usable_cores()
    if requested is not None:
        return int(requested), "set in the recipe"
    others = _runnable_others()
    n = max(1, cores - others)
    return n, f"auto: {cores} cores, {others} other busy process{'es' if others != 1 else ''}"


def apply_threads(requested: Optional[int], device: torch.device) -> str:
    """Set torch's intra-op threads for a CPU run; returns the line to print."""
    if device.type != "cpu":
        return ""
    n, why = choose_threads(requested)
    torch.set_num_threads(n)
    return f"threads: {n} ({why})"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def looks_busy(load: float, threads_in_use: int) -> bool:
    """The 1-minute load average is above what this process itself puts on the cores."""
    return load > threads_in_use + 0.75
