"""math-verify, killable: answer equality for everything numbers alone cannot settle.

`verify_latex` (is this answer the gold?), `parse_answer` (the paper's answer of a whole text) and
`sympy_to_latex` (sympy's printed notation, `18 + 10*I`, `Interval(0, oo)`, as LaTeX) run sympy on text a
model wrote. math-verify's own timeout is a signal.alarm, which raises off the main thread (silently zeroing
rewards in other RL frameworks) and cannot interrupt sympy stuck in C code. So batches go to MathVerifyPool:
a few worker processes with a memory cap and a wall-clock deadline per check, after which the worker is killed
and replaced and the check scores 0; \\boxed{9^{9^{9^9}}} cannot hang the trainer.

The workers are plain `python -c` subprocesses speaking JSON lines (not multiprocessing: its spawn start
re-runs an unguarded __main__, such as `python -m echochamber`). This module imports nothing of echochamber:
formats builds on it, rewards on formats.
"""

from __future__ import annotations

import ast
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, Sequence

MV_TIMEOUT_S = 2  # math-verify's own (signal.alarm) timeout per parse / comparison, when on the main thread


class Verifier(Protocol):
    """What formats.grade_many needs for math-verify work; MathVerifyPool runs it in killable processes."""

    # verify_answer(answer, gold, sympy_notation) over (answer, gold) pairs
    def verify_many(self, pairs: Sequence[tuple[str, str]], sympy_notation: bool = False) -> list[bool]: ...

    def extract_many(self, texts: Sequence[str]) -> list[str | None]: ...  # parse_answer over texts


# ----------------------------------------------------------------------------------------------------------
# What runs inside the workers (or in this process, in tests)


def _strip_dollars(s: str) -> str:
    """Drop raw $ delimiters around an answer (\\$ stays), so wrapping it in $...$ gives one math span."""
    s = s.strip()
    while s.startswith("$"):
        s = s[1:]
    while s.endswith("$") and not s.endswith("\\$"):
        s = s[:-1]
    return s.strip()


def _alarm_timeout() -> int | None:
    """math-verify's own timeout works only on the main thread (signal.alarm); elsewhere it must be off."""
    return MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def verify_latex(answer: str, gold: str) -> bool:
    """math-verify: does `answer` (LaTeX or plain, e.g. a \\boxed{} content or a code value) equal `gold`?

    Both are wrapped in $...$ (math-verify then parses 3\\sqrt2 and \\sqrt{18} alike). Runs sympy: call it in
    killable worker processes (MathVerifyPool) on anything a model wrote.
    """
    from math_verify import parse, verify

    t = _alarm_timeout()
    g = parse(f"${_strip_dollars(gold)}$", parsing_timeout=t)
    a = parse(f"${_strip_dollars(answer)}$", parsing_timeout=t)
    return bool(g and a and verify(g, a, timeout_seconds=t))


def verify_answer(answer: str, gold: str, sympy_notation: bool = False) -> bool:
    """verify_latex; with sympy_notation, an answer in sympy's printed notation (what code printed or returned:
    `18 + 10*I`, `sqrt(2)/2`, `Interval(0, oo)`) also counts when its LaTeX form (sympy_to_latex) verifies."""
    if verify_latex(answer, gold):
        return True
    if not sympy_notation:
        return False
    latex = sympy_to_latex(answer)
    if latex is None or latex == answer:
        return False
    # sympy writes 10 i; golds write 10i, which math-verify reads as a symbol i (it takes only a lone i for the
    # imaginary unit, separately for gold and answer): try the glued form too.
    glued = re.sub(r"(?<=[\d}]) i\b", "i", latex)
    return verify_latex(latex, gold) or (glued != latex and verify_latex(glued, gold))


# sympy's printer writes these names for functions, constructors and constants; any other bare name is a symbol.
_SYMPY_NAMES = frozenset("""
    sqrt root cbrt Rational Integer Float exp log sin cos tan cot sec csc asin acos atan acot sinh cosh tanh
    Abs sign floor ceiling factorial binomial re im arg conjugate Min Max Eq Ne Lt Le Gt Ge And Or Not
    Interval Union Intersection Complement FiniteSet Tuple Matrix ImmutableMatrix ImmutableDenseMatrix
    I oo zoo nan pi E EmptySet Reals Integers Naturals Naturals0 Complexes
""".split())
_INTERVAL_KINDS = frozenset({"open", "Lopen", "Ropen"})  # Interval.open(0, 1), as sympy prints them
_SYMPY_MAX_CHARS = 1000


