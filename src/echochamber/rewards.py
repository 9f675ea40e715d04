"""Rewards for RL and grading of files: 1.0 when a response's answer equals the gold, else 0.0.

No format reward, no length penalty (as in the paper). Numbers (GSM8K, AIME) are settled in this process by
formats.answers_equal's numeric path; everything math-verify must judge (LaTeX answers, MATH-500; the paper
mode's parse of a whole text) runs in MathVerifyPool: a few worker processes that can be killed. math-verify's
own timeout is a signal.alarm, which raises off the main thread (silently zeroing rewards in other RL
frameworks) and cannot interrupt sympy stuck in C code; here every check has a wall-clock deadline after which
its worker is killed and replaced and the check scores 0, so \\boxed{9^{9^{9^9}}} cannot hang the trainer.

The workers are plain `python -c` subprocesses speaking JSON lines (not multiprocessing: its spawn start
re-runs an unguarded __main__, such as `python -m echochamber`).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import formats
from .formats import Graded, Mode
from .runio import write_jsonl
from .sandbox import SandboxPool


@dataclass
class VerifyConfig:
    """The math-verify worker pool. The paper ran math-verify in the trainer with its default 5 s alarms."""

    workers: int = 0  # worker processes; 0 = one per usable CPU core (at most 4). Started on first use.
    timeout_s: float = 5.0  # wall-clock seconds per check; past it the worker is killed and the check scores 0
    memory_mb: int = 2048  # address space a worker may add to its start size (RLIMIT_AS), against sympy blow-ups


def reward(graded: Graded) -> float:
    """r = 1 if the answer equals the gold else 0 (the same definition in both labelling modes)."""
    return 1.0 if graded.correct else 0.0


def compute_rewards(responses: Sequence[str], golds: Sequence[str | None], *, mode: Mode = "structure",
                    pool: SandboxPool | None = None, prompts: Sequence[str] | None = None,
                    verifier: formats.Verifier | None = None) -> tuple[list[float], list[Graded]]:
    """Grade a batch (one sandbox call, batched math-verify) and return (rewards, verdicts)."""
    graded = formats.grade_many(responses, golds, mode=mode, pool=pool, prompts=prompts, verifier=verifier)
    return [reward(g) for g in graded], graded


# ----------------------------------------------------------------------------------------------------------
# Killable math-verify workers


class MathVerifyPool:
    """Worker processes running formats.verify_latex / formats.parse_answer with a hard per-check deadline.

    Implements formats.Verifier. Thread-safe (callers take turns). Workers start on first use.
    """

    def __init__(self, config: VerifyConfig | None = None):
        self.config = cfg = config if config is not None else VerifyConfig()
        if cfg.timeout_s <= 0:
            raise ValueError(f"VerifyConfig.timeout_s must be > 0, got {cfg.timeout_s}")
        self.n_workers = cfg.workers if cfg.workers > 0 else min(4, len(os.sched_getaffinity(0)))
        self.timeouts = 0  # checks that hit the deadline (their worker was killed)
        self._workers: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    # -- formats.Verifier ----------------------------------------------------------------------------------

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """formats.verify_latex(answer, gold) for each pair; False on timeout or error."""
        return [r is True for r in self._call_many("verify", [list(p) for p in pairs])]

    def extract_many(self, texts: Sequence[str]) -> list[str | None]:
        """formats.parse_answer(text) for each text; None on timeout or error."""
        return [r if isinstance(r, str) else None for r in self._call_many("parse", [[t] for t in texts])]

    def verify(self, answer: str, gold: str) -> bool:
        """One check; usable as formats.answers_equal(..., latex_verifier=pool.verify)."""
        return self.verify_many([(answer, gold)])[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "MathVerifyPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------------

    def _call_many(self, op: str, args: list[list[str]]) -> list[Any]:
        """Spread calls over the workers; a call past its deadline kills its worker and gives None."""
        results: list[Any] = [None] * len(args)
        if not args:
            return results
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifyPool is closed")
            # Start missing or dead workers (first use; after an interrupted batch), then wait for each.
            for slot in range(self.n_workers):
                if slot == len(self._workers):
                    self._workers.append(_start_worker(self.config))
                elif self._workers[slot].poll() is not None:
                    self._workers[slot] = _start_worker(self.config)
            for w in self._workers:
                _await_hello(w)
            queue = deque(range(len(args)))
            inflight: dict[int, tuple[int, float]] = {}  # worker slot -> (call index, deadline)
            try:
                self._dispatch(op, args, queue, inflight, results)
            finally:
                for slot in inflight:  # interrupted (e.g. Ctrl-C): a late answer must not reach the next batch
                    _kill(self._workers[slot])
        return results

    def _dispatch(self, op: str, args: list[list[str]], queue: deque, inflight: dict, results: list) -> None:
        """The loop of _call_many: keep every worker busy, collect answers, kill what passes its deadline."""
        while queue or inflight:
            for slot in range(len(self._workers)):
                if slot not in inflight and queue:
                    i = queue.popleft()
                    try:
                        _send(self._workers[slot], {"op": op, "args": args[i]})
                        inflight[slot] = (i, time.monotonic() + self.config.timeout_s)
                    except OSError:  # died while idle: replace it and retry the call
                        self._replace(slot)
                        queue.appendleft(i)
            if not inflight:
                continue
            wait = max(0.0, min(d for _, d in inflight.values()) - time.monotonic())
            for slot in _readable([self._workers[s].stdout for s in inflight], list(inflight), wait):
                i, _ = inflight.pop(slot)
                # One request per worker at a time and each answer is one short write: readline is complete.
                line = self._workers[slot].stdout.readline()
                try:
                    results[i] = json.loads(line)["result"]
                except (ValueError, KeyError, TypeError):  # EOF: the worker died (e.g. out of memory)
                    self._replace(slot)
            now = time.monotonic()
            for slot, (i, deadline) in list(inflight.items()):
                if now >= deadline:
                    del inflight[slot]
                    self.timeouts += 1
                    self._replace(slot)

    def _replace(self, slot: int) -> None:
        _kill(self._workers[slot])
        self._workers[slot] = w = _start_worker(self.config)
        _await_hello(w)


_shared: MathVerifyPool | None = None
_shared_lock = threading.Lock()


def shared_verifier(config: VerifyConfig | None = None) -> MathVerifyPool:
    """The process-wide MathVerifyPool, created on first use (a different `config` replaces it)."""
    global _shared
    with _shared_lock:
        if _shared is not None and config is not None and config != _shared.config:
            _shared.close()
            _shared = None
        if _shared is None or _shared._closed:
            _shared = MathVerifyPool(config)
        return _shared


def _start_worker(cfg: VerifyConfig) -> subprocess.Popen:
    src = str(Path(__file__).resolve().parents[1])  # this checkout's package, whatever the caller's sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", f"from echochamber.rewards import _worker_main; _worker_main({cfg.memory_mb})"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)


def _await_hello(w: subprocess.Popen, timeout_s: float = 120.0) -> None:
    if getattr(w, "_ec_ready", False):
        return
    line = w.stdout.readline() if _readable([w.stdout], [w], timeout_s) else b""
    if not line.startswith(b'{"hello"'):
        _kill(w)
        raise RuntimeError(f"math-verify worker did not start (exit code {w.poll()}); is math-verify installed?")
    w._ec_ready = True  # type: ignore[attr-defined]


def _readable(files: list, tags: list, timeout_s: float) -> list:
    """The tags of the files that have data (or EOF) within timeout_s (epoll: no FD_SETSIZE limit)."""
    with selectors.DefaultSelector() as sel:
        for f, tag in zip(files, tags):
            sel.register(f, selectors.EVENT_READ, tag)
        return [key.data for key, _ in sel.select(timeout_s)]


def _send(w: subprocess.Popen, msg: dict) -> None:
    w.stdin.write(json.dumps(msg).encode() + b"\n")
    w.stdin.flush()


def _kill(w: subprocess.Popen) -> None:
    try:
        w.kill()
    except OSError:
        pass
    w.wait()
    for f in (w.stdin, w.stdout):
        try:
            f.close()
        except OSError:
            pass


def _kill_all(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        _kill(w)
    workers.clear()


def _worker_main(memory_mb: int) -> None:
    """Worker loop: cap memory, warm math-verify up, then answer one JSON line per request line."""
    import logging
    import resource

    proto = os.fdopen(os.dup(1), "wb")  # protocol channel; library prints go to stderr instead
    os.dup2(2, 1)
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vsz + (memory_mb + 512) * 2**20,) * 2)  # + room for the imports
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "Timeout during comparison" is our business
    ops = {"verify": formats.verify_latex, "parse": formats.parse_answer}
    formats.verify_latex("\\frac{1}{2}", "0.5")  # load sympy and the LaTeX parser before the first deadline
    proto.write(b'{"hello": true}\n')
    proto.flush()
    for line in sys.stdin.buffer:
        req = json.loads(line)
        try:
            result = ops[req["op"]](*req["args"])
        except Exception:  # MemoryError included: the check fails, the worker goes on
            result = None
        proto.write(json.dumps({"result": result}).encode() + b"\n")
        proto.flush()


# ----------------------------------------------------------------------------------------------------------
# Grading a file (`echochamber grade`)


def gold_answer(gold: Any) -> str | None:
    """A gold answer from a record field: numbers become strings; a GSM8K solution gives the part after '####'."""
    if gold is None:
        return None
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"expected a string or number, got {type(gold).__name__}")
    gold = str(gold)
    return gold.rsplit("####", 1)[1].strip() if "####" in gold else gold.strip()


OUTPUT_FIELDS = ("label", "answer", "boxed", "correct")


def grade_file(in_path: str | Path, out_path: str | Path, *, question_field: str | None = "question",
               response_field: str = "response", gold_field: str = "gold", mode: Mode = "structure",
               with_prompt: bool = False, pool: SandboxPool | None = None,
               verifier: formats.Verifier | None = None, progress: bool = True, batch_size: int = 512) -> dict:
    """Grade a JSONL file of responses; write each record with label/answer/boxed/correct added, in order.

    response_field and gold_field are required in every record (a missing one is an error naming file:line
    and field). A record that already has a field named like an output keeps it as `input_<name>`.
    with_prompt (paper mode only): grade question + response, as the paper's RL reward did (its evaluation,
    the default here, grades the response alone); then question_field is required too.
    Returns formats.format_stats(...) of the labels and verdicts.
    """
    from tqdm import tqdm

    in_path = Path(in_path)
    records: list[dict] = []
    responses: list[str] = []
    golds: list[str | None] = []
    prompts: list[str] = []
    required = [response_field, gold_field] + ([question_field] if with_prompt and question_field else [])
    from .tasks.local import iter_jsonl  # one JSONL reader for the project; errors name file:line

    for where, rec in iter_jsonl(in_path):
        for name in required:
            if name not in rec:
                raise ValueError(f"{where}: missing field {name!r} (fields: {', '.join(rec)})")
        if not isinstance(rec[response_field], str):
            raise ValueError(f"{where}: field {response_field!r} must be a string, "
                             f"got {type(rec[response_field]).__name__}")
        try:
            golds.append(gold_answer(rec[gold_field]))
        except TypeError as e:
            raise ValueError(f"{where}: field {gold_field!r}: {e}") from None
        records.append(rec)
        responses.append(rec[response_field])
        prompts.append(str(rec[question_field]) if with_prompt and question_field else "")

    graded: list[Graded] = []
    with tqdm(total=len(records), desc=f"grade {in_path.name}", unit="rec", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(records), batch_size):
            stop = start + batch_size
            graded += formats.grade_many(responses[start:stop], golds[start:stop], mode=mode, pool=pool,
                                         prompts=prompts[start:stop] if with_prompt else None, verifier=verifier)
            bar.update(len(responses[start:stop]))

    def out(rec: dict, g: Graded) -> dict:
        rec = {(f"input_{k}" if k in OUTPUT_FIELDS else k): v for k, v in rec.items()}
        return {**rec, "label": g.label, "answer": g.answer, "boxed": g.boxed, "correct": g.correct}

    write_jsonl(out_path, (out(r, g) for r, g in zip(records, graded)))
    return formats.format_stats([g.label for g in graded], [g.correct for g in graded])


def format_summary_table(summary: dict) -> str:
    """A fixed-width table of formats.format_stats(...) for the terminal."""
    lines = [f"{'label':<8} {'n':>7} {'share':>7} {'correct':>8} {'accuracy':>9}"]
    for lab, r in summary.items():
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"{lab:<8} {r['n']:>7} {r['share']:>7.3f} {r['correct']:>8} {acc:>9}")
    return "\n".join(lines)
