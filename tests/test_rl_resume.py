"""RL survives kill -9: rerunning the interrupted command resumes from the last checkpoint, and the final
weights, metrics and rollouts equal an uninterrupted run's, bit for bit (CPU, one thread). PPO is the algorithm
under test because its checkpoint holds the most: policy, optimizer, critic, critic optimizer, RNG states."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import without_run_conditions

PY = [sys.executable, "-m", "echochamber"]
RL_ARGS = ["rl.algo=ppo", "rl.steps=6", "rl.ckpt_every=2", "rl.eval_every=3", "rl.threads=1",
           "rl.keep_checkpoints=all", "eval.n_samples=0", "eval.n_problems=8"]


def run(args, **kw):
    proc = subprocess.run(PY + args, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]


def metric_rows(rl_dir):
    return without_run_conditions([json.loads(l) for l in (rl_dir / "metrics.jsonl").read_text().splitlines()])


@pytest.mark.slow
def test_rl_killed_with_sigkill_resumes_to_the_same_result(tmp_path, smoke_pretrained):
    base = smoke_pretrained
    init = f"rl.init={base / 'pretrain' / 'model'}"
    data = f"pretrain.data_dir={base / 'data'}"

    straight = tmp_path / "straight"
    run(["rl", "--config", "smoke", f"out_dir={straight}", init, data, *RL_ARGS])

    killed = tmp_path / "killed"
    cmd = PY + ["rl", "--config", "smoke", f"out_dir={killed}", init, data, *RL_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pointer = killed / "rl" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "rl" / "summary.json").exists()
    interrupted_at = json.loads(pointer.read_text())["step"]
    assert interrupted_at < 6

    run(cmd[len(PY):])  # the same command again: resumes

    a, b = straight / "rl", killed / "rl"
    assert (a / "final" / "model.safetensors").read_bytes() == (b / "final" / "model.safetensors").read_bytes()
    assert metric_rows(a) == metric_rows(b)
    assert [r["step"] for r in metric_rows(b)] == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        name = f"step_{step:06d}.jsonl"
        assert (a / "rollouts" / name).read_text() == (b / "rollouts" / name).read_text(), name
    for step in (0, 3, 6):
        ea, eb = (json.loads((d / "eval" / f"step_{step:06d}.json").read_text()) for d in (a, b))
        assert ea["datasets"] == eb["datasets"]
    # The critic was checkpointed and resumed with the policy: its state is in every checkpoint.
    import torch

    state = torch.load(b / "checkpoints" / "step_000006" / "trainer_state.pt", weights_only=False)
    assert "critic" in state["algo"] and "critic_opt" in state["algo"]


def test_log_spaced_checkpoints():
    from echochamber.rl.train import is_log_spaced

    assert [s for s in range(1, 100) if is_log_spaced(s, 4)] == [4, 8, 16, 32, 64]