def sympy_to_latex(text: str) -> str | None:
    """sympy's printed notation as LaTeX (`18 + 10*I` -> `18 + 10 i`, `Interval(0, oo)` -> `[0, \\infty)`), or
    None when the text is not sympy notation.

    No eval: the text is parsed with `ast` and only numbers, names, + - * / **, unary minus and calls of the
    functions sympy prints (a fixed list) are rebuilt, unevaluated (2**10**10 stays a tower). A list or set
    of values is the set of its elements (sympy's `solve` returns a list; [x] is x); a tuple stays a tuple.
    Runs sympy: call it in the killable workers, like verify_latex.
    """
    text = text.strip()
    if not text or len(text) > _SYMPY_MAX_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    import sympy

    def build(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return sympy.Integer(node.value) if type(node.value) is int else sympy.Float(repr(node.value))
        if isinstance(node, ast.Name):
            return getattr(sympy, node.id) if node.id in _SYMPY_NAMES else sympy.Symbol(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            x = build(node.operand)
            return (-x if x.is_Number else sympy.Mul(-1, x, evaluate=False)) if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            a, b = build(node.left), build(node.right)
            add, mul, pow_ = (partial(f, evaluate=False) for f in (sympy.Add, sympy.Mul, sympy.Pow))
            op = type(node.op)  # a - b = a + (-1) b, a / b = a b^-1: sympy's own unevaluated forms
            return (add(a, b) if op is ast.Add else add(a, mul(-1, b)) if op is ast.Sub else mul(a, b)
                    if op is ast.Mult else mul(a, pow_(b, -1)) if op is ast.Div else pow_(a, b))
        if isinstance(node, ast.Call) and not node.keywords:
            f = node.func
            if isinstance(f, ast.Name) and f.id in _SYMPY_NAMES:
                fn = getattr(sympy, f.id)
            elif (isinstance(f, ast.Attribute) and f.attr in _INTERVAL_KINDS and isinstance(f.value, ast.Name)
                  and f.value.id == "Interval"):
                fn = getattr(sympy.Interval, f.attr)
            else:
                raise ValueError("not a sympy function")
            if fn is sympy.Matrix:  # Matrix([[1, 2], [3, 4]]): its lists are rows, not sets
                if len(node.args) != 1 or not isinstance(node.args[0], ast.List):
                    raise ValueError("not a printed Matrix")
                return fn([[build(e) for e in row.elts] if isinstance(row, ast.List) else build(row)
                           for row in node.args[0].elts])
            return fn(*[build(a) for a in node.args])
        if isinstance(node, (ast.List, ast.Set)):
            items = [build(e) for e in node.elts]
            return items[0] if len(items) == 1 else sympy.FiniteSet(*items)
        if isinstance(node, ast.Tuple):
            return sympy.Tuple(*[build(e) for e in node.elts])
        raise ValueError(f"not sympy notation: {type(node).__name__}")

    try:
        return sympy.latex(build(tree.body))
    except Exception:  # not sympy notation after all (a call with bad arguments, a string constant, ...)
        return None


def parse_answer(text: str) -> str | None:
    """The paper's text answer: math-verify's parse of the whole text (its last \\boxed{} or number), as a string."""
    from math_verify import parse

    found = parse(text, parsing_timeout=_alarm_timeout())
    if not found:
        return None
    strings = [p for p in found if isinstance(p, str)]
    return strings[-1] if strings else str(found[0])


# ----------------------------------------------------------------------------------------------------------
# Killable workers


@dataclass
class VerifyConfig:
    """The math-verify worker pool. The paper ran math-verify in the trainer with its default 5 s alarms."""

    workers: int = 0  # worker processes; 0 = one per usable CPU core (at most 4). Started on first use.
    timeout_s: float = 5.0  # wall-clock seconds per check; past it the worker is killed and the check scores 0
    memory_mb: int = 2048  # address space a worker may add to its start size (RLIMIT_AS), against sympy blow-ups


class MathVerifyPool:
    """Worker processes running verify_answer / parse_answer with a hard per-check deadline.

    Implements Verifier. Thread-safe (callers take turns). Workers start on first use.
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

    # -- Verifier ------------------------------------------------------------------------------------------

    def verify_many(self, pairs: Sequence[tuple[str, str]], sympy_notation: bool = False) -> list[bool]:
        """verify_answer(answer, gold, sympy_notation) for each pair; False on timeout or error."""
        return [r is True for r in self._call_many("verify", [[a, g, sympy_notation] for a, g in pairs])]

    def extract_many(self, texts: Sequence[str]) -> list[str | None]:
        """parse_answer(text) for each text; None on timeout or error."""
        return [r if isinstance(r, str) else None for r in self._call_many("parse", [[t] for t in texts])]

    def verify(self, answer: str, gold: str) -> bool:
        """One verify_latex check; usable as formats.answers_equal(..., latex_verifier=pool.verify)."""
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
        [sys.executable, "-c", f"from echochamber.verify import _worker_main; _worker_main({cfg.memory_mb})"],
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
    ops = {"verify": verify_answer, "parse": parse_answer}
    verify_answer("\\frac{1}{2}", "0.5")  # load sympy and the LaTeX parser before the first deadline
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


