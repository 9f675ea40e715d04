"""CPU threads for one echochamber process, chosen so that concurrent jobs share the cores instead of fighting.

PyTorch runs its CPU kernels on an OpenMP thread pool with one thread per core. Between two parallel regions
GNU OpenMP keeps those threads spinning (busy-waiting) for a while, so that the next region starts without a
wake-up: a good bet when the process owns the machine, a bad one when two such processes share it. Each then
burns its time slices spinning while the other's threads wait for a core, and on 2 cores two training jobs
slowed each other 3.5-6.7x (bench/concurrent_jobs.py; bench/README.md, "Two jobs at once"). So the CLI, at process
start, before anything imports torch (the OpenMP runtime reads its settings once, when it loads), sets

    threads = cores // ECHOCHAMBER_JOBS          (ECHOCHAMBER_JOBS: jobs expected at once, default 1)
    OMP_NUM_THREADS = threads                    (unless already set: torchrun, or the user)
    OMP_WAIT_POLICY = PASSIVE when ECHOCHAMBER_JOBS >= 2 (idle threads sleep instead of spinning; unless set)

    ECHOCHAMBER_JOBS=2 echochamber pretrain ... & ECHOCHAMBER_JOBS=2 echochamber rl ...   # each gets half
    ECHOCHAMBER_THREADS=3 echochamber eval ...                                            # or say it exactly

PASSIVE is not the default for one job: measured on 2 cores it costs a job alone 15% in pretraining and 35% in
an RL step (generation, many small kernels, 67%), while it turns two jobs from 3.5-6.7x slower each into
1.5-1.6x. So tell the CLI when jobs will share the machine (ECHOCHAMBER_JOBS=2); alone, OpenMP keeps its own
default (spin a while, then sleep), which also leaves the sandbox's workers their cores while it grades.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping


def _positive_int(environ: MutableMapping[str, str], key: str) -> int | None:
    raw = environ.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {key}={raw!r}: expected a positive integer")
    return value


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_settings(environ: MutableMapping[str, str], n_cores: int) -> dict[str, str]:
    """The OpenMP settings for this process: OMP_NUM_THREADS from ECHOCHAMBER_THREADS or
    cores // ECHOCHAMBER_JOBS, and OMP_WAIT_POLICY=PASSIVE when ECHOCHAMBER_JOBS >= 2; settings already in
    `environ` are kept as they are."""
    jobs = _positive_int(environ, "ECHOCHAMBER_JOBS") or 1
    threads = _positive_int(environ, "ECHOCHAMBER_THREADS") or max(1, n_cores // jobs)
    settings = {"OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS") or str(threads)}
    if environ.get("OMP_WAIT_POLICY") or jobs >= 2:
        settings["OMP_WAIT_POLICY"] = environ.get("OMP_WAIT_POLICY") or "PASSIVE"
    return settings


def configure(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Apply `thread_settings` to this process; call first thing, before torch is imported. If torch is
    already loaded (the CLI called from Python), its thread count is still set; the wait policy cannot be."""
    settings = thread_settings(environ, cores())
    environ.update(settings)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(settings["OMP_NUM_THREADS"]))
    return settings
