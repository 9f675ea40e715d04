"""The only place model-written code runs: a pool of long-lived, sandboxed worker processes.

Layers, outermost first (each is used where the machine has it; what is missing is reported once, loudly):

    pool process (trainer)         never runs model code; sends JSON lines {code, expr} to each worker's stdin
      bubblewrap (`bwrap`)         new user/pid/net/ipc/uts/cgroup namespaces, no capabilities, cleared
                                   environment, and a root file system built from nothing (see below)
        worker (sandbox.py)        pid 1 of its namespace, long-lived, not dumpable, dies with the pool;
                                   preloads modules, gc.freeze()s, then forks one child per snippet and
                                   enforces its wall-clock deadline
          child (per snippet)      own session; rlimits: address space = worker's VSZ + memory_mb, CPU seconds,
                                   file size, open files, no core dumps; environment cleared; cwd = a fresh
                                   scratch folder; capabilities dropped; then a seccomp filter (errno, not kill)

What a worker sees of the file system (bubblewrap): an empty read-only root holding only, read-only, /usr and
/bin, /sbin, /lib* (or their merged-/usr symlinks), /etc/ld.so.cache, ld.so.conf(.d), localtime and alternatives,
the Python installation (sys.base_prefix, sys.prefix: a venv inside the checkout is bound alone, never the
checkout; a pyenv Python under /root is bound alone, never /root), the environment's site-packages, and
sandbox.py itself as /echochamber/sandbox.py; writable: its own scratch folder. Everything else (/etc/shadow,
$HOME with SSH keys and ~/.cache/huggingface/token, /root, /tmp, /var, /srv, /mnt, /opt, /work, the checkout's
other files, run folders with rollouts and checkpoints, the other workers' folders) does not exist inside.
The worker runs as pid 1 (bwrap --as-pid-1): bubblewrap's own init would hold the pool's pipes open where a
snippet could reopen them through /proc/1/fd (forging answer lines, reading the trainer's stderr file); the
non-dumpable worker's /proc/1/fd is closed to snippets.

The seccomp filter refuses: fork/vfork/clone of processes (threads pass) and clone3, execve/execveat,
socket/socketpair, kill/tkill/tgkill/pidfd_* (to anyone, itself included), ptrace and cross-process memory
access, setsid/setpgid, prlimit64/setpriority/sched_* aimed at another pid, namespaces and mounts, io_uring,
bpf, keyctl, module loading, reboot, clock setting, terminal-injecting ioctls. Without bubblewrap there is no
read-only mount, so it also refuses every syscall that creates, writes, renames or deletes files (writable
opens are refused by their flags): snippets then cannot write at all, not even in their scratch folder.

What fallback mode (no bubblewrap) cannot prevent: a snippet sees the host's file system and processes and
can READ whatever the trainer's user can read (/etc/shadow when root, $HOME, run folders, the checkout) and
return it as its answer, which lands in rollouts JSONL and report.html; it can read /proc/<trainer pid>/environ
and memory (where a gold answer may sit); it shares the host network namespace (sockets are refused, so it
cannot use it).
Without seccomp as well (macOS, locked-down containers) only rlimits, the scratch cwd, the cleared
environment and the wall-clock kill remain: the pool still runs, and says so.

The child runs `exec(job.code, ns)` in a fresh namespace, then `value = eval(job.expr, ns)`, converts the value
to an exact builtin int, float or str *inside the sandbox* (so no object whose `__eq__` could lie ever leaves
it) and writes it as JSON to a result pipe. The worker drains and caps its stdout, SIGKILLs its process group
at the deadline, removes the scratch folder it made, and answers the pool. A worker that dies or stops
answering is replaced, and the snippet it held is scored as an error. The gold answer never enters the
sandbox: only code and an expression go in.

Why a fork per snippet and not a fresh interpreter: a fork from a warm worker costs ~3 ms all told, a fresh
Python ~10-30 ms, a fresh bwrap + Python ~13 ms (../shared/SANDBOX.md). Root makes RLIMIT_NPROC useless, so
the seccomp filter is what stops a fork bomb.

This file doubles as the worker program (`python -I -B sandbox.py`), so it imports nothing outside the
standard library at module level.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class CodeJob:
    """A snippet to run: `exec(code)` in a fresh namespace, then `eval(expr)` there gives the answer."""

    code: str  # statements, exec'd in a fresh namespace (``__name__ == "__main__"``)
    expr: str  # an expression evaluated afterwards in that namespace; its value is the answer


@dataclass(frozen=True)
class CodeResult:
    """What came back from one snippet. Only exact builtin int/float/str (or None) ever cross back."""

    ok: bool
    value: int | float | str | None  # None when not ok, or when the expression evaluated to None
    stdout: str  # what the snippet printed, capped at SandboxConfig.stdout_bytes
    error: str | None  # "timeout", "memory", "killed: SIGSEGV", "SyntaxError: ...", "NameError: ...", ...


@dataclass
class SandboxConfig:
    """Knobs of the sandbox pool. The paper ran `exec` in the trainer with a 3 s `signal.alarm` and no limits."""

    workers: int = 0  # worker processes; 0 = this process's share of the usable cores (default_workers)
    timeout_s: float = 3.0  # wall-clock seconds per snippet (paper: 3 s); CPU-time limit is derived from it
    memory_mb: int = 1024  # address space a snippet may add on top of the worker's own (RLIMIT_AS = VSZ + this)
    file_size_mb: int = 16  # largest file a snippet may write into its scratch folder (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE of a snippet
    stdout_bytes: int = 4096  # printed output kept per snippet; the rest is read and dropped
    value_chars: int = 4096  # longest str value returned; ints with more digits than Python prints are errors
    use_bwrap: bool | None = None  # None = use bubblewrap when it works here; False = fallback mode (tests, macOS)
    # Modules each worker imports at start; every snippet's fork then shares them. A heavy preload makes every
    # fork slower (sympy: ~600 -> ~320 trivial snippets/s with 2 workers), a snippet-side import of sympy
    # costs ~0.2 s of CPU each time (~10 sympy snippets/s), hence the on-demand list below.
    preload: list[str] = field(default_factory=lambda: ["math"])
    # Imported into a worker the first time a snippet's code mentions the name (OpenMathInstruct-1 code often
    # does `from sympy import ...`): pure-TinyGSM batches keep the light fast fork; once sympy shows up, its
    # snippets run ~4x faster. Only installed modules named here are ever imported this way.
    preload_on_demand: list[str] = field(default_factory=lambda: ["sympy", "numpy"])
    grace_s: float = 5.0  # extra seconds a worker gets past timeout_s to answer before it is replaced


class SandboxPool:
    """Long-lived sandboxed workers; `run_many` spreads snippets over them and returns results in order.

    Thread-safe: concurrent callers take turns (one batch at a time keeps every worker busy anyway).
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = cfg = config if config is not None else SandboxConfig()
        if cfg.timeout_s <= 0 or cfg.memory_mb <= 0:
            raise ValueError(f"SandboxConfig: timeout_s and memory_mb must be > 0, got {cfg}")
        self.use_bwrap = bwrap_available() if cfg.use_bwrap is None else cfg.use_bwrap
        if self.use_bwrap and not bwrap_available():
            raise RuntimeError("SandboxConfig.use_bwrap=True but bubblewrap (`bwrap`) is missing or does not work "
                               "here; install it (`apt-get install -y bubblewrap`) or set use_bwrap=None/False")
        n = cfg.workers if cfg.workers > 0 else default_workers()
        self._lock = threading.Lock()
        self._closed = False
        self._job_seq = 0
        # The pool owns this folder and the per-worker folders in it; workers own what is inside theirs.
        self.scratch_root = os.path.realpath(tempfile.mkdtemp(prefix="echochamber-sandbox-"))
        self._generation = 0
        self._workers: list[_Worker] = []
        # Workers die with the thread that started them (bwrap --die-with-parent, PR_SET_PDEATHSIG: so they
        # never outlive a killed trainer), so one long-lived thread of the pool's own starts them all.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="echochamber-sandbox-spawn")
        # Runs on close(), on garbage collection or at interpreter exit, whichever comes first; it holds the
        # worker list and the folder, not the pool, so a forgotten pool is still cleaned up.
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self.scratch_root, self._spawner)
        _live_pools.add(self)
        _remove_scratch_on_sigterm()
        try:
            for _ in range(n):  # start them all, then wait: workers boot in parallel
                self._workers.append(self._spawn())
            for w in self._workers:
                w.await_hello()
        except BaseException:
            self.close()
            raise
        self.protection: dict[str, bool] = self._workers[0].protection  # what this machine could provide
        _warn_missing(self.protection, forced_off=cfg.use_bwrap is False)

    # -- public ------------------------------------------------------------------------------------------

    def run(self, job: CodeJob) -> CodeResult:
        """Run one snippet."""
        return self.run_many([job])[0]

    def run_many(self, jobs: Sequence[CodeJob]) -> list[CodeResult]:
        """Run snippets in parallel over the workers; results come back in the order of `jobs`."""
        for j in jobs:
            if not isinstance(j, CodeJob) or not isinstance(j.code, str) or not isinstance(j.expr, str):
                raise TypeError(f"run_many expects CodeJob(code: str, expr: str), got {j!r:.200}")
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool is closed")
            return self._run_locked(list(jobs))

    def close(self) -> None:
        """Stop every worker and remove the scratch folder this pool created. Idempotent."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _spawn(self) -> "_Worker":
        self._generation += 1
        return self._spawner.submit(_Worker, self, self._generation).result()

    def _replace(self, slot: int) -> None:
        """Kill the worker in `slot` (it died or hung), remove its folder, start a fresh one."""
        self._workers[slot].stop(kill=True)
        w = self._spawn()
        self._workers[slot] = w
        w.await_hello()

    def _run_locked(self, jobs: list[CodeJob]) -> list[CodeResult]:
        cfg = self.config
        results: list[CodeResult | None] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        inflight: dict[int, tuple[int, int, float]] = {}  # slot -> (job index, job id, deadline)
        sel = selectors.DefaultSelector()
        try:
            for slot, w in enumerate(self._workers):
                sel.register(w.out_fd, selectors.EVENT_READ, slot)
            while queue or inflight:
                # Hand a snippet to every idle worker.
                for slot in range(len(self._workers)):
                    if slot in inflight or not queue:
                        continue
                    w = self._workers[slot]
                    # Died while idle, or still busy with a snippet of an interrupted batch: nothing of this
                    # batch is lost, just start afresh.
                    if w.dirty or not w.alive():
                        sel.unregister(w.out_fd)
                        self._replace(slot)
                        sel.register(self._workers[slot].out_fd, selectors.EVENT_READ, slot)
                    i = queue.popleft()
                    self._job_seq += 1
                    deadline = time.monotonic() + cfg.timeout_s + cfg.grace_s
                    inflight[slot] = (i, self._job_seq, deadline)
                    try:
                        self._workers[slot].send({"id": self._job_seq, "code": jobs[i].code, "expr": jobs[i].expr},
                                                 timeout_s=cfg.grace_s)
                    except OSError:
                        pass  # a dead or hung worker is caught below (EOF or deadline) and the snippet scored
                # Wait for an answer or the earliest deadline.
                wait = max(0.0, min(d for _, _, d in inflight.values()) - time.monotonic())
                lost: list[tuple[int, str]] = []
                for key, _ in sel.select(timeout=wait):
                    slot = key.data
                    w = self._workers[slot]
                    for msg in w.read_messages():
                        if slot not in inflight or msg.get("id") != inflight[slot][1]:
                            continue  # a late answer to an abandoned snippet
                        if "progress" in msg:  # importing an on-demand module first: allow it a minute
                            i, job_id, _ = inflight[slot]
                            inflight[slot] = (i, job_id, time.monotonic() + 60.0 + cfg.timeout_s + cfg.grace_s)
                        else:
                            results[inflight.pop(slot)[0]] = _result_from_message(msg)
                    if w.eof:
                        lost.append((slot, "killed: sandbox worker died"))
                now = time.monotonic()
                for slot, (_, _, deadline) in list(inflight.items()):
                    if now >= deadline and all(s != slot for s, _ in lost):
                        lost.append((slot, "timeout"))
                for slot, why in lost:
                    if slot in inflight:
                        results[inflight.pop(slot)[0]] = CodeResult(False, None, "", why)
                    log.warning("sandbox worker %d %s; replacing it", slot,
                                "stopped answering" if why == "timeout" else "died")
                    sel.unregister(self._workers[slot].out_fd)
                    self._replace(slot)
                    sel.register(self._workers[slot].out_fd, selectors.EVENT_READ, slot)
        finally:
            sel.close()
            for slot in inflight:  # interrupted (e.g. KeyboardInterrupt): their late answers must not linger
                self._workers[slot].dirty = True
        return results  # type: ignore[return-value]


def _shutdown(workers: list["_Worker"], scratch_root: str, spawner: ThreadPoolExecutor, kill: bool = False) -> None:
    """Stop the workers (stdin EOF, then SIGKILL to any that linger; at once when `kill`) and remove the pool's
    scratch folder."""
    for w in workers:  # all at once, so they exit in parallel
        w.close_stdin()
    for w in workers:
        w.stop(kill=kill)
    workers.clear()
    spawner.shutdown(wait=False)
    _remove_owned_tree(scratch_root, scratch_root)


# Pools not yet closed, for the SIGTERM handler (weak: a forgotten pool is still collected).
_live_pools: "weakref.WeakSet[SandboxPool]" = weakref.WeakSet()


def _remove_scratch_on_sigterm() -> None:
    """Make SIGTERM remove the pools' scratch folders, as Ctrl-C does.

    SIGINT raises KeyboardInterrupt, the interpreter exits normally and each pool's finalizer runs. SIGTERM's
    default action ends the process at once: the workers die with it (PR_SET_PDEATHSIG, --die-with-parent) but
    their folders would stay in /tmp. So, where SIGTERM still has its default action, the pool installs a
    handler that kills its workers, removes its folders, then restores the default and re-sends SIGTERM: the
    process still ends "killed by SIGTERM", as before. A program with its own SIGTERM handler keeps it (exiting
    through sys.exit runs the finalizers); signal handlers can only be set from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not settable here (e.g. an embedded interpreter)
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    for pool in list(_live_pools):
        info = pool._finalizer.detach()  # exactly once: a later close() or exit finds nothing to do
        if info is not None:
            _shutdown(*info[2], kill=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_shared: SandboxPool | None = None
_shared_lock = threading.Lock()


def shared_pool(config: SandboxConfig | None = None) -> SandboxPool:
    """The process-wide pool, created on first use and closed at interpreter exit (by its finalizer).

    `config` (e.g. the run config's `sandbox` section) applies when the pool is created; passing a different
    one later closes the old pool and starts a new one. None keeps whatever pool exists (default config if none).
    """
    global _shared
    with _shared_lock:
        if _shared is not None and config is not None and asdict(config) != asdict(_shared.config):
            _shared.close()
        if _shared is None or _shared._closed:
            _shared = SandboxPool(config)
        return _shared


# ----------------------------------------------------------------------------------------------------------
# Environment probes and the one loud warning


_bwrap_ok: bool | None = None
_bwrap_problem = "`bwrap` not found"  # why bubblewrap is not used, for the warning
_warned: set[str] = set()


def bwrap_available() -> bool:
    """True when `bwrap` exists and this interpreter starts inside the sandbox's namespaces and minimal file
    system (probed once per process)."""
    global _bwrap_ok, _bwrap_problem
    if _bwrap_ok is None:
        _bwrap_ok = False
        if not sys.platform.startswith("linux"):
            _bwrap_problem = "not Linux"
        elif shutil.which("bwrap") is not None:
            try:
                r = subprocess.run(_bwrap_argv([sys.executable, "-I", "-S", "-c", ""], folder=None),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   timeout=20)
                _bwrap_ok = r.returncode == 0
                why = r.stderr.decode(errors="replace").strip()[:300] or f"exit code {r.returncode}"
                _bwrap_problem = f"`bwrap` failed here: {why}"
            except (OSError, subprocess.TimeoutExpired, RuntimeError) as e:
                _bwrap_problem = f"`bwrap` failed here: {_describe(e)}"
    return _bwrap_ok


def _warn_missing(protection: dict[str, bool], forced_off: bool = False) -> None:
    """Say once per process, on the log and on stderr, which protections this pool runs without."""
    what = {
        "bwrap": "bubblewrap (" + ("turned off by SandboxConfig.use_bwrap=False" if forced_off else _bwrap_problem)
                 + "): snippets can READ every file this user can read and return it as their answer, which "
                   "is written to rollouts JSONL and report.html: /etc/shadow (when root), $HOME (SSH keys, "
                   "~/.cache/huggingface/token), run folders, the checkout; they see other processes and can "
                   "read /proc/PID/environ and memory of the trainer (only seccomp keeps files read-only)",
        "seccomp": "seccomp (install libseccomp2 and pyseccomp): nothing refuses fork bombs, exec, sockets, "
                   "kill() or file writes; only rlimits and the wall-clock kill remain",
        "pidfd": "pidfd: the worker polls for child exit every 5 ms",
    }
    missing = [what.get(name, name) for name, have in protection.items() if not have]
    if not missing:
        return
    msg = "echochamber.sandbox: running model-written code WITHOUT " + "; WITHOUT ".join(missing)
    if "bwrap" in protection and not protection["bwrap"] and not forced_off:
        msg += ". Install bubblewrap (apt-get install -y bubblewrap)."
    if msg in _warned:
        return
    _warned.add(msg)
    log.warning(msg)  # with no logging configured, Python's last-resort handler prints this on stderr
    if log.hasHandlers():  # configured logging may write to a file only: say it on stderr as well
        print(msg, file=sys.stderr, flush=True)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Workers of a pool with workers=0: the usable cores // the processes torchrun started on this machine
    (LOCAL_WORLD_SIZE; 1 outside torchrun), at least 1. Every rank starts its own pool, so one worker per core
    in each of 8 ranks would put 8 workers on every core."""
    return max(1, _cpu_count() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


# ----------------------------------------------------------------------------------------------------------
# The pool's handle on one worker process


# Namespaces: all of them (user, pid, net, ipc, uts, cgroup). The worker is pid 1 of its pid namespace: a
# bubblewrap init there would hold the pool's pipes and the trainer's stderr, and a snippet could reopen them
# through /proc/1/fd (forge answer lines, read a log file in the run folder); the worker is not dumpable, so
# its /proc/1/fd is closed to snippets.
_BWRAP_NAMESPACES = ["--unshare-all", "--new-session", "--die-with-parent", "--as-pid-1", "--cap-drop", "ALL"]
# The root starts as an empty tmpfs (bubblewrap's own); these are bound into it read-only, or recreated as the
# symlinks they are on merged-/usr systems. Nothing else of the host exists inside.
_SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
# What of /etc the dynamic loader and the C library read; the rest (shadow, ssh host keys, ...) stays out.
_ETC_FILES = ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives"]
_WORKER_PROGRAM = "/echochamber/sandbox.py"  # where this file appears inside the sandbox (bound alone)

# The worker's whole environment (the pool's variables, secrets included, never reach it). One BLAS thread:
# the child is forked and a thread pool would be dead weight.
_WORKER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def _python_binds() -> list[tuple[str, str]]:
    """(source, destination) pairs to bind read-only so that this interpreter and its packages run inside.

    The prefixes (sys.base_prefix: the installation; sys.prefix: a venv) and the site-packages folders on
    sys.path, each bound alone: a venv inside the checkout exposes the venv, not the checkout; a pyenv Python
    under /root exposes /root/.pyenv/versions/X, not /root. A path is bound at its real location and, if
    reached through a symlink, at the path Python uses too (a venv is found from the unresolved executable).
    Folders on sys.path that are neither (PYTHONPATH entries, editable installs' source trees) stay outside.
    """
    import site

    home = os.path.realpath(os.path.expanduser("~"))
    wanted = [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    wanted += [p for p in sites if p in sys.path]
    if sys.executable:
        wanted.append(os.path.realpath(sys.executable))  # a venv's python may link outside every prefix
    binds: list[tuple[str, str]] = []
    for path in wanted:
        if not path or not os.path.exists(path):
            continue
        src = os.path.realpath(path)
        for dest in dict.fromkeys([src, os.path.abspath(path)]):
            if any(dest == d or dest.startswith(d + "/") for d in _SYSTEM_DIRS):
                continue  # inside /usr or /lib...: already there
            if dest == "/" or home == dest or home.startswith(dest.rstrip("/") + "/"):
                raise RuntimeError(f"echochamber.sandbox: refusing to bind {dest!r} into the sandbox (it holds "
                                   f"{home!r} or is /): the Python installation must live in a folder of its own")
            binds.append((src, dest))
    # Parents first; drop a bind that its parent's bind already provides.
    kept: list[tuple[str, str]] = []
    for src, dest in sorted(set(binds), key=lambda b: (b[1].count("/"), b[1])):
        if not any(dest.startswith(d + "/") and src == s + dest[len(d):] for s, d in kept):
            kept.append((src, dest))
    return kept


def _bwrap_argv(program: list[str], folder: str | None) -> list[str]:
    """The bubblewrap command line that runs `program` in the sandbox, with `folder` (if any) writable and cwd."""
    argv = [shutil.which("bwrap") or "bwrap", *_BWRAP_NAMESPACES]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for f in _ETC_FILES:
        argv += ["--ro-bind-try", f, f]
    for src, dest in _python_binds():
        argv += ["--ro-bind", src, dest]
    argv += ["--ro-bind", os.path.realpath(__file__), _WORKER_PROGRAM]
    if folder is not None:
        argv += ["--bind", folder, folder, "--chdir", folder]
    # Fresh /dev (null, zero, urandom, ...; then read-only) and /proc of the new pid namespace (host processes
    # and their environments are invisible); then the root itself read-only: only `folder` is writable.
    argv += ["--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc", "--remount-ro", "/", "--clearenv"]
    for k, v in _WORKER_ENV.items():
        argv += ["--setenv", k, v]
    return argv + ["--", *program]


class _Worker:
    """A worker process seen from the pool: spawn, send a job line, read answer lines, stop."""

    def __init__(self, pool: SandboxPool, generation: int):
        self.folder = os.path.join(pool.scratch_root, f"w{generation}")
        os.mkdir(self.folder, 0o700)
        if pool.use_bwrap:
            argv = _bwrap_argv([sys.executable, "-I", "-B", _WORKER_PROGRAM], self.folder)
        else:
            argv = [sys.executable, "-I", "-B", os.path.abspath(__file__)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.folder,
                                     env=dict(_WORKER_ENV), start_new_session=True, close_fds=True)
        self.out_fd = self.proc.stdout.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.proc.stdin.fileno(), False)  # send() must not block on a hung worker
        self.buf = bytearray()
        self.eof = False
        self.dirty = False  # True when a batch was interrupted while this worker held a snippet
        self.protection: dict[str, bool] = {}
        cfg = pool.config
        wcfg = {
            "folder": self.folder, "timeout_s": cfg.timeout_s, "memory_mb": cfg.memory_mb,
            "file_size_mb": cfg.file_size_mb, "open_files": cfg.open_files, "stdout_bytes": cfg.stdout_bytes,
            "value_chars": cfg.value_chars, "preload": list(cfg.preload),
            "preload_on_demand": list(cfg.preload_on_demand), "bwrap": bool(pool.use_bwrap),
            "parent_pid": None if pool.use_bwrap else os.getpid(),
            # The pool's import path (minus the cwd), so the snippet sees the same installed libraries.
            "sys_path": [p for p in sys.path if p and os.path.isabs(p)],
        }
        self.send(wcfg, timeout_s=10.0)

    def await_hello(self) -> None:
        """Wait for the worker's first line, which lists the protections it could set up."""
        deadline = time.monotonic() + 60.0  # a cold import of sympy/numpy on a loaded machine
        while time.monotonic() < deadline:
            for msg in self.read_messages(block_s=min(0.5, deadline - time.monotonic())):
                if msg.get("hello") is True and isinstance(msg.get("protection"), dict):
                    self.protection = {str(k): bool(v) for k, v in msg["protection"].items()}
                    return
            if self.eof:
                break
        self.stop(kill=True)
        raise RuntimeError(f"echochamber.sandbox: worker failed to start (exit code {self.proc.poll()}); "
                           "its stderr is above")

    def alive(self) -> bool:
        """False once the worker closed its output; does not reap it (stop() must still kill its group)."""
        if self.eof:
            return False
        self.read_messages()  # sets eof when the worker is gone
        return not self.eof

    def send(self, msg: dict, timeout_s: float) -> None:
        """Write one JSON line; raises OSError (TimeoutError) if the worker does not take it in time."""
        data = memoryview(json.dumps(msg).encode() + b"\n")
        fd, deadline = self.proc.stdin.fileno(), time.monotonic() + timeout_s
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:  # pipe full: the worker is not reading (yet)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("sandbox worker is not reading its input") from None
                with selectors.DefaultSelector() as sel:
                    sel.register(fd, selectors.EVENT_WRITE)
                    sel.select(remaining)

    def read_messages(self, block_s: float = 0.0) -> list[dict]:
        """Read what is available (waiting up to block_s for the first byte) and return complete lines."""
        if block_s > 0:
            with selectors.DefaultSelector() as sel:
                sel.register(self.out_fd, selectors.EVENT_READ)
                sel.select(block_s)
        while True:
            try:
                chunk = os.read(self.out_fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        msgs = []
        while (nl := self.buf.find(b"\n")) >= 0:
            line, self.buf = bytes(self.buf[:nl]), self.buf[nl + 1:]
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict):
                msgs.append(msg)
            else:
                log.warning("sandbox worker sent a malformed line: %.200r", line)
        return msgs

    def close_stdin(self) -> None:
        """Ask the worker to exit: it leaves its loop at end of input."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def stop(self, kill: bool = False) -> None:
        """Close stdin and wait (or kill at once when `kill`), reap, and remove the worker's folder."""
        self.close_stdin()
        if not kill:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.returncode is None:  # not reaped yet, so its process-group id cannot have been reused
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # bwrap tears down its whole pid namespace with it
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        self.proc.stdout.close()
        # A dead worker cannot clean up after itself; the pool made this folder, so the pool removes it.
        _remove_owned_tree(self.folder, os.path.dirname(self.folder))


def _remove_owned_tree(path: str, root: str) -> None:
    """rmtree `path` only if it is `root` or directly inside it (guards against deleting a wrong folder)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    if not os.path.basename(root).startswith("echochamber-sandbox-"):
        raise RuntimeError(f"refusing to delete {path!r}: {root!r} is not a sandbox scratch root")
    if path != root and os.path.dirname(path) != root:
        raise RuntimeError(f"refusing to delete {path!r}: not inside the sandbox scratch root {root!r}")
    for _ in range(20):  # a just-killed snippet may still be creating files for a moment
        shutil.rmtree(path, ignore_errors=True)  # never follows symlinks
        if not os.path.lexists(path):
            return
        time.sleep(0.05)


def _result_from_message(msg: dict) -> CodeResult:
    """Build a CodeResult from a worker's JSON answer, re-checking that only plain types came back."""
    value = msg.get("value")
    if type(value) not in (int, float, str, type(None)):
        return CodeResult(False, None, "", f"sandbox: bad value type {type(value).__name__}")
    stdout = msg.get("stdout")
    error = msg.get("error")
    return CodeResult(ok=msg.get("ok") is True, value=value if msg.get("ok") is True else None,
                      stdout=stdout if type(stdout) is str else "",
                      error=error if type(error) is str or error is None else str(error))


# ----------------------------------------------------------------------------------------------------------
# Worker side (runs inside bubblewrap when available): everything below executes in the worker process.

# seccomp: errno-denied syscalls. Names missing on an architecture are skipped.
_DENY_ALWAYS = [
    # process creation and program execution (clone: only threads pass, see _seccomp_filter)
    "fork", "vfork", "execve", "execveat",
    # network and local sockets (a unix socket could reach a host daemon)
    "socket", "socketpair",
    # other processes: signals, tracing, memory access
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # leaving the process group/session the worker kills at the deadline
    "setsid", "setpgid",
    # namespaces, mounts, root changes
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsmount", "fspick", "mount_setattr",
    # kernel interfaces that bypass or widen seccomp, or act machine-wide (root without bubblewrap)
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key", "reboot", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "acct", "quotactl", "syslog",
    "name_to_handle_at", "open_by_handle_at", "fanotify_init", "vhangup", "uselib",
]
# Without bubblewrap there is no read-only mount, so the filter refuses every syscall that changes the file
# system (writable opens are refused by flag, below). Snippets then cannot write even in their scratch folder.
_DENY_FS_WRITE = [
    "creat", "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "mknod",
    "mknodat", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
    "fchown", "lchown", "fchownat", "truncate", "ftruncate", "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
]
_CLONE_THREAD = 0x00010000
# syscall -> index of its pid argument
_OTHER_PID_ARG = {"prlimit64": 0, "setpriority": 1, "sched_setaffinity": 0, "sched_setscheduler": 0,
                  "sched_setparam": 0, "sched_setattr": 0, "ioprio_set": 1, "migrate_pages": 0, "move_pages": 0}
# TIOCSTI and TIOCLINUX push keystrokes into a terminal, given any fd of it (even read-only)
_DENY_IOCTL = [0x5412, 0x541C]


def _seccomp_filter(deny_fs_write: bool) -> "_Seccomp | None":
    """Build the child's seccomp filter once per worker; None when pyseccomp/libseccomp is unavailable."""
    try:
        import pyseccomp as sc
    except Exception:  # ImportError, or RuntimeError when libseccomp.so is missing
        return None
    f = sc.SyscallFilter(sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)

    def deny(name: str, *args: Any, action: int = eperm) -> None:
        try:
            f.add_rule(action, name, *args)
        except (OSError, ValueError, RuntimeError):
            pass  # syscall does not exist on this architecture

    for name in _DENY_ALWAYS + (_DENY_FS_WRITE if deny_fs_write else []):
        deny(name)
    # clone: threads (CLONE_THREAD set) pass, so libraries that start a thread pool still import; a process
    # clone (flag clear) is refused. clone3 passes its flags in memory a filter cannot read: answer ENOSYS,
    # which makes glibc fall back to clone.
    deny("clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    deny("clone3", action=sc.ERRNO(errno.ENOSYS))
    # Syscalls that act on another process by pid: allowed on itself (pid 0), refused on anyone else, e.g.
    # lowering the worker's RLIMIT_NOFILE (every later snippet would fail) or renicing the trainer.
    for name, arg in _OTHER_PID_ARG.items():
        deny(name, sc.Arg(arg, sc.NE, 0))
    for request in _DENY_IOCTL:
        deny("ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    if deny_fs_write:
        for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC):
            deny("open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
            deny("openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
        deny("openat2", action=sc.ERRNO(errno.ENOSYS))  # flags live in a struct; glibc/Python do not need it
    # Compile to BPF here, once: libseccomp would regenerate it in every child (~0.4 ms each).
    with os.fdopen(os.memfd_create("echochamber-seccomp"), "w+b") as fh:  # libseccomp writes to the fd
        f.export_bpf(fh)
        fh.seek(0)
        return _Seccomp(fh.read())


def _libc_prctl() -> Any:
    """libc's prctl(option, arg2, arg3, arg4, arg5) through ctypes, or None where there is none (macOS)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


_PRCTL: Any = None  # set by the worker before it forks anything
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4


class _Seccomp:
    """A compiled seccomp program, installed in the child by two prctl calls (no libseccomp work per child)."""

    PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_SET_NO_NEW_PRIVS = 22, 2, 38

    def __init__(self, bpf: bytes):
        import ctypes

        class SockFprog(ctypes.Structure):  # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))  # 8 bytes per BPF instruction
        self._prctl = _libc_prctl()
        self._ptr = ctypes.cast(ctypes.byref(self._prog), ctypes.c_void_p)
        self._get_errno = ctypes.get_errno

    def load(self) -> None:
        """Install the filter on the calling (single-threaded) process; irreversible, inherited by threads."""
        if self._prctl(self.PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0 or \
                self._prctl(self.PR_SET_SECCOMP, self.SECCOMP_MODE_FILTER, self._ptr, 0, 0) != 0:
            e = self._get_errno()
            raise OSError(e, f"seccomp filter not installed: {os.strerror(e)}")


def _vsz_bytes() -> int:
    """The worker's current virtual size, the base the child's address-space cap is added to."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0  # no /proc (macOS): the cap is then the budget alone


def _plain(value: Any, value_chars: int) -> int | float | str | None:
    """Convert an answer to an exact builtin type, never trusting the object's own methods for int/float/str.

    Exact int/float/str/None pass; subclasses are unwrapped with the base type's own slot (an int subclass
    whose __eq__ or __index__ lies gives its real value); bool becomes "True"/"False" (it is not a number);
    other integer-like objects (numpy, sympy) go through operator.index; anything else becomes str(value).
    """
    import operator

    t = type(value)
    if value is None:
        return None
    if t is bool:
        return str(bool.__repr__(value))
    if isinstance(value, int):
        out = int.__index__(value)
    elif isinstance(value, float):
        return float.__float__(value)
    elif isinstance(value, str):
        out = str.__str__(value)
    else:
        try:  # numpy / sympy integers
            out = int.__index__(operator.index(value))
        except Exception:  # not integer-like (TypeError), or its __index__ misbehaves
            out = str.__str__(str(value))  # str() raises unless __str__ returns a str (maybe a subclass)
    if type(out) is int:
        # JSON (and str) refuse ints over sys.get_int_max_str_digits() digits (4300): no grader needs them.
        if out.bit_length() > 14_000:
            raise OverflowError(f"integer answer too large to return ({out.bit_length()} bits)")
        return out
    if len(out) > value_chars:
        raise ValueError(f"string answer too long to return ({len(out)} chars > {value_chars})")
    return out


def _child(job: dict, cfg: dict, seccomp: "_Seccomp | None", out_w: int, res_w: int, folder: str) -> None:
    """In the forked child: limit, filter, run the snippet, write one JSON line to fd 3. Never returns."""
    try:
        os.setsid()  # own session and process group: the worker kills the whole group at the deadline
        if _PRCTL is not None:  # die with the worker: a worker killed mid-snippet leaves no orphan behind
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, None, 0, 0)
            if os.getppid() != cfg["worker_pid"]:  # the worker died before the line above took effect
                os._exit(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(devnull, 2)  # warnings and tracebacks are not part of the printed output an answer may use
        os.dup2(res_w, 3)
        os.closerange(4, 1 << 16)  # the worker's protocol pipes and anything else inherited
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.chdir(folder)
        os.environ.clear()
        os.environ.update({"HOME": folder, "TMPDIR": folder, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        _set_limits(cfg, no_seccomp=seccomp is None)
        _drop_capabilities()  # root without bubblewrap keeps every capability otherwise
        if seccomp is not None:
            seccomp.load()  # last: after it, setsid/kill/... are refused to the snippet
    except BaseException as e:  # setup failed: report it rather than run the snippet half-protected
        _write_result(3, {"ok": False, "value": None, "error": f"sandbox setup: {_describe(e)}"})
        os._exit(1)
    try:
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(job["code"], "<snippet>", "exec"), ns)
        value = eval(compile(job["expr"], "<answer>", "eval"), ns)
        res: dict[str, Any] = {"ok": True, "value": _plain(value, cfg["value_chars"]), "error": None}
    except MemoryError:
        res = {"ok": False, "value": None, "error": "memory"}
    except BaseException as e:  # SystemExit and KeyboardInterrupt are the snippet's failures too
        res = {"ok": False, "value": None, "error": _describe(e)}
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    _write_result(3, res)
    os._exit(0)


def _set_limits(cfg: dict, no_seccomp: bool) -> None:
    """rlimits of the child. The address-space cap is relative: a worker with sympy loaded is already large."""
    mb = 1 << 20
    cpu = int(math.ceil(cfg["timeout_s"])) + 1  # a backstop; the worker's wall-clock kill comes first
    limits = [
        (resource.RLIMIT_AS, cfg["vsz"] + cfg["memory_mb"] * mb, True),
        (resource.RLIMIT_CPU, cpu, True),  # soft: SIGXCPU; hard (+1 s): SIGKILL
        (resource.RLIMIT_FSIZE, cfg["file_size_mb"] * mb, True),  # past it, writes fail with EFBIG
        (resource.RLIMIT_NOFILE, cfg["open_files"], True),
        (resource.RLIMIT_CORE, 0, False),
    ]
    if no_seccomp and os.getuid() != 0:
        # The fork-bomb stop of last resort: it bites only for non-root, and it also stops threads (which the
        # seccomp filter lets through), so it is used only when there is no filter.
        limits.append((resource.RLIMIT_NPROC, 0, False))
    for which, soft, required in limits:
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft
        cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            # Without CAP_SYS_RESOURCE a hard limit can only go down: keep whichever is lower.
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            if required and sys.platform.startswith("linux"):
                raise
            # Some systems (macOS) refuse RLIMIT_AS; the hello line does not promise it there.


def _drop_capabilities() -> None:
    """Empty the effective, permitted and inheritable capability sets (capset(2)); best effort."""
    try:
        import ctypes

        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words, all zero
        ctypes.CDLL(None).capset(header, data)
    except (ImportError, OSError, AttributeError):
        pass


def _describe(e: BaseException) -> str:
    """'TypeName: message', robust to exceptions whose __str__ misbehaves."""
    name = type(e).__name__
    try:
        msg = str(e)
    except BaseException:
        msg = "<unprintable>"
    return (f"{name}: {msg}" if msg else name)[:300]


def _write_result(fd: int, res: dict) -> None:
    """Write one JSON line to fd (the result pipe); the worker re-checks everything in it."""
    try:
        data = json.dumps(res).encode() + b"\n"
    except BaseException as e:
        data = json.dumps({"ok": False, "value": None, "error": f"sandbox: unencodable result ({_describe(e)})"}
                          ).encode() + b"\n"
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _run_one(job: dict, cfg: dict, seccomp: "_Seccomp | None", seq: int) -> dict:
    """Fork a child for one job, enforce the deadline, collect its answer and stdout, clean up after it."""
    folder = os.path.join(cfg["folder"], f"job{seq}")
    os.mkdir(folder, 0o700)
    out_r, out_w = os.pipe()
    res_r, res_w = os.pipe()
    cfg["vsz"] = _vsz_bytes()
    t0 = time.monotonic()
    try:
        pid = os.fork()
    except OSError:
        for fd in (out_r, out_w, res_r, res_w):
            os.close(fd)
        _empty_folder(cfg["folder"])
        raise
    if pid == 0:
        try:
            _child(job, cfg, seccomp, out_w, res_w, folder)
        finally:
            os._exit(1)
    os.close(out_w)
    os.close(res_w)
    try:
        stdout, result, timed_out = _collect(pid, out_r, res_r, t0 + cfg["timeout_s"], cfg["stdout_bytes"])
    finally:
        # Kill the child's whole group while its pid is still reserved (the child is not reaped yet, so the
        # id cannot belong to anyone else), then reap it.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, wstatus = os.waitpid(pid, 0)
        os.close(out_r)
        os.close(res_r)
        _empty_folder(cfg["folder"])
    out_text = bytes(stdout).decode("utf-8", errors="replace")
    if timed_out:
        return {"ok": False, "value": None, "stdout": out_text, "error": "timeout"}
    try:
        res = json.loads(bytes(result).split(b"\n", 1)[0]) if result else None
    except ValueError:
        res = None
    if isinstance(res, dict) and set(res) <= {"ok", "value", "error"}:
        ok = res.get("ok") is True and type(res.get("value")) in (int, float, str, type(None))
        err = res.get("error")
        return {"ok": ok, "value": res.get("value") if ok else None, "stdout": out_text,
                "error": None if ok else (err[:300] if isinstance(err, str) else "sandbox: malformed result")}
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and time.monotonic() - t0 >= cfg["timeout_s"] / 2):
            err = "timeout"  # the CPU-time limit fired (threads can burn CPU faster than the wall clock)
        else:
            try:
                err = f"killed: {signal.Signals(sig).name}"
            except ValueError:
                err = f"killed: signal {sig}"
    else:
        err = f"exited: code {os.WEXITSTATUS(wstatus)} before returning a value"
    return {"ok": False, "value": None, "stdout": out_text, "error": err}


def _collect(pid: int, out_r: int, res_r: int, deadline: float, cap_out: int) -> tuple[bytearray, bytearray, bool]:
    """Read the child's stdout (first cap_out bytes kept, the rest drained) and result until it exits or the
    deadline passes. Never waits for EOF: a descendant could hold a pipe open. Leaves the child unreaped."""
    stdout, result, cap_res = bytearray(), bytearray(), 1 << 16
    try:
        pidfd: int | None = os.pidfd_open(pid)  # readable once the child exits (Linux >= 5.3)
    except (AttributeError, OSError):
        pidfd = None
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, stdout)
    sel.register(res_r, selectors.EVENT_READ, result)
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, None)
    exited = timed_out = False
    try:
        while not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=remaining if pidfd is not None else min(remaining, 0.005)):
                if key.data is None:
                    exited = True
                elif not _read_into(key.fd, key.data, cap_out if key.data is stdout else cap_res):
                    sel.unregister(key.fd)  # EOF
            if pidfd is None:  # poll without reaping, so the group can still be killed safely
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        # What the child wrote just before exiting is in the pipes; take it without blocking.
        for fd, buf in ((out_r, stdout), (res_r, result)):
            os.set_blocking(fd, False)
            try:
                while _read_into(fd, buf, cap_out if buf is stdout else cap_res):
                    pass
            except BlockingIOError:
                pass
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return stdout, result, timed_out


def _read_into(fd: int, buf: bytearray, cap: int) -> bool:
    """Append one read of fd to buf, keeping at most cap bytes (the rest is dropped); False at EOF."""
    chunk = os.read(fd, 1 << 16)
    if len(buf) < cap:
        buf += chunk[: cap - len(buf)]
    return bool(chunk)


def _empty_folder(folder: str) -> None:
    """Remove everything in the worker's own folder: the job's scratch folder and anything put beside it."""
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass


def _preload(name: str) -> None:
    """Import a module into the worker, so that every snippet forked afterwards has it already loaded."""
    try:
        __import__(name)
    except Exception as e:  # not installed here: snippets that import it fail on their own, with the reason
        print(f"echochamber.sandbox: cannot preload {name!r}: {_describe(e)}", file=sys.stderr)


def _worker_main() -> None:
    """Worker loop: read the config line, preload, say hello, then answer one JSON line per job line."""
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    cfg = json.loads(inp.readline())
    sys.path[:] = cfg["sys_path"] + [p for p in sys.path if p not in cfg["sys_path"]]
    sys.dont_write_bytecode = True
    for name in cfg["preload"]:
        _preload(name)
    on_demand = {name: re.compile(rf"\b{re.escape(name)}\b") for name in cfg["preload_on_demand"]}
    global _PRCTL
    _PRCTL = _libc_prctl()
    if _PRCTL is not None:  # die with the pool's spawner thread (inside bwrap, --die-with-parent does it too)
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, None, 0, 0)
        # Not dumpable: a snippet (same uid) cannot open /proc/<worker>/mem and rewrite the unfiltered worker.
        _PRCTL(_PR_SET_DUMPABLE, 0, None, 0, 0)
        if cfg["parent_pid"] is not None and os.getppid() != cfg["parent_pid"]:
            return  # the parent is already gone
    cfg["worker_pid"] = os.getpid()
    seccomp = _seccomp_filter(deny_fs_write=not cfg["bwrap"])
    pidfd_ok = hasattr(os, "pidfd_open")
    gc.collect()
    gc.freeze()  # children share the preloaded heap without the collector touching (copying) its pages
    hello = {"hello": True, "protection": {"bwrap": cfg["bwrap"], "seccomp": seccomp is not None, "pidfd": pidfd_ok}}
    out.write(json.dumps(hello).encode() + b"\n")
    out.flush()
    seq = 0
    while line := inp.readline():
        job = json.loads(line)
        seq += 1
        for name, pattern in list(on_demand.items()):
            if pattern.search(job["code"]) or pattern.search(job["expr"]):
                del on_demand[name]
                # Tell the pool (it extends this snippet's deadline), import outside any snippet's clock.
                out.write(json.dumps({"id": job["id"], "progress": f"importing {name}"}).encode() + b"\n")
                out.flush()
                _preload(name)
                gc.freeze()
        try:
            res = _run_one(job, cfg, seccomp, seq)
        except Exception as e:  # a worker-side failure is the snippet's error, the worker carries on
            res = {"ok": False, "value": None, "stdout": "", "error": f"sandbox: {_describe(e)}"}
        res["id"] = job["id"]
        out.write(json.dumps(res).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _worker_main()
