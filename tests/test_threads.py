"""A run's numbers do not depend on the thread count or on what else runs on the machine.

What holds today, guarded so that a later change to the kernels, the sampler or the thread policy (cpu.py) cannot
silently make a run depend on it: a short pretraining and a short RL run through the CLI give byte-identical
weights (and the same losses, rollouts and evaluations) at 1 thread, at 2 threads, and when a second echochamber
job starts in their middle, so that the automatic split (cpu.rebalance) takes a thread away mid-run. The runs are
subprocesses with a private jobs registry and no thread settings of the caller's (CI may set OMP_NUM_THREADS).

And the test fixture that trains a model to a precondition (conftest.memorise) reaches it at 1 and 2 threads: at
150 fixed steps it once did at 1 thread and not at 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from echochamber.cpu import cores

from conftest import memorise, without_run_conditions

SMOKE = ["--config", "smoke"]
PRETRAIN = ["pretrain.max_steps=80", "pretrain.log_every=5", "pretrain.eval_every=40", "pretrain.ckpt_every=40"]
RL = ["rl.steps=3", "eval.n_problems=8", "eval.n_samples=2"]
TIMEOUT = 600


def cli_env(jobs_dir: Path, threads: int | None) -> dict:
    """The environment of one CLI run: `threads` set by ECHOCHAMBER_THREADS, or None for the automatic split
    between the echochamber jobs registered in `jobs_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "ECHOCHAMBER_JOBS",
                                                            "ECHOCHAMBER_THREADS", "MKL_NUM_THREADS")}
    env["ECHOCHAMBER_JOBS_DIR"] = str(jobs_dir)
    if threads is not None:
        env["ECHOCHAMBER_THREADS"] = str(threads)
    return env


def start(stage: str, out: Path, env: dict, *overrides: str) -> subprocess.Popen:
    """A CLI run writing into `out`; its output goes to OUT/STAGE.log (a pipe nobody reads while the test waits
    for the run's metrics could fill up and stall the run)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stage}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "echochamber", stage, *SMOKE, f"out_dir={out}", *overrides],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def output(proc: subprocess.Popen) -> str:
    """The end of a run's output (start's OUT/STAGE.log)."""
    out = Path(next(a for a in proc.args if a.startswith("out_dir=")).split("=", 1)[1])
    return (out / f"{proc.args[3]}.log").read_text()[-3000:]


def finish(proc: subprocess.Popen) -> None:
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 0, output(proc)


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def with_second_job(first: subprocess.Popen, run: Path, after_step: int, second: list[str], env: dict) -> None:
    """Wait until `first` has logged step `after_step` in RUN/metrics.jsonl, start a second echochamber job (its
    CLI arguments), let `first` finish, then stop the second."""
    deadline = time.monotonic() + TIMEOUT
    while not any(r["step"] >= after_step for r in metrics(run)):
        assert first.poll() is None, output(first)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    other = subprocess.Popen([sys.executable, "-m", "echochamber", *second], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        finish(first)
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=60)


def assert_saw_both_thread_counts(records: list[dict]) -> None:
    """The run beside a second job really changed threads mid-run: every core before the second job started, half
    of them once it had (on 2 cores: 2, then 1)."""
    seen = [r["threads"] for r in records if "threads" in r]
    if cores() < 2:
        pytest.skip(f"{cores()} core: the automatic split has no thread to take away")
    assert seen[0] == cores() and cores() // 2 in seen[1:], seen


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("threads_data")
    finish(start("data", out, cli_env(out / "jobs", 1)))
    return out / "data"


def test_pretraining_is_the_same_at_1_and_2_threads_and_beside_a_second_job(smoke_data, tmp_path):
    jobs = tmp_path / "jobs"
    runs = {name: tmp_path / name for name in ("t1", "t2", "beside")}
    data = f"pretrain.data_dir={smoke_data}"
    for name, threads in (("t1", 1), ("t2", 2)):
        finish(start("pretrain", runs[name], cli_env(jobs, threads), data, *PRETRAIN))
    env = cli_env(jobs, None)
    with_second_job(start("pretrain", runs["beside"], env, data, *PRETRAIN), runs["beside"] / "pretrain", 20,
                    ["pretrain", *SMOKE, f"out_dir={tmp_path / 'other'}", data, "pretrain.max_steps=5000", "pretrain.compile=off"], env)
    runs = {name: run / "pretrain" for name, run in runs.items()}
    weights = {name: (run / "model" / "model.safetensors").read_bytes() for name, run in runs.items()}
    assert weights["t1"] == weights["t2"] == weights["beside"]
    assert without_run_conditions(metrics(runs["t1"])) == without_run_conditions(metrics(runs["t2"])) == without_run_conditions(metrics(runs["beside"]))
    assert len(metrics(runs["t1"])) == 16 and {r["threads"] for r in metrics(runs["t1"])} == {1}
    assert_saw_both_thread_counts(metrics(runs["beside"]))


# Studies that decode for long compile the decode step on a CPU too (rl.sample_compile, eval.sample_compile):
# inductor's kernels must not make a run depend on the thread count either.
@pytest.mark.parametrize("decode", [(), ("rl.sample_compile=on", "eval.sample_compile=on")], ids=["eager", "compiled"])
def test_rl_is_the_same_at_1_and_2_threads_and_beside_a_second_job(smoke_data, tmp_path, decode):
    jobs = tmp_path / "jobs"
    init = tmp_path / "init"
    finish(start("pretrain", init, cli_env(jobs, 2), f"pretrain.data_dir={smoke_data}", "pretrain.max_steps=60"))
    runs = {name: tmp_path / name for name in ("t1", "t2", "beside")}
    rl = [f"rl.init={init / 'pretrain' / 'model'}", *RL, *decode]
    for name, threads in (("t1", 1), ("t2", 2)):
        finish(start("rl", runs[name], cli_env(jobs, threads), *rl))
    env = cli_env(jobs, None)
    with_second_job(start("rl", runs["beside"], env, *rl), runs["beside"] / "rl", 1,
                    ["pretrain", *SMOKE, f"out_dir={tmp_path / 'other'}", f"pretrain.data_dir={smoke_data}",
                     "pretrain.max_steps=5000", "pretrain.compile=off"], env)
    rl_dirs = {name: run / "rl" for name, run in runs.items()}

    def outcome(d: Path):
        evals = {p.name: json.loads(p.read_text()).get("datasets") for p in sorted((d / "eval").glob("step_*.json"))}
        rollouts = {p.name: p.read_text() for p in sorted((d / "rollouts").glob("step_*.jsonl"))}
        return (d / "final" / "model.safetensors").read_bytes(), without_run_conditions(metrics(d)), evals, rollouts

    assert outcome(rl_dirs["t1"]) == outcome(rl_dirs["t2"]) == outcome(rl_dirs["beside"])
    assert ("decoding through torch.compile" in (runs["t1"] / "rl.log").read_text()) == bool(decode)
    assert len(metrics(rl_dirs["t1"])) == 3 and {r["threads"] for r in metrics(rl_dirs["t1"])} == {1}
    assert_saw_both_thread_counts(metrics(rl_dirs["beside"]))


@pytest.mark.parametrize("threads", [1, 2])
def test_memorise_reaches_its_precondition_at_1_and_2_threads(threads):
    from echochamber import formats
    from echochamber.tokenizer import train_tokenizer

    question = "What is six times seven?"
    doc = question + "\n\n" + formats.render_omi1(["a = 6 * 7", "a"], "42", "42", "So the answer is {answer}.")
    tok = train_tokenizer([doc] * 20, vocab_size=300)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = memorise([doc], [question], tok, max_seq_len=128)  # asserts greedy decoding reproduces the doc
    finally:
        torch.set_num_threads(before)
    assert not model.training
