"""CPU threads for one echochamber process, chosen so that concurrent jobs share the cores instead of fighting.

PyTorch runs its CPU kernels on an OpenMP thread pool with one thread per core. Between two parallel regions
GNU OpenMP keeps those threads spinning (busy-waiting) for a while, so that the next region starts without a
wake-up: a good bet when the process owns the machine, a bad one when two such processes share it. Each then
burns its time slices spinning while the other's threads wait for a core, and on 2 cores two training jobs
slowed each other 3.5-6.7x (bench/concurrent_jobs.py; bench/README.md, "Two jobs at once"). So the CLI splits
the cores between its jobs: by itself (below, "Jobs nobody announced"), or, when told, at process start, before
anything imports torch (the OpenMP runtime reads its settings once, when it loads), it sets

    threads = cores // ECHOCHAMBER_JOBS          (ECHOCHAMBER_JOBS: jobs expected at once, default 1)
    OMP_NUM_THREADS = threads                    (unless already set: torchrun, or the user)
    OMP_WAIT_POLICY = PASSIVE when ECHOCHAMBER_JOBS >= 2 (idle threads sleep instead of spinning; unless set)

    ECHOCHAMBER_JOBS=2 echochamber pretrain ... & ECHOCHAMBER_JOBS=2 echochamber rl ...   # each gets half
    ECHOCHAMBER_THREADS=3 echochamber eval ...                                            # or say it exactly

PASSIVE is not the default for one job: measured on 2 cores it costs a job alone 15% in pretraining and 35% in
an RL step (generation, many small kernels, 67%), while it turns two jobs from 3.5-6.7x slower each into
1.5-1.6x. Alone, OpenMP keeps its own default (spin a while, then sleep), which also leaves the sandbox's
workers their cores while it grades.

Jobs nobody announced. When none of ECHOCHAMBER_JOBS, ECHOCHAMBER_THREADS and OMP_NUM_THREADS is set, the CLI
finds the other jobs itself: each echochamber process holds an exclusive flock on its own file in
`jobs_dir()` for as long as it lives (the kernel drops the lock however the process ends, so a killed job
stops counting), and at safe points (every pretraining and RL step, every few decoded tokens; at most every
REBALANCE_S seconds) `rebalance()` gives the job

    threads = cores // (echochamber jobs holding a file now)

through torch.set_num_threads. The wait policy cannot change after OpenMP loads, but it no longer matters:
two jobs on 2 cores each run one thread, so no team is left to spin. A job that started alone drops to one
thread within REBALANCE_S of the second one starting, and takes both cores back when it ends. A run whose config
sets its threads (pretrain.threads, rl.threads) keeps that count throughout (`pin_threads`).

None of this changes a run's numbers: the same run at 1 thread, at 2, and with a second job starting in its middle
gives identical weights (tests/test_threads.py).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path

REBALANCE_S = 2.0  # how often a running job looks for others (a directory listing and a flock per job)
_EXPLICIT = ("ECHOCHAMBER_JOBS", "ECHOCHAMBER_THREADS", "OMP_NUM_THREADS")  # any of these: no automatic split


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
    """Call first thing, before torch is imported. With ECHOCHAMBER_JOBS, ECHOCHAMBER_THREADS or OMP_NUM_THREADS
    set, apply `thread_settings` (if torch is already loaded, the CLI called from Python, its thread count is
    still set; the wait policy cannot be); otherwise join the jobs registry, and `rebalance()` splits the cores
    once torch is loaded. Returns the environment settings made ({} in automatic mode)."""
    global _registry
    if not any(environ.get(k) for k in _EXPLICIT):
        if _registry is None:
            registry = JobRegistry(jobs_dir())
            try:
                registry.join()
            except OSError as e:  # no writable temp dir: run as if alone rather than not at all
                print(f"echochamber: jobs registry {registry.dir}: {e}; not sharing cores with other jobs",
                      file=sys.stderr)
                return {}
            _registry = registry
            atexit.register(registry.leave)
        return {}
    settings = thread_settings(environ, cores())
    environ.update(settings)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(settings["OMP_NUM_THREADS"]))
    return settings


# ----------------------------------------------------------------------------- jobs nobody announced

def jobs_dir() -> Path:
    """Where this user's echochamber jobs register (ECHOCHAMBER_JOBS_DIR, else the temp dir)."""
    return Path(os.environ.get("ECHOCHAMBER_JOBS_DIR") or tempfile.gettempdir()) / f"echochamber-jobs-{os.getuid()}"


class JobRegistry:
    """The echochamber jobs running now: one file per job, each flock-ed by its owner for the owner's lifetime."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self._fd: int | None = None
        self._name: str | None = None

    def join(self) -> None:
        """Register this process: lock a private file, then rename it into view, so that every visible file is
        locked by a live owner or belongs to a dead one (never one about to lock it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)  # not inherited across exec (PEP 446)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._name = f"{os.getpid()}.lock"
        os.replace(tmp, self.dir / self._name)
        self._fd = fd

    def leave(self) -> None:
        if self._fd is not None:
            (self.dir / self._name).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def count(self) -> int:
        """Live jobs, this one included. A file whose lock can be taken belongs to a job that ended: removed."""
        live = 0
        for path in self.dir.glob("*.lock"):
            if path.name == self._name:
                live += 1
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # removed by its owner or by another job meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live += 1  # held: its owner runs
            else:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return max(live, 1)


_registry: JobRegistry | None = None
_last_rebalance = float("-inf")
_pinned: int | None = None  # threads a run's config asked for (pretrain.threads, rl.threads): never rebalanced


def pin_threads(threads: int) -> None:
    """At the start of a run on a CPU, its config's thread count (pretrain.threads / rl.threads). Above 0: exactly
    that many torch threads from now on, whatever other jobs do; `rebalance` leaves them alone (before, the
    automatic split took over at the next step, and an rl.threads=1 run trained at 2 threads). 0: the automatic
    split again, from now."""
    global _pinned
    _pinned = threads or None
    if threads:
        import torch

        torch.set_num_threads(threads)
    else:
        rebalance(force=True)


def release() -> None:
    """This process stops counting as a job (the CLI's command has ended; a later `configure` joins again), and a
    thread count its run pinned no longer holds."""
    global _registry, _pinned
    _pinned = None
    if _registry is not None:
        _registry.leave()
        _registry = None


def rebalance(force: bool = False) -> int | None:
    """In automatic mode (see the module docstring), at most every REBALANCE_S seconds unless `force`: give this
    job cores // jobs torch threads. Returns the thread count when it looked, None when it did not (not automatic,
    or the run pinned its threads: pin_threads)."""
    global _last_rebalance
    if _registry is None or _pinned is not None or "torch" not in sys.modules:
        return None
    now = time.monotonic()
    if not force and now - _last_rebalance < REBALANCE_S:
        return None
    _last_rebalance = now
    import torch

    want = max(1, cores() // _registry.count())
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return want
